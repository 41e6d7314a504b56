"""Fold accumulations into the kernel that produced them.

Backward rules are staged ops: a cotangent is computed into a fresh buffer
`t` and then added into the input's gradient, `t = gemm(...); d += t`.
Where `t` is read by nothing but that addition, the kernel adds into `d`
itself instead - gemm / gemv / dot with beta = 1, and the kernels that only
ever accumulate (ger, the backward kernels of conv2d, softmax, nll, gathers)
straight into `d` rather than into a zeroed `t`.  That is exactly the
backward code of hand-written `+=` rules, with no extra buffer or pass.
(Elementwise chains need no folding: fusion makes `t = g * b; d += t` one
loop with `t` in a register.)
"""
from __future__ import annotations

from .. import ir
from ..types import contiguous_strides
from .analysis import analyse, read_counts, referenced

# Kernels honouring `accumulate` (beta = 0 or 1).
_ASSIGN_OR_ADD = {"gemm", "gemv", "dot", "batched_gemm"}
# Kernels that only add into their output (staged into a zeroed buffer).
_ADD_ONLY = {"ger", "take_row_backward", "nll_backward", "softmax_backward", "log_softmax_backward",
             "pool_gather_backward", "avg_pool2d_backward", "scatter_add_rows", "conv2d_backward"}


def fold_accumulations(program) -> None:
    buffers = analyse(program.body)
    reads = read_counts(program.body, buffers)
    for block in list(ir.blocks(program.body)):
        _fold_block(block, buffers, reads)


def _plain_add(stmt, buffers):
    """(dst view, source root var) when stmt is `dst[i] += src[i]` over
    contiguous, equally sized buffers."""
    if not isinstance(stmt, ir.Map) or len(stmt.assigns) != 1:
        return None
    a = stmt.assigns[0]
    expr = a.expr if isinstance(a, ir.Assign) else None
    while expr is not None and expr[0] == "fmt" and expr[1] == "{0}" and len(expr[2]) == 1:
        expr = expr[2][0]
    if expr is None or not a.accumulate or expr[0] != "load":
        return None
    src = expr[1]
    if src.var.storage != "buf" or a.dst.var.storage != "buf":
        return None
    n = 1
    for d in stmt.shape:
        n *= d
    for view in (src, a.dst):
        if view.var.size != n or view.offset != 0 or len(view.strides) != len(stmt.shape):
            return None
        if view.strides != contiguous_strides(tuple(stmt.shape)) and n > 1:
            return None
    root, off = buffers.of(src.var)
    if off != 0 or root.size != n:
        return None
    return a.dst, root


def _fold_block(block, buffers, reads) -> None:
    stmts = block.stmts
    i = 0
    while i < len(stmts):
        found = _plain_add(stmts[i], buffers)
        if found is None:
            i += 1
            continue
        dst, t = found
        d_root = id(buffers.of(dst.var)[0])
        if not buffers.is_owned(t) or reads.get(id(t), 0) != 1 or d_root == id(t):
            i += 1
            continue
        producer = None
        for j in range(i - 1, -1, -1):
            s = stmts[j]
            if isinstance(s, (ir.Comment, ir.Alias)):  # views write nothing
                continue
            touched = referenced(s, buffers)
            if isinstance(s, ir.Prim) and len(s.outs) == 1 and buffers.of(s.outs[0])[0] is t:
                if s.outs[0] is t and d_root not in {id(buffers.of(v)[0]) for v in s.ins} \
                        and _first_write(stmts, j, t, s, buffers):
                    producer = s
                break
            if id(t) in touched or d_root in touched:
                break
        if producer is not None:
            producer.outs = [dst.var]
            producer.accumulate = True
            del stmts[i]
            continue
        i += 1


def _first_write(stmts, j, t, prim, buffers) -> bool:
    """The producer may take over: it assigns all of t, or it adds into a
    t that is freshly zeroed right before it."""
    if prim.kind in _ASSIGN_OR_ADD and not prim.accumulate:
        return True
    if prim.kind not in _ADD_ONLY and prim.kind not in _ASSIGN_OR_ADD:
        return False
    for k in range(j - 1, -1, -1):
        s = stmts[k]
        if isinstance(s, ir.Alloc) and s.var is t:
            return s.zero
        if id(t) in referenced(s, buffers):
            return False
    return False
