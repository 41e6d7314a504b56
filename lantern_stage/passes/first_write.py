"""Assign instead of zero-filling and accumulating: backward code adds into
zeroed gradient buffers; where the first statement to touch a zeroed buffer
writes every element of it (an elementwise `+=` over its whole extent, or a
gemm/gemv/dot with beta = 1), it may assign instead (beta = 0) and the
buffer needs no zero fill."""
from __future__ import annotations

from .. import ir
from ..types import contiguous_strides
from .analysis import analyse

# Kernels that write their whole output and honour `accumulate=False`.
_ASSIGNABLE = {"gemm", "gemv", "dot"}


def assign_first_writes(program) -> None:
    buffers = analyse(program.body)
    for alloc, stmt in _first_references(program.body, buffers):
        if _writes_all_first(stmt, alloc.var):
            alloc.zero = False


def _first_references(body: ir.Block, buffers):
    """(zeroed Alloc, the first statement of its block after it that touches
    the buffer, itself or in a nested block) pairs, in one walk: an unrolled
    loop nests each step's scope in the previous one, so asking every
    statement for everything nested in it would be quadratic."""
    zeroed = {}   # root id -> (Alloc, depth of its block)
    found = {}    # root id -> top-level statement of the Alloc's block
    path = []     # path[d]: the statement being visited at nesting depth d
    stack = [(iter(body.stmts), 0)]
    while stack:
        it, depth = stack[-1]
        stmt = next(it, None)
        if stmt is None:
            stack.pop()
            continue
        del path[depth:]
        path.append(stmt)
        if isinstance(stmt, ir.Alloc):
            if stmt.zero:
                zeroed[id(stmt.var)] = (stmt, depth)
        else:
            touched = {id(buffers.of(v)[0]) for v in stmt.reads() + stmt.writes()}
            if isinstance(stmt, ir.Alias):
                touched.add(id(buffers.of(stmt.base)[0]))
            for rid in touched:
                if rid in zeroed and rid not in found:
                    found[rid] = path[zeroed[rid][1]]
        for child in reversed(ir.children(stmt)):
            stack.append((iter(child.stmts), depth + 1))
    return [(zeroed[rid][0], stmt) for rid, stmt in found.items()]


def _writes_all_first(stmt, var) -> bool:
    if isinstance(stmt, ir.Prim):
        if stmt.kind in _ASSIGNABLE and stmt.accumulate and stmt.outs == [var] and var not in stmt.ins:
            stmt.accumulate = False
            return True
        return False
    if not isinstance(stmt, ir.Map) or stmt.shape != var.shape:
        return False
    full = contiguous_strides(var.shape)
    mine = [a for a in stmt.assigns if isinstance(a, ir.Assign) and a.dst.var is var]
    loads = [v for a in stmt.assigns for v in ir.expr_loads(a.expr) if v.var is var]
    if len(mine) != 1 or loads or mine[0].dst.offset != 0 or not mine[0].accumulate:
        return False
    if any(s != f for s, f, n in zip(mine[0].dst.strides, full, var.shape) if n != 1):
        return False
    mine[0].accumulate = False
    return True
