"""Assign instead of zero-filling and accumulating: backward code adds into
zeroed gradient buffers; where the first statement to touch a zeroed buffer
writes every element of it (an elementwise `+=` over its whole extent, or a
gemm/gemv/dot with beta = 1), it may assign instead (beta = 0) and the
buffer needs no zero fill."""
from __future__ import annotations

from .. import ir
from ..types import contiguous_strides
from .analysis import analyse, referenced

# Kernels that write their whole output and honour `accumulate=False`.
_ASSIGNABLE = {"gemm", "gemv", "dot"}


def assign_first_writes(program) -> None:
    buffers = analyse(program.body)
    for block in list(ir.blocks(program.body)):
        stmts = block.stmts
        pending = {}  # root id -> Alloc still waiting for its first reference
        for stmt in stmts:
            if isinstance(stmt, ir.Alloc) and stmt.zero:
                pending[id(stmt.var)] = stmt
                continue
            if not pending:
                continue
            touched = referenced(stmt, buffers) & pending.keys()
            for rid in touched:
                alloc = pending.pop(rid)
                if _writes_all_first(stmt, alloc.var):
                    alloc.zero = False


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
