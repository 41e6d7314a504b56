"""Transposed copies of weights read as x W^T.

`linear(x, W)` is the product x W^T, a gemm with a transposed right operand
(`tb`).  For the few-row products of recurrent steps OpenBLAS runs that form
well below the untransposed one (SkylakeX kernels, one core: 20 x 200 x 50
at 77 GFLOP/s with W^T against 166 GFLOP/s with a [K, N] operand; 20 x 200 x
26 at 71 against 173).  A weight is constant within a step, so one
transposed copy Wt = W^T made before its first use serves every product of
the step: those gemms read Wt without the flag.

Applies to a captured array (a parameter) read as the transposed right
operand of gemms whose rows add up to at least `MIN_ROWS`, i.e. when the
copy (N K elements once) is small beside the products it speeds up (M N K
multiply-adds each).  The copy is placed in the entry body just before the
top-level statement holding the first use, and only if nothing from there to
the statement holding the last use writes the weight (the optimizer's
update comes after the differentiation scope).  Uses inside staged functions
and continuations, which may run at other times, are left alone."""
from __future__ import annotations

from .. import ir
from ..types import TensorType
from .analysis import written_within

MIN_ROWS = 16


def _uses(stmt: ir.Stmt, targets: dict, found: dict) -> None:
    """Collect gemms reading a target as B^T in stmt, descending through
    scopes, loops and branches (not through function or continuation bodies)."""
    stack = [stmt]
    while stack:
        s = stack.pop()
        if isinstance(s, ir.Prim) and s.kind == "gemm" and s.attrs.get("tb") and id(s.ins[1]) in targets:
            found.setdefault(id(s.ins[1]), []).append(s)
        if isinstance(s, (ir.Nested, ir.Loop, ir.If)):
            for child in ir.children(s):
                stack.extend(child.stmts)


def transpose_weights(program) -> None:
    targets = {id(v): v for _, v in program.captures
               if isinstance(v.type, TensorType) and v.dtype == "float32" and len(v.shape) == 2}
    top = program.body.stmts
    where: dict = {}  # target id -> (first, last) top-level index holding a use
    uses: dict = {}
    for k, stmt in enumerate(top):
        found: dict = {}
        _uses(stmt, targets, found)
        for tid, prims in found.items():
            first, _ = where.get(tid, (k, k))
            where[tid] = (first, k)
            uses.setdefault(tid, []).extend(prims)
    inserts: dict = {}  # top-level index -> statements to put before it
    for tid, prims in uses.items():
        if sum(p.attrs["M"] for p in prims) < MIN_ROWS:
            continue
        first, last = where[tid]
        if any(tid in written_within(top[k]) for k in range(first, last + 1)):
            continue
        w = targets[tid]
        n, k = w.shape
        wt = ir.Var(f"{w.name}_t", TensorType((k, n), "float32"))
        copy = ir.Map((k, n), [ir.Assign(ir.View(wt, 0, (n, 1)), False, ("load", ir.View(w, 0, (1, k))))])
        inserts.setdefault(first, []).extend([ir.Alloc(wt, zero=False), copy])
        for p in prims:
            p.ins[1] = wt
            p.attrs = {**p.attrs, "tb": False}
    if inserts:
        program.body.stmts = [s for k, stmt in enumerate(top) for s in inserts.get(k, []) + [stmt]]
