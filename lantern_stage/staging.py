"""Staging: the Builder that records IR while the user's Python runs, and `Rep`,
the staged value users compute with.

The Builder keeps a stack of scopes.  A scope is a reset point of the CPS
transform (a `value_and_grad` body, a branch of `cond`, the body of a staged
function); within it, every control-flow construct splits "the rest of the
program" into a fresh continuation block, so a scope owns a list of blocks.
Each block keeps the backward emitters of the ops staged into it; closing the
scope emits its tail (seed the loss, or jump to the continuation) and then
flushes every block's backward emitters in reverse: `fwd; k(y); bwd`.

Hash-consing.  Applying a pure op whose name, operand values and static
attributes equal those of an op applied before, in a block visible from
here, returns that op's value instead of staging it again (ops/registry.py),
so that derivative rules which recompute a value - the primal of nested
jvps, a tangent equal to another one, `1 - y*y` of tanh in its JVP and its
VJP - produce one value with fan-out rather than copies.  What makes it
safe is decided here:
  - an operand is identified by its variable and the number of writes
    staged so far into the buffer under it (`note_writes`, through views),
    so a value read before an `assign` never stands for one read after it;
  - gradient buffers (accumulated into by callees too) are never operands
    of a consed op;
  - the table belongs to a scope; loop heads and bodies and function
    bodies (`barrier=True`), which run many times, start an empty one, and
    a call of a staged function counts as a write to every captured array
    (its body may assign them); cond branches and value_and_grad bodies
    run at most once per visit and share their parent's table, where the
    visibility of the recorded block keeps a branch's values in it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from . import ir
from .types import IntArrayType, TensorType

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class StagingError(Exception):
    """The model is wrong while staging: a shape or type mismatch, a misuse of
    control flow.  The message names the op and the user's file:line."""


def user_location() -> str:
    """file:line of the innermost frame outside lantern_stage (the user's code)."""
    frame = sys._getframe(1)
    while frame is not None:
        fname = frame.f_code.co_filename
        if not os.path.abspath(fname).startswith(_PACKAGE_DIR + os.sep):
            return f"{fname}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def staging_error(message: str) -> StagingError:
    return StagingError(f"{message}\n  at {user_location()}")


@dataclass
class Scope:
    blocks: list
    rev: "RevLevel | None"  # the reverse level whose ops this scope tracks
    # Hash-consing table (module docstring): key -> ConsEntry; shared with
    # the enclosing scope unless this scope runs many times (a barrier).
    cons: dict


class RevLevel:
    """One `value_and_grad` being staged (a reverse-mode level).

    `jvp_levels`: the forward levels open around it - its gradient buffers
    carry a tangent buffer per such level (forward-over-reverse).  `extra`:
    Reps outside the function that this level differentiates too, keyed by
    identity (the recomputation of an inner grad by an outer one, see
    autodiff.py).  `reads`: Reps tracked by an enclosing level that the
    function read - what an enclosing reverse level must treat as inputs
    of this whole `value_and_grad` call."""

    def __init__(self, parent: "RevLevel | None", jvp_levels: tuple):
        self.parent = parent
        self.jvp_levels = jvp_levels
        self.extra: dict[int, "Acc"] = {}
        self.reads: dict[int, "Rep"] = {}

    def lookup(self, rep: "Rep") -> "Acc | None":
        g = rep.grad
        if g is not None and g.level is self:
            return g
        return self.extra.get(id(rep))

    def tracked_outside(self, rep: "Rep") -> bool:
        p = self.parent
        while p is not None:
            if p.lookup(rep) is not None:
                return True
            p = p.parent
        return rep.grad is not None and rep.grad.level is not self


class JvpLevel:
    """One `jvp` being staged (a forward-mode level); Reps map it to their tangent."""

    def __repr__(self):
        return f"JvpLevel@{id(self):x}"


