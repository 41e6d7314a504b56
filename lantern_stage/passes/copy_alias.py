"""Whole-buffer copies become views.

The backward rule of `a + b` hands both operands the cotangent itself, so
after first-write assignment the gradients of the two operands are whole
copies, `d_a = g; d_b = g`, each read afterwards (by a gemm, say).  Where
`d = g` is a Map copying every element of g into a fresh buffer d, d gets no
other write, and nothing after the copy in d's block writes g (nor calls a
function or continuation, which could), d can be g itself: the copy becomes
an `Alias` (a pointer, no loop, no buffer), declared where the copy was
(so nothing between d's allocation and the copy may name d).  g must be
allocated by the program (an input or captured array can change behind it)."""
from __future__ import annotations

from math import prod

from .. import ir
from ..types import contiguous_strides
from .analysis import analyse, referenced


def _whole_copy(stmt):
    """(d, g) when stmt is the Map `d[i] = g[i]` over all of d and g."""
    if not isinstance(stmt, ir.Map) or len(stmt.assigns) != 1 or not isinstance(stmt.assigns[0], ir.Assign):
        return None
    a = stmt.assigns[0]
    expr = a.expr
    while expr[0] == "fmt" and expr[1] == "{0}" and len(expr[2]) == 1:
        expr = expr[2][0]
    if a.accumulate or expr[0] != "load":
        return None
    dst, src = a.dst, expr[1]
    whole = contiguous_strides(tuple(stmt.shape))
    n = prod(stmt.shape)
    for view in (dst, src):
        if view.offset != 0 or tuple(view.strides) != whole or view.var.size != n or view.var.storage != "buf":
            return None
    if dst.var is src.var or dst.var.dtype != src.var.dtype:
        return None
    return dst.var, src.var


def _writes_or_calls(stmts, root_id, buffers) -> bool:
    stack = list(stmts)
    while stack:
        s = stack.pop()
        if isinstance(s, (ir.Call, ir.Jump)):
            return True
        if any(id(buffers.of(v)[0]) == root_id for v in s.writes()):
            return True
        for child in ir.children(s):
            stack.extend(child.stmts)
    return False


def alias_copies(program) -> None:
    buffers = analyse(program.body)
    writers: dict = {}  # root id -> statements writing it (an Alloc is not a write)
    based: set = set()  # root ids some Alias views
    for _, stmt in ir.walk(program.body):
        if isinstance(stmt, ir.Alloc):
            continue
        for rid in {id(buffers.of(v)[0]) for v in stmt.writes()}:
            writers[rid] = writers.get(rid, 0) + 1
        if isinstance(stmt, ir.Alias):
            based.add(id(buffers.of(stmt.base)[0]))
    for block in list(ir.blocks(program.body)):
        allocs: dict = {}  # id var -> index of its Alloc in this block
        dropped = set()
        for k, stmt in enumerate(block.stmts):
            if isinstance(stmt, ir.Alloc):
                allocs[id(stmt.var)] = k
                continue
            copy = _whole_copy(stmt)
            if copy is None:
                continue
            d, g = copy
            at = allocs.get(id(d))
            if at is None or block.stmts[at].zero or writers.get(id(d)) != 1 or id(d) in based:
                continue
            if any(id(d) in referenced(s, buffers) for s in block.stmts[at + 1:k]):
                continue  # d is named before the copy (a continuation defined in between): keep its buffer
            g_root = buffers.of(g)[0]
            if not buffers.is_owned(g) or _writes_or_calls(block.stmts[k + 1:], id(g_root), buffers):
                continue
            alias = ir.Alias(d, g, 0)
            alias.loc = stmt.loc
            block.stmts[k] = alias
            dropped.add(at)
            base, off = buffers.of(g)
            buffers.root[id(d)] = (base, off)
            based.add(id(g_root))
        if dropped:
            block.stmts = [s for k, s in enumerate(block.stmts) if k not in dropped]
