"""Facts about buffers that several passes need: which buffer a view really
touches (through `Alias` chains), which buffers the program owns (allocated
in the arena) as opposed to external ones (inputs, captured arrays,
parameters of continuations and functions, whose writes are visible to the
caller), and how often each buffer is read."""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir


@dataclass
class Buffers:
    root: dict  # alias var -> (root var, element offset)
    owned: set  # ids of vars allocated by this program's Alloc statements

    def of(self, var: ir.Var) -> tuple[ir.Var, int]:
        return self.root.get(id(var), (var, 0))

    def is_owned(self, var: ir.Var) -> bool:
        return id(self.of(var)[0]) in self.owned

    def key(self, view: ir.View) -> tuple:
        """Identity of the memory a view walks: same key, same elements."""
        root, off = self.of(view.var)
        return id(root), off + view.offset, view.strides


def analyse(body: ir.Block) -> Buffers:
    root: dict = {}
    owned: set = set()
    for _, stmt in ir.walk(body):
        if isinstance(stmt, ir.Alias):
            base, off = root.get(id(stmt.base), (stmt.base, 0))
            root[id(stmt.var)] = (base, off + stmt.offset)
        elif isinstance(stmt, ir.Alloc):
            owned.add(id(stmt.var))
    return Buffers(root, owned)


def referenced(stmt: ir.Stmt, buffers: Buffers) -> set:
    """Ids of root buffers a statement (with everything nested in it) reads or writes."""
    out = set()
    stack = [stmt]
    while stack:
        s = stack.pop()
        for v in s.reads() + s.writes():
            out.add(id(buffers.of(v)[0]))
        if isinstance(s, ir.Alias):
            out.add(id(buffers.of(s.base)[0]))
        if isinstance(s, ir.Alloc):
            out.add(id(s.var))
        for child in ir.children(s):
            stack.extend(child.stmts)
    return out


def written_within(stmt: ir.Stmt) -> set:
    """ids of every variable `stmt` writes, in its nested blocks too."""
    out = set()
    stack = [stmt]
    while stack:
        s = stack.pop()
        out.update(id(v) for v in s.writes())
        for child in ir.children(s):
            stack.extend(child.stmts)
    return out


def read_counts(body: ir.Block, buffers: Buffers) -> dict:
    """Root id -> number of statements reading it, not counting a statement's
    implicit read of what it accumulates into (an accumulation keeps nothing
    alive); a loop's explicit loads count, of a buffer it writes too
    (`d = a; d += b; y = d * c`, or `v = d + e; d = v; y = v * c`)."""
    counts: dict = {}
    for _, stmt in ir.walk(body):
        written = {id(buffers.of(v)[0]) for v in stmt.writes()}
        outside = {id(buffers.of(v)[0]) for v in stmt.reads()} - written
        for rid in outside | _loads(stmt, buffers):
            counts[rid] = counts.get(rid, 0) + 1
    return counts


def _loads(stmt: ir.Stmt, buffers: Buffers) -> set:
    """Root ids an elementwise loop's expressions load."""
    if not isinstance(stmt, ir.Map):
        return set()
    return {id(buffers.of(v.var)[0]) for a in stmt.assigns for v in ir.expr_loads(a.expr)}