class Acc:
    """A gradient buffer of one reverse level: `var` is accumulated into by
    the backward code, `tangents[level]` is its own tangent buffer per
    forward level open around that reverse level (the tangent of a
    gradient, for Hessian-vector products).  `touched`: something may have
    added into it (an accumulation, or its passing into control flow) -
    an untouched buffer is known to be zero at staging time."""

    def __init__(self, var, level, tangents=None):
        self.var = var
        current().accumulators.add(var.name)  # never an operand of a consed op
        self.level = level
        self.tangents: dict = tangents or {}
        self.touched = False
        self.forbidden: str | None = None

    def flat(self) -> list:
        """Every buffer of the tree, in a canonical order (see `acc_levels`)."""
        out = [self.var]
        for t in self.tangents.values():  # inserted in level order
            out.extend(t.flat())
        return out


class Builder:
    def __init__(self):
        self._counter = 0
        root = ir.Block(label="entry")
        self.root = root
        self.scopes: list[Scope] = [Scope([root], None, {})]
        # Hash-consing (module docstring): staged writes per underlying
        # buffer, the buffer under each view, the gradient buffers.
        self.writes: dict[str, int] = {}
        self.alias_root: dict[str, str] = {}
        self.accumulators: set[str] = set()
        # Forward-mode levels open right now, outermost first.
        self.jvp_levels: list[JvpLevel] = []
        # Arrays the staged code reads or updates in place without their being
        # arguments: numpy arrays and objects with `lantern_array()` (model
        # parameters, optimizer state).  Passed by pointer on every call.
        self.captures: list[tuple[object, ir.Var]] = []
        self._captured: dict[int, "Rep"] = {}
        # Modules whose train/eval mode the staged code read: id -> (module, mode).
        self.modes: dict[int, tuple[object, bool]] = {}

    # ------------------------------------------------------------ names, vars
    def fresh(self, prefix: str) -> str:
        """A new C++ name; `prefix` may be any Python name (a lambda's "<lambda>", "módulo")."""
        self._counter += 1
        return f"{_identifier(prefix)}{self._counter}"

    def new_var(self, type_, prefix: str = "t") -> ir.Var:
        if isinstance(type_, IntArrayType):
            storage = "array"
        elif type_.shape == () and type_.dtype != "float32":
            storage = "scalar"
        else:
            storage = "buf"
        return ir.Var(self.fresh(prefix), type_, storage)

    def const(self, value, dtype: str) -> ir.Var:
        return ir.Var(f"c{value}", TensorType((), dtype), "const", value)

    def alloc(self, type_, prefix: str = "t", zero: bool = False) -> ir.Var:
        problem = type_.too_large() if isinstance(type_, TensorType) else None
        if problem:  # every buffer is allocated here, so no size product can wrap in C++
            raise staging_error(f"{prefix.strip('_')}: {problem}")
        var = self.new_var(type_, prefix)
        if var.storage == "buf":
            self.emit(ir.Alloc(var, zero))
        return var

    def capture(self, holder) -> "Rep":
        key = id(holder)
        if key not in self._captured:
            array = captured_array(holder)
            dtype = {"float32": "float32", "int32": "int32", "bool": "bool"}.get(str(array.dtype))
            if dtype is None:
                raise staging_error(f"cannot use an array of dtype {array.dtype} in staged code (float32, int32 or bool)")
            name = getattr(holder, "lantern_name", None) or "const"
            var = ir.Var(self.fresh("cap_" + _identifier(name) + "_"), TensorType(tuple(array.shape), dtype), "buf")
            self.captures.append((holder, var))
            self._captured[key] = Rep(var, self.root)
        return self._captured[key]

    def record_mode(self, module, mode: bool) -> None:
        self.modes.setdefault(id(module), (module, mode))

    # ---------------------------------------------------------------- blocks
    @property
    def block(self) -> ir.Block:
        return self.scopes[-1].blocks[-1]

    @property
    def in_grad(self) -> bool:
        return self.scopes[-1].rev is not None

    @property
    def rev(self) -> "RevLevel | None":
        return self.scopes[-1].rev

    def grad_of(self, rep: "Rep") -> "Acc | None":
        """The gradient buffer of `rep` at the reverse level being staged."""
        rev = self.rev
        return None if rev is None else rev.lookup(rep)

    def new_acc(self, type_, level: "RevLevel", prefix: str, levels=None) -> Acc:
        """A zeroed gradient buffer with a zeroed tangent buffer per forward
        level of `level` (the tangent at level i has tangents below i)."""
        levels = list(level.jvp_levels) if levels is None else levels
        var = self.alloc(type_, prefix, zero=True)
        tangents = {}
        for i, lv in enumerate(levels):
            tangents[lv] = self.new_acc(type_, level, "t" + prefix, levels[:i])
        return Acc(var, level, tangents)

    def emit(self, stmt: ir.Stmt) -> None:
        self.block.stmts.append(stmt)
        if isinstance(stmt, ir.Alias):
            self.alias_root[stmt.var.name] = self.root_of(stmt.base)
        self.note_writes(stmt.writes())

    # ---------------------------------------------------------- hash-consing
    def root_of(self, var: ir.Var) -> str:
        """The name of the buffer a view (of a view ...) aliases."""
        return self.alias_root.get(var.name, var.name)

    def note_writes(self, vars_) -> None:
        for v in vars_:
            r = self.root_of(v)
            self.writes[r] = self.writes.get(r, 0) + 1

    def operand_key(self, var: ir.Var):
        """What identifies an operand's value for hash-consing, or None when
        it cannot be an operand of a consed op (a gradient buffer)."""
        if var.storage == "const":
            value = var.value
            return ("const", var.dtype, value.hex() if isinstance(value, float) else repr(value))
        if var.name in self.accumulators:
            return None
        return (var.name, self.writes.get(self.root_of(var), 0))

    def cons_table(self) -> dict:
        return self.scopes[-1].cons

    def note_call(self) -> None:
        """A call of a staged function may assign captured arrays."""
        self.note_writes([v for _, v in self.captures])

    def push_backward(self, emitter) -> None:
        self.block.pending.append(emitter)

    def open_scope(self, label: str, rev=..., parent: ir.Block | None = None, barrier: bool = False) -> ir.Block:
        """A new scope; `rev`: the reverse level it tracks (default: the
        current one); `barrier`: it may run many times (a loop or function
        body), so it sees none of the consed values of the scopes outside."""
        block = ir.Block(parent=parent or self.block, label=label)
        cons = {} if barrier else self.scopes[-1].cons
        self.scopes.append(Scope([block], self.rev if rev is ... else rev, cons))
        return block

    def continue_in(self, block: ir.Block) -> None:
        """The rest of the current scope is staged into `block` (a continuation body)."""
        self.scopes[-1].blocks.append(block)

    def close_scope(self, tail=None) -> ir.Block:
        """Emit `tail()` at the innermost point of the scope, then every
        pending backward emitter, innermost block first, in reverse order."""
        scope = self.scopes[-1]
        if tail is not None:
            tail()
        for block in reversed(scope.blocks):
            # Backward rules are staged with no reverse level: an enclosing
            # one sees a whole inner value_and_grad as one op (autodiff.py).
            self.scopes.append(Scope([block], None, scope.cons))
            try:
                while block.pending:
                    block.pending.pop()()
            finally:
                self.scopes.pop()
        self.scopes.pop()
        return scope.blocks[0]

    def depth(self) -> int:
        return len(self.scopes)

    def unwind_to(self, depth: int) -> None:
        """Drop scopes opened after `depth` (when staging raised midway)."""
        del self.scopes[depth:]

    def visible(self, block: ir.Block) -> bool:
        return block.encloses(self.block)


