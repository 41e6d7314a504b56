"""The CPS intermediate representation.

Straight-line code is a `Block` of primitive statements.  Control transfers
are only `If`, `Call` (of a staged function `Fun`, passing a continuation)
and `Jump` (applying a continuation).  Continuations are reified as `Lam`s:
staged functions whose parameters are the (value, gradient) buffers of the
values flowing into "the rest of the program".

Every statement prints as one line (`str(stmt)`); `format_block` prints a
whole program.  `verify` checks that every variable is defined before use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from .types import IntArrayType, TensorType, contiguous_strides


# ----------------------------------------------------------------- variables
@dataclass(eq=False)
class Var:
    """A named C++ variable.

    storage: "buf"    pointer to memory (arena, input or output)
             "scalar" an int32/bool held by value
             "const"  a literal (`value`), folded into expressions
             "array"  an IntArray input: pointer plus `<name>_len`
    """

    name: str
    type: Union[TensorType, IntArrayType]
    storage: str = "buf"
    value: float | int | bool | None = None

    def __repr__(self) -> str:
        return f"%{self.name}" if self.storage != "const" else repr(self.value)

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    @property
    def size(self):
        return self.type.size


@dataclass(frozen=True, eq=False)
class View:
    """`var` seen with `offset` and per-dimension `strides` over a loop's index space."""

    var: Var
    offset: int
    strides: tuple[int, ...]

    def __repr__(self) -> str:
        if self.offset == 0 and self.strides == contiguous_strides(self.var.shape[-len(self.strides):] if self.strides else ()):
            return repr(self.var)
        return f"{self.var!r}@{self.offset}{list(self.strides)}"


# Expressions of elementwise loops: a tree of tuples.
#   ("load", View)   ("fmt", "tanh_f({0})", [args...])   ("local", name)
Expr = tuple


def expr_str(e: Expr) -> str:
    tag = e[0]
    if tag == "load":
        return repr(e[1])
    if tag == "local":
        return e[1]
    args = [expr_str(a) for a in e[2]]
    return e[1].format(*args)


def expr_loads(e: Expr):
    """Every View an expression reads."""
    stack = [e]
    while stack:
        x = stack.pop()
        if x[0] == "load":
            yield x[1]
        elif x[0] == "fmt":
            stack.extend(x[2])


# ----------------------------------------------------------------- statements
class Stmt:
    """Base class; `reads()` / `writes()` list the Vars a statement touches."""

    loc: str = ""

    def reads(self) -> list[Var]:
        return []

    def writes(self) -> list[Var]:
        return []


@dataclass(eq=False)
class Alloc(Stmt):
    var: Var
    zero: bool

    def writes(self):
        return [self.var]

    def __str__(self):
        return f"{self.var!r} = {'zeros' if self.zero else 'alloc'} {self.var.type}"


@dataclass(eq=False)
class Alias(Stmt):
    """`var` is `base` shifted by `offset` elements: a zero-copy view."""

    var: Var
    base: Var
    offset: int

    def reads(self):
        return [self.base]

    def __str__(self):
        return f"{self.var!r} = view {self.base!r}+{self.offset} as {self.var.type}"


@dataclass(eq=False)
class Assign:
    dst: View
    accumulate: bool
    expr: Expr

    def __str__(self):
        return f"{self.dst!r} {'+=' if self.accumulate else '='} {expr_str(self.expr)}"


@dataclass(eq=False)
class Let:
    """A per-element value kept in a register (made by the fusion pass)."""

    name: str
    expr: Expr

    def __str__(self):
        return f"{self.name} := {expr_str(self.expr)}"


@dataclass(eq=False)
class Map(Stmt):
    """An elementwise loop over `shape`: for each index, `assigns` (Assign or
    Let) run in order, each Assign writing one element."""

    shape: tuple[int, ...]
    assigns: list

    def reads(self):
        out = []
        for a in self.assigns:
            out.extend(v.var for v in expr_loads(a.expr))
            if isinstance(a, Assign) and a.accumulate:
                out.append(a.dst.var)
        return out

    def writes(self):
        return [a.dst.var for a in self.assigns if isinstance(a, Assign)]

    def views(self) -> list[View]:
        out = []
        for a in self.assigns:
            if isinstance(a, Assign):
                out.append(a.dst)
            out.extend(expr_loads(a.expr))
        return out

    def __str__(self):
        dims = ",".join(map(str, self.shape))
        return f"map[{dims}] {{ " + "; ".join(map(str, self.assigns)) + " }"


