"""Max pooling's values without a second pass.

`max_pool2d` is staged as `pool_gather(x, pool_argmax(x))` so that neither
op needs a saved buffer for its backward.  The argmax kernel finds each
window's maximum anyway and writes it into a scratch buffer; a gather of the
same x by those indices later in the same block reads exactly those values
again (index by index, a scalar pass).  It becomes a view of the scratch
buffer, unless something in between writes x, the indices or the scratch
(through any view of them, or by a call, which may write anything), or
names the gather's output before it."""
from __future__ import annotations

from .. import ir
from .analysis import analyse, referenced


def _writes_or_calls(stmt: ir.Stmt, buffers) -> set | None:
    """Root ids `stmt` (with what it nests) writes; None when it calls a
    function or continuation (which may write anything)."""
    out = set()
    stack = [stmt]
    while stack:
        s = stack.pop()
        if isinstance(s, (ir.Call, ir.Jump)):
            return None
        out.update(id(buffers.of(v)[0]) for v in s.writes())
        for child in ir.children(s):
            stack.extend(child.stmts)
    return out


def reuse_pooled_values(program) -> None:
    buffers = analyse(program.body)
    for block in ir.blocks(program.body):
        pooled = {}  # (id x, id at) -> (x, at, scratch) with scratch = x[at]
        allocs = {}  # id var -> index of its Alloc in this block
        dropped = set()
        for k, stmt in enumerate(block.stmts):
            if isinstance(stmt, ir.Alloc):
                allocs[id(stmt.var)] = k
            if isinstance(stmt, ir.Prim) and stmt.kind == "pool_gather" and not stmt.accumulate:
                found = pooled.get((id(stmt.ins[0]), id(stmt.ins[1])))
                where = allocs.get(id(stmt.outs[0]))
                if found is not None and where is not None and not any(
                        id(stmt.outs[0]) in referenced(s, buffers) for s in block.stmts[where + 1:k]):
                    alias = ir.Alias(stmt.outs[0], found[2], 0)
                    alias.loc = stmt.loc
                    block.stmts[k] = alias
                    dropped.add(where)  # the view replaces its buffer
                    continue
            if pooled:  # (only then: walking what each statement nests is not free)
                written = _writes_or_calls(stmt, buffers)
                pooled = {} if written is None else {
                    key: f for key, f in pooled.items() if not written & {id(buffers.of(v)[0]) for v in f}}
            if isinstance(stmt, ir.Prim) and stmt.kind == "pool_argmax" and not stmt.accumulate:
                x, (at, scratch) = stmt.ins[0], stmt.outs
                pooled[(id(x), id(at))] = (x, at, scratch)
        if dropped:
            block.stmts = [s for k, s in enumerate(block.stmts) if k not in dropped]
