"""Max pooling's values without a second pass.

`max_pool2d` is staged as `pool_gather(x, pool_argmax(x))` so that neither
op needs a saved buffer for its backward.  The argmax kernel finds each
window's maximum anyway and writes it into a scratch buffer; a gather of the
same x by those indices later in the same block reads exactly those values
again (index by index, a scalar pass).  It becomes a view of the scratch
buffer, unless something in between writes x, the indices or the scratch."""
from __future__ import annotations

from .. import ir
from .analysis import written_within


def reuse_pooled_values(program) -> None:
    for block in ir.blocks(program.body):
        pooled = {}  # (id x, id at) -> (x, at, scratch) with scratch = x[at]
        allocs = {}  # id var -> index of its Alloc in this block
        dropped = set()
        for k, stmt in enumerate(block.stmts):
            if isinstance(stmt, ir.Alloc):
                allocs[id(stmt.var)] = k
            if isinstance(stmt, ir.Prim) and stmt.kind == "pool_gather" and not stmt.accumulate:
                found = pooled.get((id(stmt.ins[0]), id(stmt.ins[1])))
                if found is not None and id(stmt.outs[0]) in allocs:
                    alias = ir.Alias(stmt.outs[0], found[2], 0)
                    alias.loc = stmt.loc
                    block.stmts[k] = alias
                    dropped.add(allocs[id(stmt.outs[0])])  # the view replaces its buffer
                    continue
            written = written_within(stmt)
            pooled = {key: f for key, f in pooled.items() if not written & {id(v) for v in f}}
            if isinstance(stmt, ir.Prim) and stmt.kind == "pool_argmax" and not stmt.accumulate:
                x, (at, scratch) = stmt.ins[0], stmt.outs
                pooled[(id(x), id(at))] = (x, at, scratch)
        if dropped:
            block.stmts = [s for k, s in enumerate(block.stmts) if k not in dropped]