@dataclass(eq=False)
class ScalarDef(Stmt):
    """A staged int32/bool scalar computed by a C++ expression."""

    var: Var
    expr: Expr

    def reads(self):
        return [v.var for v in expr_loads(self.expr)]

    def writes(self):
        return [self.var]

    def __str__(self):
        return f"{self.var!r} = {expr_str(self.expr)}"


@dataclass(eq=False)
class Prim(Stmt):
    """A call of a runtime kernel (gemm, reduce, softmax, ...).

    `kind` names an entry of the kernel table in `codegen.kernels`.
    `accumulate` is True when the kernel adds into `outs` instead of assigning.
    """

    kind: str
    outs: list[Var]
    ins: list[Var]
    attrs: dict
    accumulate: bool = False

    def reads(self):
        return list(self.ins) + (list(self.outs) if self.accumulate else [])

    def writes(self):
        return list(self.outs)

    def __str__(self):
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs.items())
        op = "+=" if self.accumulate else "="
        outs = ", ".join(map(repr, self.outs))
        ins = ", ".join(map(repr, self.ins))
        call = f"{self.kind}({ins}{', ' if attrs else ''}{attrs})"
        return f"{outs} {op} {call}" if outs else call


@dataclass(eq=False)
class Comment(Stmt):
    text: str

    def __str__(self):
        return f"# {self.text}"


# ------------------------------------------------------------------ blocks
@dataclass(eq=False)
class Block:
    """Straight-line statements.  `pending` holds backward emitters (callables)
    waiting for the block's continuation point; `parent` is the lexically
    enclosing block (visibility of variables)."""

    stmts: list[Stmt] = field(default_factory=list)
    parent: "Block | None" = None
    pending: list = field(default_factory=list)
    label: str = ""

    def encloses(self, other: "Block") -> bool:
        b = other
        while b is not None:
            if b is self:
                return True
            b = b.parent
        return False


@dataclass(eq=False)
class Lam:
    """A reified continuation: `params` are the values (and their gradient
    buffers) flowing into the rest of the program, `body` that rest."""

    name: str
    params: list[Var]
    body: Block


@dataclass(eq=False)
class Fun:
    """A staged, possibly recursive, function in CPS: `body` ends by applying
    the continuation parameter `k` (a `KParam`) to the results."""

    name: str
    params: list[Var]
    k: "KParam"
    body: Block


@dataclass(eq=False)
class KParam:
    """The continuation parameter of a Fun; `arg_types` are the flattened result vars' types."""

    name: str
    arg_types: list


Cont = Union[Lam, KParam]


@dataclass(eq=False)
class LamDef(Stmt):
    lam: Lam

    def __str__(self):
        return f"lam {self.lam.name}({', '.join(map(repr, self.lam.params))})"


@dataclass(eq=False)
class FunDef(Stmt):
    fun: Fun

    def __str__(self):
        ps = ", ".join(map(repr, self.fun.params))
        return f"fun {self.fun.name}({ps}; {self.fun.k.name})"


@dataclass(eq=False)
class If(Stmt):
    cond: Var
    then: Block
    else_: Block

    def reads(self):
        return [self.cond]

    def __str__(self):
        return f"if {self.cond!r}"


@dataclass(eq=False)
class Call(Stmt):
    fun: Fun
    args: list[Var]
    k: Cont

    def reads(self):
        return list(self.args)

    def __str__(self):
        return f"call {self.fun.name}({', '.join(map(repr, self.args))}; {self.k.name})"


@dataclass(eq=False)
class Jump(Stmt):
    k: Cont
    args: list[Var]

    def reads(self):
        return list(self.args)

    def __str__(self):
        return f"jump {self.k.name}({', '.join(map(repr, self.args))})"


@dataclass(eq=False)
class Nested(Stmt):
    """A nested C++ scope whose arena allocations are released at its end.
    `accumulators`: buffers (gradients of differentiated arguments) the
    scope only adds into and never reads.  `logs_fresh` / `logs_flush`:
    bool scalars for the deferred weight-gradient logs of an accumulating
    train step (passes/defer_outer.py) - whether this call starts them anew
    (else they keep earlier calls' rows) and whether it flushes them; None:
    every call starts and flushes its own."""

    body: Block
    accumulators: list = field(default_factory=list)
    logs_fresh: Optional[Var] = None
    logs_flush: Optional[Var] = None

    def reads(self):
        return [v for v in (self.logs_fresh, self.logs_flush) if v is not None]

    def __str__(self):
        return f"scope {self.body.label}".rstrip()


