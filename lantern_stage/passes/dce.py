"""Dead-code removal: statements whose only effect is on owned buffers that
nothing reads afterwards.  Writes into external buffers (inputs, captured
arrays, continuation and function parameters) and kernel calls with no
outputs (storing results) are effects and stay."""
from __future__ import annotations

from .. import ir
from .analysis import analyse, read_counts


def remove_dead_code(program) -> None:
    while _sweep(program.body):
        pass


def _sweep(body: ir.Block) -> bool:
    buffers = analyse(body)
    reads = read_counts(body, buffers)

    def dead(var: ir.Var) -> bool:
        root = buffers.of(var)[0]
        return buffers.is_owned(var) and reads.get(id(root), 0) == 0

    changed = False
    for block in list(ir.blocks(body)):
        kept = []
        for stmt in block.stmts:
            if isinstance(stmt, ir.Map):
                live = [a for a in stmt.assigns if isinstance(a, ir.Let) or not dead(a.dst.var)]
                if len(live) != len(stmt.assigns):
                    changed = True
                    stmt.assigns = live
                if not any(isinstance(a, ir.Assign) for a in stmt.assigns):
                    changed = True
                    continue
            elif isinstance(stmt, ir.Prim):
                if stmt.outs and all(dead(v) for v in stmt.outs):
                    changed = True
                    continue
            elif isinstance(stmt, ir.ScalarDef):
                if reads.get(id(stmt.var), 0) == 0:
                    changed = True
                    continue
            kept.append(stmt)
        block.stmts = kept

    # Allocations and views nothing mentions any more (a view's base counts
    # as mentioned while the view is alive; the next sweep sees the rest).
    mentioned = set()
    for _, stmt in ir.walk(body):
        if isinstance(stmt, ir.Alias):
            mentioned.add(id(stmt.base))
        elif not isinstance(stmt, ir.Alloc):
            mentioned.update(id(v) for v in stmt.reads() + stmt.writes())
    for block in list(ir.blocks(body)):
        kept = [s for s in block.stmts
                if not (isinstance(s, (ir.Alloc, ir.Alias)) and id(s.var) not in mentioned)]
        changed |= len(kept) != len(block.stmts)
        block.stmts = kept
    return changed
