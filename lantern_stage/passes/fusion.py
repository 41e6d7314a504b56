"""Elementwise fusion: consecutive `Map`s over the same index space become
one loop, forward and backward alike; a value one of them computes and a
later one reads is kept in a register (`Let`), and its buffer disappears when
nothing else reads it.

Two maps may share a loop when, per element, running them together equals
running one after the other: every buffer one writes and the other touches
is touched through the very same view (same elements in the same order),
and no such write is a reduction (a zero stride: many indices, one element).
Allocations between the maps do not get in the way.
"""
from __future__ import annotations

from .. import ir
from .analysis import analyse, read_counts


def fuse_elementwise(program) -> None:
    buffers = analyse(program.body)
    for block in list(ir.blocks(program.body)):
        block.stmts = _fuse_block(block.stmts, buffers)
    _promote(program, buffers)


def _fuse_block(stmts, buffers):
    out = []
    group = None  # index in `out` of the Map being grown
    group_accesses = []
    for stmt in stmts:
        if isinstance(stmt, ir.Map):
            accesses = _accesses(stmt, buffers)
            if group is not None and _compatible(out[group], stmt, group_accesses, accesses):
                # Move the grown map down to here, after the allocations between.
                grown = out.pop(group)
                grown.assigns.extend(stmt.assigns)
                out.append(grown)
                group = len(out) - 1
                group_accesses = group_accesses + accesses
                continue
            out.append(stmt)
            group = len(out) - 1
            group_accesses = accesses
        else:
            out.append(stmt)
            if not isinstance(stmt, (ir.Alloc, ir.Alias, ir.Comment)):
                group = None
    return out


def _accesses(m: ir.Map, buffers):
    """(root id, view key, is_write, is_reduction) of every access."""
    out = []
    for a in m.assigns:
        if isinstance(a, ir.Assign):
            reduction = any(s == 0 and n != 1 for s, n in zip(a.dst.strides, m.shape))
            out.append((buffers.key(a.dst)[0], buffers.key(a.dst), True, reduction))
        for v in ir.expr_loads(a.expr):
            if v.var.storage == "buf":
                out.append((buffers.key(v)[0], buffers.key(v), False, False))
    return out


def _compatible(a: ir.Map, b: ir.Map, acc_a, acc_b) -> bool:
    if a.shape != b.shape:
        return False
    for x, y in ((acc_a, acc_b), (acc_b, acc_a)):
        writes = [w for w in x if w[2]]
        for root, key, _, reduction in writes:
            for other in y:
                if other[0] != root:
                    continue
                if other[1] != key:
                    return False
                if reduction and not (other[2] and other[3]):
                    return False  # reading a sum still being accumulated
    return True


def _promote(program, buffers) -> None:
    """Within each fused loop, later reads of an element just assigned use the
    register; then stores no other statement reads are dropped."""
    counter = [0]
    for _, stmt in list(ir.walk(program.body)):
        if not isinstance(stmt, ir.Map) or len(stmt.assigns) < 2:
            continue
        known = {}  # view key -> local name
        new = []
        for a in stmt.assigns:
            expr = _substitute(a.expr, known, buffers)
            if isinstance(a, ir.Let):
                new.append(ir.Let(a.name, expr))
                continue
            key = buffers.key(a.dst)
            for k in [k for k in known if k[0] == key[0]]:
                del known[k]
            if a.accumulate:
                new.append(ir.Assign(a.dst, True, expr))
                continue
            counter[0] += 1
            name = f"v{counter[0]}"
            new.append(ir.Let(name, expr))
            new.append(ir.Assign(a.dst, False, ("local", name)))
            known[key] = name
        stmt.assigns = _drop_single_use_lets(new)

    # Stores into owned buffers that no other statement reads are dead now.
    reads = read_counts(program.body, buffers)
    for _, stmt in ir.walk(program.body):
        if isinstance(stmt, ir.Map):
            stmt.assigns = [
                a for a in stmt.assigns
                if isinstance(a, ir.Let) or not buffers.is_owned(a.dst.var)
                or reads.get(buffers.key(a.dst)[0], 0) > 0 or a.accumulate
            ]


def _substitute(expr, known, buffers):
    if expr[0] == "load":
        v = expr[1]
        if v.var.storage == "buf":
            name = known.get(buffers.key(v))
            if name is not None:
                return ("local", name)
        return expr
    if expr[0] == "fmt":
        return ("fmt", expr[1], [_substitute(e, known, buffers) for e in expr[2]])
    return expr


def _drop_single_use_lets(assigns):
    """A Let read only by the store right after it is just that store."""
    uses = {}
    for a in assigns:
        for name in _locals(a.expr):
            uses[name] = uses.get(name, 0) + 1
    out = []
    for a in assigns:
        if (out and isinstance(out[-1], ir.Let) and isinstance(a, ir.Assign)
                and a.expr == ("local", out[-1].name) and uses.get(out[-1].name) == 1):
            let = out.pop()
            out.append(ir.Assign(a.dst, a.accumulate, let.expr))
            continue
        out.append(a)
    return out


def _locals(expr):
    if expr[0] == "local":
        yield expr[1]
    elif expr[0] == "fmt":
        for e in expr[2]:
            yield from _locals(e)