@dataclass(eq=False)
class Loop(Stmt):
    """A direct (non-CPS) loop, used outside differentiation:
    `while (true) { head; if (!cond) break; body }`."""

    head: Block
    cond: Var
    body: Block

    def reads(self):
        return [self.cond]

    def __str__(self):
        return f"loop while {self.cond!r}"


def children(stmt: Stmt) -> list[Block]:
    """Nested blocks of a statement, in program order."""
    if isinstance(stmt, LamDef):
        return [stmt.lam.body]
    if isinstance(stmt, FunDef):
        return [stmt.fun.body]
    if isinstance(stmt, If):
        return [stmt.then, stmt.else_]
    if isinstance(stmt, Nested):
        return [stmt.body]
    if isinstance(stmt, Loop):
        return [stmt.head, stmt.body]
    return []


def walk(block: Block):
    """Every (block, stmt) pair, depth first in program order, iteratively."""
    stack = [iter(block.stmts)]
    owners = [block]
    while stack:
        stmt = next(stack[-1], None)
        if stmt is None:
            stack.pop()
            owners.pop()
            continue
        yield owners[-1], stmt
        for child in reversed(children(stmt)):
            stack.append(iter(child.stmts))
            owners.append(child)


def blocks(block: Block):
    """Every block, `block` itself first, each once."""
    stack = [block]
    while stack:
        b = stack.pop()
        yield b
        for stmt in reversed(b.stmts):
            stack.extend(reversed(children(stmt)))


# ------------------------------------------------------------------ printing
def format_block(block: Block, indent: int = 0) -> str:
    """The block as text, one statement per line.  Recursion follows the
    nesting of control flow only, never the length of the program."""
    lines: list[str] = []
    pad = "  " * indent
    for stmt in block.stmts:
        if isinstance(stmt, If):
            lines.append(f"{pad}if {stmt.cond!r}:")
            lines.append(format_block(stmt.then, indent + 1))
            lines.append(f"{pad}else:")
            lines.append(format_block(stmt.else_, indent + 1))
        elif isinstance(stmt, Loop):
            lines.append(f"{pad}loop:")
            lines.append(format_block(stmt.head, indent + 1))
            lines.append(f"{pad}  while {stmt.cond!r}:")
            lines.append(format_block(stmt.body, indent + 2))
        elif children(stmt):
            lines.append(f"{pad}{stmt}:")
            lines.append(format_block(children(stmt)[0], indent + 1))
        else:
            lines.append(pad + str(stmt))
    return "\n".join(ln for ln in lines if ln)


class IRError(Exception):
    """The IR broke an invariant: a bug in lantern_stage, not in the user's model."""


def verify(block: Block, defined: set[str]) -> None:
    """Check that every variable is defined before it is used, lexically."""
    _verify(block, set(defined), set())


def _verify(block: Block, defined: set[str], conts: set[str]) -> None:
    defined = set(defined)
    conts = set(conts)
    for stmt in block.stmts:
        for v in stmt.reads() if not isinstance(stmt, Loop) else []:  # its test is defined in its head
            if v.storage != "const" and v.name not in defined:
                raise IRError(f"{v.name} used before definition in: {stmt}")
        if isinstance(stmt, (Alloc, Alias, ScalarDef)):
            defined.add(stmt.var.name)
        elif isinstance(stmt, LamDef):
            inner = defined | {p.name for p in stmt.lam.params}
            _verify(stmt.lam.body, inner, conts)
            conts.add(stmt.lam.name)
        elif isinstance(stmt, FunDef):
            conts.add(stmt.fun.name)
            inner = defined | {p.name for p in stmt.fun.params}
            _verify(stmt.fun.body, inner, conts | {stmt.fun.k.name})
        elif isinstance(stmt, (Call, Jump)):
            if stmt.k.name not in conts:
                raise IRError(f"continuation {stmt.k.name} not in scope in: {stmt}")
            if isinstance(stmt, Call) and stmt.fun.name not in conts:
                raise IRError(f"function {stmt.fun.name} not in scope in: {stmt}")
        else:
            for child in children(stmt):
                _verify(child, defined, conts)
