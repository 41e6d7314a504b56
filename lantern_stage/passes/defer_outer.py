"""Deferred weight gradients: a weight used at many nodes of a tree gets one
rank-1 update (`ger`) per use, each streaming the whole gradient matrix
through memory.  Instead,
each use appends its rows to a log (`lt::OuterLog`), and one `gemm` adds
them all when the differentiation scope ends: dW += A^T B over every logged
row - the same sum, compute-bound instead of memory-bound.

Applies to a gradient of a differentiated argument (nothing inside the scope
reads it) that receives more than one such update, or one inside a staged
function or continuation (run many times), or any in a scope whose logs are
kept over calls (below).

A log belongs to its entry and gradient, not to one scope: every scope of the
entry adding rows for the same gradient appends to the same log (declared at
namespace scope in the module), so the level-batched TreeLSTM's chunk sizes,
each a scope of its own, add their rows for U in one product per update
instead of one per size.  Flushing empties a log; `logs_fresh` drops rows left
by a call that did not finish.

An accumulating train step (lt.train_step(accumulate=K)) sets the scope's
`logs_fresh` / `logs_flush`: the logs keep their rows over the K calls and
the K-th call flushes them, so the K calls' weight gradients are one gemm
over all their rows (the minibatched TreeLSTM: ~450 rows instead of ~18)."""
from __future__ import annotations

from .. import ir


def _outer_rows(p: ir.Prim, across_calls: bool):
    """(a, b, rows) when the prim is a rank-1 update dW += a b^T, or - in a
    scope whose logs are kept over calls - K of them at once (dW += A^T B).

    Within one call, batched products (`gemm` with a transposed left operand)
    are left alone: measured on the char-RNN/LSTM (K = 20 per step), logging
    their rows and adding them in one K = 400 product was slower (0.40 -> 0.53
    and 1.47 -> 1.62 ms per step) - each small product already runs from cache.
    Over calls they are logged: the level-batched TreeLSTM's chunks (K = 1 to
    64 rows each, ~50 per minibatch) each streamed the 750 x 300 gradient
    through a product of a third of the flops' time (benchmarks/NOTES.md,
    "Session 4")."""
    if not p.accumulate:
        return None
    if p.kind == "ger":
        return p.ins[0], p.ins[1], 1
    if across_calls and p.kind == "gemm" and p.attrs["ta"] and not p.attrs["tb"]:
        return p.ins[0], p.ins[1], p.attrs["K"]
    return None


def defer_outer_products(program) -> None:
    for block in list(ir.blocks(program.body)):
        out = []
        for stmt in block.stmts:
            out.append(stmt)
            if isinstance(stmt, ir.Nested) and stmt.accumulators:
                out[-1:] = _defer(program, stmt)
        block.stmts = out


def _defer(program, scope: ir.Nested) -> list:
    targets = {id(v): v for v in scope.accumulators if len(v.shape) == 2}
    across_calls = scope.logs_fresh is not None
    uses: dict = {}  # target id -> list of (block, prim, repeated)
    stack = [(scope.body, False)]
    while stack:
        block, repeated = stack.pop()
        for stmt in block.stmts:
            if isinstance(stmt, ir.Prim) and stmt.outs and id(stmt.outs[0]) in targets and _outer_rows(stmt, across_calls):
                uses.setdefault(id(stmt.outs[0]), []).append((block, stmt, repeated))
            for child in ir.children(stmt):
                stack.append((child, repeated or isinstance(stmt, (ir.FunDef, ir.LamDef, ir.Loop))))
    before, after = [], []
    for tid, found in uses.items():
        if len(found) < 2 and not any(rep for _, _, rep in found) and not across_calls:
            continue
        dw = targets[tid]
        log = f"log_{program.c_name}_{dw.name}"
        m, n = dw.shape
        fresh = [scope.logs_fresh] if scope.logs_fresh is not None else []
        before.append(ir.Prim("outer_log_start", [], fresh, {"log": log, "M": m, "N": n}))
        for block, prim, _ in found:
            a, b, rows = _outer_rows(prim, across_calls)
            block.stmts[block.stmts.index(prim)] = ir.Prim(
                "outer_log_append", [], [a, b], {"log": log, "rows": rows})
        now = [scope.logs_flush] if scope.logs_flush is not None else []
        after.append(ir.Prim("outer_log_flush", [dw], now, {"log": log}, accumulate=True))
    return before + [scope] + after