def captured_array(holder):
    """The numpy array behind a captured object, as it is right now."""
    return holder.lantern_array() if hasattr(holder, "lantern_array") else holder


def _identifier(name: str) -> str:
    """ASCII letters, digits and underscores only: g++ needs nothing else."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)


_BUILDERS: list[Builder] = []


def current() -> Builder:
    if not _BUILDERS:
        raise StagingError(
            "staged operation outside of staging: lantern_stage ops only work "
            "inside a function passed to lt.compile / lt.train_step"
        )
    return _BUILDERS[-1]


def is_staging() -> bool:
    return bool(_BUILDERS)


class staging_context:
    def __init__(self, builder: Builder):
        self.builder = builder

    def __enter__(self):
        _BUILDERS.append(self.builder)
        return self.builder

    def __exit__(self, *exc):
        _BUILDERS.pop()
        return False


# ------------------------------------------------------------------ Rep
_RETURN_IT = "return it from the compiled function (its result is a numpy array)"
_COMPUTE_WITH_LT = "compute with lt ops (lt.exp, lt.tanh, lt.sqrt, ...), or " + _RETURN_IT

class Rep:
    """A staged value ("Rep[Tensor]"): stands for a C++ buffer or scalar of a
    static type.  `grad` is its gradient buffer (an `Acc` of one reverse
    level) while a `value_and_grad` is being staged and the value depends on
    a differentiated argument; `tangents` maps each forward level (`jvp`)
    it depends on to its tangent, itself a Rep."""

    __array_priority__ = 1000  # numpy defers `ndarray op Rep` to Rep

    def __init__(self, var: ir.Var, block: ir.Block | None, grad: "Acc | None" = None, tangents=None):
        self.var = var
        self.block = block
        self.grad = grad
        self.tangents: dict = dict(tangents) if tangents else {}

    # ---- static facts
    @property
    def type(self):
        return self.var.type

    @property
    def shape(self) -> tuple[int, ...]:
        if isinstance(self.var.type, IntArrayType):
            raise staging_error("an IntArray has no static shape; use .length")
        return self.var.type.shape

    @property
    def dtype(self) -> str:
        return self.var.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.var.type.size

    def __len__(self) -> int:
        if not self.shape:
            raise staging_error("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Rep({self.var.name}: {self.var.type})"

    def __bool__(self):
        raise staging_error(
            "a staged value has no Python truth value at staging time; "
            "use lt.cond / lt.where / lt.while_loop for data-dependent control flow"
        )

    def __iter__(self):
        if isinstance(self.var.type, IntArrayType):
            raise staging_error("cannot iterate over an IntArray at staging time")
        return (self[i] for i in range(len(self)))

    # ---- Python and numpy asking for the value: it does not exist until the
    # compiled code runs, so each says so at the user's line and names what
    # to write instead.
    def _no_value(self, what: str, instead: str):
        raise staging_error(
            f"{what}: a staged value ({self.var.type}) has no value while staging "
            f"(the compiled code computes it); {instead}"
        )

    def __float__(self):
        self._no_value("float() / math.*", _COMPUTE_WITH_LT)

    def __complex__(self):
        self._no_value("complex()", _COMPUTE_WITH_LT)

    def __int__(self):
        self._no_value("int()", "index tensors with it directly (x[i]), or " + _RETURN_IT)

    def __index__(self):
        self._no_value(
            "range(), a slice bound, a list index or a shape (a Python int)",
            "loop with lt.fori_loop(lower, upper, body, init) or lt.while_loop, index tensors "
            "with it directly (x[i]), or " + _RETURN_IT,
        )

    def __format__(self, spec: str) -> str:
        if not spec:
            return str(self)
        self._no_value(f"format spec {spec!r}", _RETURN_IT + " and format the result")

    def numpy(self):
        self._no_value(".numpy()", _RETURN_IT)

    def item(self):
        self._no_value(".item()", _RETURN_IT)

    def tolist(self):
        self._no_value(".tolist()", _RETURN_IT)

    def __array__(self, dtype=None, copy=None):
        self._no_value("np.asarray() / np.array()", "build arrays with lt.stack / lt.concat, or " + _RETURN_IT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """numpy ufuncs stage the lantern_stage op of the same meaning
        (np.tanh(x) is lt.tanh(x), `ndarray + x` is lt.add), or raise."""
        from .api import numpy_ufunc

        return numpy_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from .api import numpy_function_error

        raise numpy_function_error(func)

    # ---- arithmetic: defined in ops, attached there (one place per op)
