"""Eta-reduction of continuations: a `Lam` whose whole body is a jump to
another continuation with its own parameters, in order, is that
continuation.  This turns the continuation of a recursive call in tail
position - every staged loop iteration - into the caller's own `k`."""
from __future__ import annotations

from .. import ir


def eta_reduce(program) -> None:
    target = {}
    for _, stmt in ir.walk(program.body):
        if isinstance(stmt, ir.LamDef):
            body = stmt.lam.body.stmts
            if (len(body) == 1 and isinstance(body[0], ir.Jump)
                    and len(body[0].args) == len(stmt.lam.params)
                    and all(a is p for a, p in zip(body[0].args, stmt.lam.params))):
                target[id(stmt.lam)] = body[0].k
    if not target:
        return

    def resolve(k):
        while id(k) in target:
            k = target[id(k)]
        return k

    for block, stmt in list(ir.walk(program.body)):
        if isinstance(stmt, (ir.Jump, ir.Call)):
            stmt.k = resolve(stmt.k)
    for block in list(ir.blocks(program.body)):
        block.stmts = [s for s in block.stmts if not (isinstance(s, ir.LamDef) and id(s.lam) in target)]
