"""Elementwise fusion: `Map`s over the same index space become
one loop, forward and backward alike; a value one of them computes and a
later one reads is kept in a register (`Let`), and its buffer disappears when
nothing else reads it.

Two maps may share a loop when, per element, running them together equals
running one after the other: every buffer one writes and the other touches
is touched through the very same view (same elements in the same order),
and no such write is a reduction (a zero stride: many indices, one element)
- or the two views share no element at all (the backward of `split` adds
each gate's gradient into its own column block of one buffer).  The maps
need not be adjacent: a map moves down to a later one past allocations, past
kernel calls (`Prim`) that touch nothing it writes and write nothing it
reads (an LSTM's two bias additions around its input product become one
loop, and so do its two bias-gradient sums), and past maps of other shapes
with which it shares no written buffer (an optimiser's scaling of each
gradient, its update and the gradient's reset, staged parameter after
parameter, become one loop per parameter).
"""
from __future__ import annotations

from .. import ir
from ..types import contiguous_strides, views_disjoint
from .analysis import analyse, read_counts


def inline_temporaries(program) -> None:
    """`t = e; d += f(t)` -> `d += f(e)` where `t` is a temporary read by
    nothing else and the two maps are adjacent over one index space.

    Derivative rules are staged ops, so `dx += g * (1 - y*y)` is staged as a
    chain of maps through single-use temporaries; substituting each into the
    next gives back the one-statement form (then fusion groups statements
    exactly as it did for hand-written rules) and no buffer is left behind
    when a later statement cannot share the loop."""
    buffers = analyse(program.body)
    reads = read_counts(program.body, buffers)
    for block in list(ir.blocks(program.body)):
        out = []
        for stmt in block.stmts:
            if isinstance(stmt, ir.Map):
                k = len(out) - 1
                while k >= 0 and isinstance(out[k], (ir.Alloc, ir.Alias, ir.Comment)):
                    k -= 1
                if k >= 0 and isinstance(out[k], ir.Map):
                    merged = _substitute_temp(out[k], stmt, buffers, reads)
                    if merged is not None:
                        del out[k]
                        stmt = merged
            out.append(stmt)
        block.stmts = out


def _substitute_temp(prev: ir.Map, stmt: ir.Map, buffers, reads):
    if prev.shape != stmt.shape or len(prev.assigns) != 1:
        return None
    a = prev.assigns[0]
    if not isinstance(a, ir.Assign) or a.accumulate:
        return None
    t = a.dst.var
    if t.storage != "buf" or buffers.of(t) != (t, 0) or not buffers.is_owned(t) or reads.get(id(t), 0) != 1:
        return None
    n = 1
    for d in stmt.shape:
        n *= d
    if t.size != n or a.dst.offset != 0 or (n > 1 and a.dst.strides != contiguous_strides(tuple(stmt.shape))):
        return None
    key = buffers.key(a.dst)
    uses = 0
    for b in stmt.assigns:
        for v in ir.expr_loads(b.expr):
            if buffers.of(v.var)[0] is t:
                if buffers.key(v) != key:
                    return None
                uses += 1
        if isinstance(b, ir.Assign) and buffers.of(b.dst.var)[0] is t:
            return None
    if uses != 1:
        return None
    # What `stmt` writes must not be an input of `e` (it would read it later).
    written = {id(buffers.of(b.dst.var)[0]) for b in stmt.assigns if isinstance(b, ir.Assign)}
    if any(id(buffers.of(v.var)[0]) in written for v in ir.expr_loads(a.expr)):
        return None

    def sub(e):
        if e[0] == "load" and buffers.of(e[1].var)[0] is t:
            return a.expr
        if e[0] == "fmt":
            return ("fmt", e[1], [sub(x) for x in e[2]])
        return e

    new = [ir.Assign(b.dst, b.accumulate, sub(b.expr)) if isinstance(b, ir.Assign) else ir.Let(b.name, sub(b.expr))
           for b in stmt.assigns]
    merged = ir.Map(stmt.shape, new)
    merged.loc = stmt.loc
    return merged


def fuse_elementwise(program) -> None:
    buffers = analyse(program.body)
    for block in list(ir.blocks(program.body)):
        block.stmts = _fuse_block(block.stmts, buffers)
    _promote(program, buffers)


# How many earlier maps a map may still join (the most recent ones): bounds
# the pass's work on long unrolled blocks (the LSTM's ~3,500 statements).
OPEN_MAPS = 16


class _OpenMap:
    """A map a later map may still join, at `out[index]`: it commutes with
    every statement after it in `out`, so it can move down to that map.
    `touched` and `written` are the root buffers of its accesses."""

    def __init__(self, index: int, stmt: ir.Map, accesses):
        self.index, self.map, self.accesses = index, stmt, list(accesses)
        self.touched, self.written = _roots(accesses)

    def grow(self, accesses) -> None:
        self.accesses += accesses
        touched, written = _roots(accesses)
        self.touched |= touched
        self.written |= written

    def commutes_with(self, touched, written) -> bool:
        """It may run after a statement with this footprint instead of before."""
        return not (written & self.touched or self.written & touched)


def _roots(accesses):
    return {a[0] for a in accesses}, {a[0] for a in accesses if a[2]}


