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

from bisect import bisect_left
from math import prod

from .. import ir
from ..types import contiguous_strides
from .analysis import analyse


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


class _Order:
    """Statements numbered depth first in program order, so that a run of a
    block's statements together with everything nested in them is one range
    of numbers; which statements write, name or call is kept per buffer as
    sorted numbers.  "Does anything in stmts[i:j] write g" is then a
    bisection, not a walk of the rest of the program (which, in CPS, nests
    inside each statement: walking it per copy was quadratic in the length
    of an unrolled loop)."""

    def __init__(self, body: ir.Block, buffers):
        order = [stmt for _, stmt in ir.walk(body)]
        self.pos = {id(stmt): k for k, stmt in enumerate(order)}
        self.size = {}
        for stmt in reversed(order):  # descendants come after their statement
            self.size[id(stmt)] = 1 + sum(self.size[id(c)] for b in ir.children(stmt) for c in b.stmts)
        self.writes, self.names, self.calls = {}, {}, []
        for k, stmt in enumerate(order):
            if isinstance(stmt, (ir.Call, ir.Jump)):
                self.calls.append(k)
            for v in stmt.writes():
                self.writes.setdefault(id(buffers.of(v)[0]), []).append(k)
            named = {id(buffers.of(v)[0]) for v in stmt.reads() + stmt.writes()}
            if isinstance(stmt, ir.Alias):
                named.add(id(buffers.of(stmt.base)[0]))
            if isinstance(stmt, ir.Alloc):
                named.add(id(stmt.var))
            for rid in named:
                self.names.setdefault(rid, []).append(k)

    def replaced(self, old, new) -> None:
        self.pos[id(new)], self.size[id(new)] = self.pos[id(old)], 1

    def span(self, stmts) -> tuple[int, int]:
        """The numbers of `stmts` (consecutive in a block) and all they nest."""
        if not stmts:
            return 0, 0
        return self.pos[id(stmts[0])], self.pos[id(stmts[-1])] + self.size[id(stmts[-1])]

    @staticmethod
    def hit(numbers, span) -> bool:
        k = bisect_left(numbers, span[0])
        return k < len(numbers) and numbers[k] < span[1]


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
    order = _Order(program.body, buffers)
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
            if order.hit(order.names.get(id(d), []), order.span(block.stmts[at + 1:k])):
                continue  # d is named before the copy (a continuation defined in between): keep its buffer
            g_root = buffers.of(g)[0]
            after = order.span(block.stmts[k + 1:])
            if not buffers.is_owned(g) or order.hit(order.calls, after) or order.hit(order.writes.get(id(g_root), []), after):
                continue
            alias = ir.Alias(d, g, 0)
            alias.loc = stmt.loc
            block.stmts[k] = alias
            order.replaced(stmt, alias)
            dropped.add(at)
            base, off = buffers.of(g)
            buffers.root[id(d)] = (base, off)
            based.add(id(g_root))
        if dropped:
            block.stmts = [s for k, s in enumerate(block.stmts) if k not in dropped]
