"""Assign instead of zero-filling and accumulating: backward code adds into
zeroed gradient buffers; where the first statement to touch a zeroed buffer
writes every element of it (an elementwise `+=` over its whole extent, in
any order, a gemm/gemv/dot with beta = 1, (log_)softmax's backward kernel,
conv2d's backward kernels, max pooling's scatter (both zero their output an
image or plane at a time, in cache, instead of a pass over all of it), a
batched gemm whose blocks cover the buffer once, or the unconditional flush of
a deferred weight gradient's log), it may assign instead
(beta = 0) and the buffer needs no zero fill.  It runs again after fusion,
when one loop's `+=`s into disjoint blocks of a buffer (each gate's gradient
into its columns of the gates' gradient) may cover it together."""
from __future__ import annotations

from .. import ir
from ..ops.linalg import bmm_covers_output
from ..types import covers_once, views_cover_once
from .analysis import analyse

# Kernels that write their whole output and honour `accumulate=False`.
_ASSIGNABLE = {"gemm", "gemv", "dot", "softmax_backward", "log_softmax_backward", "conv2d_backward",
               "pool_gather_backward"}


def assign_first_writes(program) -> None:
    buffers = analyse(program.body)
    for alloc, stmt in _first_references(program.body, buffers):
        if _writes_all_first(stmt, alloc.var, buffers):
            alloc.zero = False


def _first_references(body: ir.Block, buffers):
    """(zeroed Alloc, the first statement of its block after it that touches
    the buffer, itself or through an alias, in a nested block too) pairs, in
    one walk (an Alias itself touches no memory: a reshaped gradient is
    aliased when the forward runs, long before its first write): an unrolled
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
        elif not isinstance(stmt, ir.Alias):
            touched = {id(buffers.of(v)[0]) for v in stmt.reads() + stmt.writes()}
            for rid in touched:
                if rid in zeroed and rid not in found:
                    found[rid] = path[zeroed[rid][1]]
        for child in reversed(ir.children(stmt)):
            stack.append((iter(child.stmts), depth + 1))
    return [(zeroed[rid][0], stmt) for rid, stmt in found.items()]


def _writes_all_first(stmt, var, buffers) -> bool:
    def whole(v, offset=0):  # v is var, or an alias of all of it (a reshape)
        root, off = buffers.of(v)
        return root is var and off + offset == 0 and v.size == var.size

    if isinstance(stmt, ir.Prim):
        if not (stmt.accumulate and len(stmt.outs) == 1 and whole(stmt.outs[0])
                and all(buffers.of(v)[0] is not var for v in stmt.ins)):
            return False
        # A log's flush assigns only when it always runs (no `logs_flush` flag).
        if (stmt.kind in _ASSIGNABLE or stmt.kind == "batched_gemm" and bmm_covers_output(stmt.attrs, var.size)
                or stmt.kind == "outer_log_flush" and not stmt.ins):
            stmt.accumulate = False
            return True
        return False
    if not isinstance(stmt, ir.Map):
        return False
    mine = [a for a in stmt.assigns if isinstance(a, ir.Assign) and buffers.of(a.dst.var)[0] is var]
    loads = [v for a in stmt.assigns for v in ir.expr_loads(a.expr) if buffers.of(v.var)[0] is var]
    if not mine or loads or not all(a.accumulate for a in mine):
        return False
    if len(mine) == 1:
        if not whole(mine[0].dst.var, mine[0].dst.offset) or not covers_once(stmt.shape, mine[0].dst.strides, var.size):
            return False
    elif not views_cover_once(tuple(stmt.shape), [(buffers.of(a.dst.var)[1] + a.dst.offset, a.dst.strides)
                                                  for a in mine], var.size):
        return False
    for a in mine:
        a.accumulate = False
    return True