def _fuse_block(stmts, buffers):
    out = []  # a map that moved down leaves None behind
    open_maps = []
    for stmt in stmts:
        if isinstance(stmt, ir.Map):
            accesses = _accesses(stmt, buffers)
            footprint = _roots(accesses)
            target = next((g for g in reversed(open_maps) if _compatible(g.map, stmt, g.accesses, accesses)), None)
            if target is not None:
                # Move the grown map down to here, past the statements between.
                out[target.index] = None
                target.map.assigns.extend(stmt.assigns)
                target.index = len(out)
                out.append(target.map)
                target.grow(accesses)
                open_maps = [g for g in open_maps if g is not target and g.commutes_with(*footprint)] + [target]
                continue
            open_maps = [g for g in open_maps if g.commutes_with(*footprint)][-(OPEN_MAPS - 1):]
            open_maps.append(_OpenMap(len(out), stmt, accesses))
            out.append(stmt)
        else:
            out.append(stmt)
            if isinstance(stmt, (ir.Alloc, ir.Alias, ir.Comment)):
                continue
            if isinstance(stmt, ir.Prim):
                reads = {id(buffers.of(v)[0]) for v in stmt.reads()}
                writes = {id(buffers.of(v)[0]) for v in stmt.writes()}
                open_maps = [g for g in open_maps if g.commutes_with(reads | writes, writes)]
            else:
                open_maps = []
    return [stmt for stmt in out if stmt is not None]


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
                if other[0] != root or (other[1] != key and views_disjoint(
                        tuple(a.shape), key[1:], other[1][1:])):
                    continue
                if other[1] != key:
                    return False
                if reduction and not (other[2] and other[3]):
                    return False  # reading a sum still being accumulated
    return True


def _promote(program, buffers) -> None:
    """Within each fused loop, later reads of an element just assigned use the
    register; then stores no other statement reads are dropped."""
    for _, stmt in list(ir.walk(program.body)):
        if not isinstance(stmt, ir.Map) or len(stmt.assigns) < 2:
            continue
        # Register names are local to their loop: numbering them per loop lets
        # equal loops (unrolled time steps) render as one loop function.
        counter = [0]
        known = {}  # view key -> local name
        new = []
        for pos, a in enumerate(stmt.assigns):
            expr = _substitute(a.expr, known, buffers)
            if isinstance(a, ir.Let):
                new.append(ir.Let(a.name, expr))
                continue
            key = buffers.key(a.dst)
            held = known.get(key)
            for k in [k for k in known if k[0] == key[0]]:
                del known[k]
            if a.accumulate:
                if _is_reduction(a.dst, stmt.shape) or held is None and not _read_later(stmt.assigns, pos, key, buffers):
                    new.append(ir.Assign(a.dst, True, expr))
                    continue
                # `d += e` is `d = v + e`: with v the register of an earlier
                # assign of the element in this loop (one element per index),
                # a gradient summed within the loop is summed in registers;
                # a first access read again later loads d itself, and the
                # later reads use the sum's register - through other aliases
                # of d too, which then are no pointers of the loop function
                # (aliases of a written buffer forbid __restrict, and with it
                # the vectorisation of an LSTM's gate gradients).  A first
                # access read by nothing later stays `d += e`.
                prior = ("local", held) if held is not None else ("load", a.dst)
                expr = ("fmt", "({0} + {1})", [prior, expr])
            counter[0] += 1
            name = f"v{counter[0]}"
            new.append(ir.Let(name, expr))
            new.append(ir.Assign(a.dst, False, ("local", name)))
            known[key] = name
        stmt.assigns = _drop_single_use_lets(_drop_overwritten_stores(new, buffers))

    # Stores into owned buffers that no other statement reads are dead now.
    reads = read_counts(program.body, buffers)
    for _, stmt in ir.walk(program.body):
        if isinstance(stmt, ir.Map):
            stmt.assigns = [
                a for a in stmt.assigns
                if isinstance(a, ir.Let) or not buffers.is_owned(a.dst.var)
                or reads.get(buffers.key(a.dst)[0], 0) > 0 or a.accumulate
            ]


def _read_later(assigns, k: int, key, buffers) -> bool:
    """An assign after the k-th loads the elements of view `key`."""
    return any(buffers.key(v) == key for a in assigns[k + 1:] for v in ir.expr_loads(a.expr))


def _is_reduction(dst: ir.View, shape) -> bool:
    """Many indices of the loop add into one element (a zero stride)."""
    return any(st == 0 and n != 1 for st, n in zip(dst.strides, shape))


def _drop_overwritten_stores(assigns, buffers):
    """A store that a later store of the same elements replaces, with no read
    of that buffer from memory in between, is dead."""
    out, replaced = [], set()  # view keys stored later in the loop
    for a in reversed(assigns):
        if isinstance(a, ir.Assign):
            key = buffers.key(a.dst)
            if not a.accumulate and key in replaced:
                continue
        roots = {buffers.key(v)[0] for v in ir.expr_loads(a.expr)}
        if isinstance(a, ir.Assign) and a.accumulate:
            roots.add(key[0])
        replaced = {k for k in replaced if k[0] not in roots}
        if isinstance(a, ir.Assign) and not a.accumulate:
            replaced.add(key)
        out.append(a)
    out.reverse()
    return out


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
