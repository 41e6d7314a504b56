"""How an op is declared, and how applying one stages IR.

An op is declared once, with
  infer(*input_types, **attrs) -> output TensorType   (raise ShapeError)
  forward(em, out, *ins, **attrs)                      emits primitive stmts
and, when it is differentiable, two derivative rules written in staged ops
(lantern_stage ops on Reps, like the user's own code):
  jvp(out, ins, tangents, **attrs) -> the output's tangent (a Rep) or None
      `tangents[i]` is input i's tangent, or None for a zero tangent
  vjp(g, out, ins, needs, **attrs) -> one cotangent per input (or None)
      `g` is the output's cotangent; `needs[i]` says whether input i wants
      one.  A cotangent is a Rep that broadcasts onto the input (a larger
      one is summed down: that undoes broadcasting), or `Placed(rep,
      offset, strides)`: added into those elements of the input only.
Because the rules are staged ops, derivative code is itself differentiable:
forward mode stages `jvp` next to every op applied inside a `jvp` level, and
reverse mode stages `vjp` when the op's backward turn comes (the CPS
`fwd; k(y); bwd`, see autodiff.py), so either can run over code the other
produced.  Fast kernels stay fast: an op whose backward needs a kernel of its
own (conv2d, softmax, nll, gathers) uses an internal op for it, which in turn
declares its rules in the same way (mostly linear: rules of the family).

`t = kernel(...); d += t` and chains of elementwise derivative expressions
become today's code again after the passes: `fold_accumulations` makes the
kernel add into `d` itself (beta = 1), fusion turns an expression chain into
one loop with register temporaries.

Ops that only re-view their input (reshape, a contiguous slice) declare
`view(*input_types, **attrs) -> offset` instead: the output aliases the
input's buffer and its gradient aliases the input's gradient; the tangent
is the same view of the tangent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import ir
from ..staging import Acc, Rep, current, staging_error, user_location
from ..tree import TreeDef, tree_flatten
from ..types import IntArrayType, TensorType, contiguous_strides


class ShapeError(Exception):
    """Raised by shape rules; `apply` adds the op name and the user's line."""


@dataclass
class Placed:
    """A cotangent added into `offset + sum(idx * strides)` of the input's
    gradient (the transpose of a strided read) instead of broadcast onto it."""

    rep: Rep
    offset: int
    strides: tuple


@dataclass
class Op:
    name: str
    infer: Callable
    forward: Callable | None = None
    jvp: Callable | None = None
    vjp: Callable | None = None
    view: Callable | None = None
    # The forward adds into a zeroed output (acc-only kernels); or a function
    # of the attributes saying so.
    zeroed_output: bool | Callable = False

    def __post_init__(self):
        if self.view is None and self.forward is None:
            raise TypeError(f"op {self.name}: needs forward (or view)")
        if (self.jvp is None) != (self.vjp is None):
            raise TypeError(f"op {self.name}: declare both jvp and vjp rules, or neither (not differentiable)")

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None or self.view is not None

    def __call__(self, *inputs, **attrs) -> Rep:
        return apply(self, inputs, attrs)


OPS: dict[str, Op] = {}


def defop(name: str, infer, forward=None, *, jvp=None, vjp=None, view=None, zeroed_output=False) -> Op:
    """Declare an op (see the module docstring); no jvp/vjp: not differentiable."""
    if name in OPS:
        raise TypeError(f"op {name} declared twice")
    op = Op(name, infer, forward, jvp, vjp, view, zeroed_output)
    OPS[name] = op
    return op


# ------------------------------------------------------------- conversions
def as_rep(x, dtype: str | None = None) -> Rep:
    """A Rep for a staged value or a Python scalar (a literal in the IR)."""
    if isinstance(x, Rep):
        return x
    b = current()
    if isinstance(x, bool):
        return Rep(b.const(x, "bool"), None)
    if isinstance(x, int) and dtype != "float32":
        return Rep(b.const(x, "int32"), None)
    if isinstance(x, (int, float)):
        return Rep(b.const(float(x), "float32"), None)
    import numpy as np

    if isinstance(x, np.generic):
        return as_rep(x.item(), dtype)
    if isinstance(x, np.ndarray) or hasattr(x, "lantern_array"):
        return b.capture(x)
    raise staging_error(f"cannot use {type(x).__name__} {x!r} as a staged value")


def staged_leaves(value, what: str) -> tuple[list[Rep], TreeDef]:
    """Flatten a nesting of staged values into Reps that can leave the
    current scope: a construct's results, a compiled function's outputs."""
    leaves, tree = tree_flatten(value)
    b = current()
    reps = []
    for leaf in leaves:
        r = as_rep(leaf)
        if isinstance(r.type, IntArrayType):
            raise staging_error(f"{what}: an IntArray cannot be a {what} value; index it first")
        if r.block is not None and not b.visible(r.block):
            raise staging_error(f"{what}: uses a value from inside another control-flow construct")
        reps.append(r)
    return reps, tree


# ------------------------------------------------------------- applying
@dataclass
class ConsEntry:
    """An applied pure op, for hash-consing (staging.py): its value, and its
    gradient buffer per (reverse level, the operands' gradient buffers)."""

    var: ir.Var
    block: ir.Block
    grads: dict


def apply(op: Op, inputs, attrs) -> Rep:
    b = current()
    reps = [as_rep(x) for x in inputs]
    for r in reps:
        if r.block is not None and not b.visible(r.block):
            raise staging_error(
                f"{op.name}: {r.var.name} is used outside the scope it was computed in "
                "(a value from inside a cond branch, loop body or recursive call "
                "can only leave it as that construct's result)"
            )
    try:
        out_type = op.infer(*[r.type for r in reps], **attrs)
    except ShapeError as e:
        raise staging_error(f"{op.name}: {e}") from None
    rev = b.rev
    accs = [None] * len(reps)
    if rev is not None:
        for k, r in enumerate(reps):
            accs[k] = rev.lookup(r)
            if accs[k] is None and rev.tracked_outside(r):
                rev.reads[id(r)] = r  # an input of this whole value_and_grad, for the levels outside
    needs_grad = out_type.is_float and op.differentiable and any(a is not None for a in accs)
    grad_key = (rev, tuple(accs))

    key = _cons_key(b, op, reps, attrs)
    entry = b.cons_table().get(key) if key is not None else None
    if entry is not None and b.visible(entry.block):
        # The same pure op on the same values: its value again, with its
        # gradient buffer when tracked alike (one value with fan-out, whose
        # backward runs once, after every use's), else a buffer of its own.
        rep = Rep(entry.var, entry.block)
        if needs_grad:
            rep.grad = entry.grads.get(grad_key)
            if rep.grad is None:
                _track(b, op, rep, reps, accs, attrs, user_location())
                entry.grads[grad_key] = rep.grad
    elif op.view is not None:
        offset = op.view(*[r.type for r in reps], **attrs)
        src = reps[0]
        out = b.new_var(out_type, op.name)
        if out.storage == "scalar":  # a 0-d int/bool is held by value: read it
            b.emit(ir.ScalarDef(out, ("load", ir.View(src.var, offset, ()))))
            return Rep(out, b.block)
        b.emit(ir.Alias(out, src.var, offset))
        rep = Rep(out, b.block)
        if needs_grad:
            _track(b, op, rep, reps, accs, attrs, None)
        if key is not None:
            b.cons_table()[key] = ConsEntry(out, b.block, {grad_key: rep.grad} if needs_grad else {})
    else:
        loc = user_location()
        zero = op.zeroed_output(attrs) if callable(op.zeroed_output) else op.zeroed_output
        start = len(b.block.stmts)
        out = b.alloc(out_type, op.name, zero=zero)
        em = Emitter(b, f"{op.name} {loc}", zero)
        op.forward(em, out, *[r.var for r in reps], **attrs)
        rep = Rep(out, b.block)
        if needs_grad:
            _track(b, op, rep, reps, accs, attrs, loc)
        if key is not None and _writes_only_its_own(b.block.stmts[start:], out):
            b.cons_table()[key] = ConsEntry(out, b.block, {grad_key: rep.grad} if needs_grad else {})
    if out_type.is_float and op.differentiable and b.jvp_levels:
        _stage_jvp(b, op, rep, reps, attrs)
    return rep


def _cons_key(b, op: Op, reps: list, attrs):
    """What identifies an application of `op` for hash-consing, or None when
    it must be staged anew (an operand is a gradient buffer, an attribute
    is not a plain constant)."""
    operands = []
    for r in reps:
        k = b.operand_key(r.var)
        if k is None:
            return None
        operands.append(k)
    frozen = _freeze(attrs)
    return None if frozen is None else (op.name, tuple(operands), frozen)


def _freeze(value):
    """A hashable form of an attribute that tells apart what compares equal
    but computes differently (0.0 and -0.0, 1 and 1.0 and True); None for
    anything else (arrays, objects)."""
    if value is None or isinstance(value, str):
        return ("v", value)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, float):
        return ("f", value.hex())
    if isinstance(value, (tuple, list)):
        items = tuple(_freeze(v) for v in value)
        return None if any(i is None for i in items) else (type(value).__name__, items)
    if isinstance(value, dict):
        items = tuple((k, _freeze(v)) for k, v in sorted(value.items()))
        return None if any(i[1] is None for i in items) else ("d", items)
    return None


def _writes_only_its_own(stmts, out) -> bool:
    """The op's forward wrote only its output and its own temporaries - no
    side effect (a random generator advancing its state in place)."""
    own = {id(out)} | {id(s.var) for s in stmts if isinstance(s, ir.Alloc)}
    return all(id(v) in own for s in stmts for v in s.writes())


def _track(b, op: Op, rep: Rep, reps: list, accs: list, attrs, loc) -> None:
    """`rep`'s gradient buffer at the current reverse level: a view's aliases
    its input's; an op's is a fresh buffer whose backward turn stages the
    op's VJP rule and adds the cotangents into the inputs' buffers."""
    if op.view is not None:
        offset = op.view(*[r.type for r in reps], **attrs)
        rep.grad = _alias_acc(b, accs[0], rep.type, offset)
        return
    rep.grad = b.new_acc(rep.type, b.rev, "d_" + rep.var.name + "_")

    def backward():
        if not rep.grad.touched:  # nothing downstream used it: zero cotangent
            return
        g = acc_value(rep.grad)
        cts = op.vjp(g, rep, reps, [a is not None for a in accs], **attrs)
        for acc, ct in zip(accs, cts):
            if acc is not None and ct is not None:
                accumulate(acc, ct, f"d {op.name} {loc}")

    b.push_backward(backward)


def _stage_jvp(b, op: Op, rep: Rep, reps: list, attrs) -> None:
    """The output's tangent at every open forward level its inputs have a
    tangent at.  Level i's rule is staged with only the levels outside it
    open (its tangents carry tangents of those levels: nested forward mode)."""
    levels = list(b.jvp_levels)
    for i, lv in enumerate(levels):
        tans = [r.tangents.get(lv) for r in reps]
        if all(t is None for t in tans):
            continue
        b.jvp_levels = levels[:i]
        try:
            if op.view is not None:
                t = op(tans[0], **attrs) if tans[0] is not None else None
            else:
                t = op.jvp(rep, reps, tans, **attrs)
            if t is not None:
                t = as_rep(t, "float32")
                if t.shape != rep.shape or t.dtype != "float32":
                    t = _OPS_LATE["broadcast_to"](t, shape=rep.shape)
                rep.tangents[lv] = t
        finally:
            b.jvp_levels = levels


_OPS_LATE = OPS  # ops declared in other modules (broadcast_to), looked up when used


def _alias_acc(b, acc: Acc, out_type, offset) -> Acc:
    var = b.new_var(out_type, "d_" + acc.var.name + "_")
    b.emit(ir.Alias(var, acc.var, offset))
    out = Acc(var, acc.level, {lv: _alias_acc(b, t, out_type, offset) for lv, t in acc.tangents.items()})
    out.forbidden = acc.forbidden
    out.parent_acc = acc
    return out


def acc_value(acc: Acc) -> Rep:
    """A gradient buffer read as a value (an op's cotangent, when its turn
    comes), with the tangents of its tangent buffers."""
    # A tangent buffer nothing added into is zero: no tangent at all.
    return Rep(acc.var, None, None, {lv: acc_value(t) for lv, t in acc.tangents.items() if t.touched})


def accumulate(acc: Acc, ct, note: str = "accumulate") -> None:
    """acc += ct (broadcast onto, or summed down into, acc's shape), and the
    same for the tangent buffers: an accumulation whose own derivative is
    an accumulation of the tangents."""
    if acc.forbidden:
        raise staging_error(acc.forbidden)
    touch(acc)
    b = current()
    em = Emitter(b, note)
    if isinstance(ct, Placed):
        r = as_rep(ct.rep, "float32")
        em.map_view(ir.View(acc.var, ct.offset, tuple(ct.strides)), "{0}",
                    ir.View(r.var, 0, contiguous_strides(r.shape)) if r.var.storage == "buf" else r.var,
                    acc=True, shape=r.shape)
        for lv, t in acc.tangents.items():
            tr = r.tangents.get(lv)
            if tr is not None:
                accumulate(t, Placed(tr, ct.offset, ct.strides), note)
        return
    r = as_rep(ct, "float32")
    shape = broadcast_shapes(acc.var.shape, r.shape)
    em.map(acc.var, "{0}", r.var, acc=True, shape=shape)
    for lv, t in acc.tangents.items():
        tr = r.tangents.get(lv)
        if tr is not None:
            accumulate(t, tr, note)


def touch(acc: Acc) -> None:
    """Mark `acc` (and what it aliases) as possibly nonzero."""
    while acc is not None:
        acc.touched = True
        acc = getattr(acc, "parent_acc", None)


# ------------------------------------------------------------- emitting
def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        dims = {s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(f"shapes {', '.join(map(str, shapes))} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def broadcast_view(var: ir.Var, shape: tuple[int, ...], offset: int = 0) -> ir.View:
    """`var` read (or accumulated into) over the index space `shape`, numpy-broadcast."""
    own = var.shape if var.storage in ("buf",) else ()
    strides = contiguous_strides(own)
    lead = len(shape) - len(own)
    out = []
    for d, n in enumerate(shape):
        k = d - lead
        if k < 0 or own[k] == 1 and n != 1:
            out.append(0)
        else:
            out.append(strides[k])
    return ir.View(var, offset, tuple(out))


def operand(x) -> ir.Expr:
    """An expression leaf: a View is loaded, a const Var is a literal."""
    if isinstance(x, ir.View):
        return ("load", x)
    if isinstance(x, tuple):  # already an expression
        return x
    raise TypeError(x)


# Kernels whose sizes are C++ `int` (32-bit BLAS, convolution, pooling): every
# operand must have fewer than 2^31 elements, so that no size product wraps.
INT32_KERNELS = {"gemm", "gemv", "ger", "dot", "outer_log_start", "outer_log_append", "conv2d",
                 "conv2d_backward", "pool_argmax", "avg_pool2d", "avg_pool2d_backward"}
INT32_MAX = 2**31 - 1

# Kernel operands the C++ call takes by value (codegen/kernels.py `val`), where
# a literal is written in place; every other operand is read from memory.
BY_VALUE_OPERANDS = {"take_row": (1,), "take_row_backward": (1,), "store_output": (0,)}


class Emitter:
    """What forward and backward rules use to emit primitive statements."""

    def __init__(self, builder, note: str = "", zeroed_output: bool = False):
        self.b = builder
        self.note = note
        # The op's output was allocated zeroed (Op.zeroed_output): its forward adds into it.
        self.zeroed_output = zeroed_output

    def _emit(self, stmt):
        stmt.loc = self.note
        self.b.emit(stmt)

    def map(self, dst: ir.Var, fmt: str, *srcs, acc: bool = False, shape=None) -> None:
        """dst (op)= fmt.format(*srcs) elementwise over `shape` (default dst's),
        every operand numpy-broadcast to it.  A `dst` smaller than `shape`
        accumulates a reduction: that is how broadcasting is undone."""
        shape = dst.shape if shape is None else tuple(shape)
        expr = compact_expr(self._with_where(fmt), [self.leaf(s, shape) for s in srcs])
        if dst.storage == "scalar":
            self._emit(ir.ScalarDef(dst, expr))
            return
        self._emit(ir.Map(shape, [ir.Assign(broadcast_view(dst, shape), acc, expr)]))

    def map_view(self, dst: ir.View, fmt: str, *srcs, acc: bool = False, shape) -> None:
        """Like `map`, with explicit views (strided copies: transpose, slices)."""
        args = [s if isinstance(s, tuple) else self.leaf(s, shape) for s in srcs]
        self._emit(ir.Map(tuple(shape), [ir.Assign(dst, acc, compact_expr(self._with_where(fmt), args))]))

    def _with_where(self, fmt: str) -> str:
        """`{where}` in a formula is a C string literal "op at file:line", for
        run-time errors that name the user's line (integer division by zero)."""
        if "{where}" not in fmt:
            return fmt
        op, _, loc = self.note.partition(" ")
        text = f"{op} at {loc}" if loc else op
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("{", "\\173").replace("}", "\\175")
        return fmt.replace("{where}", '"' + text + '"')

    def leaf(self, src, shape) -> ir.Expr:
        if isinstance(src, ir.View):
            return ("load", src)
        if isinstance(src, ir.Var):
            if src.storage == "const":
                return ("fmt", literal(src.value, src.dtype), [])
            return ("load", broadcast_view(src, shape))
        if isinstance(src, tuple):
            return src
        raise TypeError(f"not an operand: {src!r}")

    def prim(self, kind: str, outs, ins, acc: bool = False, **attrs) -> None:
        if kind in INT32_KERNELS:
            for v in list(outs) + list(ins):
                if isinstance(v.type, TensorType) and v.size > INT32_MAX:
                    raise staging_error(f"{self.note.removeprefix('d ').partition(' ')[0]}: {v.type} has {v.size} elements; the {kind} "
                                        f"kernel (BLAS / convolution) indexes with int32, at most {INT32_MAX}")
        # A kernel reads memory: a literal operand (a Python number, such as
        # an int class target) is put in a one-element buffer.
        ins = list(ins)
        for k, v in enumerate(ins):
            if v.storage == "const" and k not in BY_VALUE_OPERANDS.get(kind, ()):
                ins[k] = self.tmp(TensorType((1,), v.dtype))
                self.map(ins[k], "{0}", v)
        # A kernel writes memory; a 0-d int/bool result is held by value, so
        # the kernel writes a one-element buffer that is then read into it.
        scalars = [(k, v) for k, v in enumerate(outs) if v.storage == "scalar"]
        outs = list(outs)
        for k, v in scalars:
            outs[k] = self.tmp(TensorType((1,), v.dtype))
        self._emit(ir.Prim(kind, outs, ins, attrs, acc))
        for k, v in scalars:
            self._emit(ir.ScalarDef(v, ("load", ir.View(outs[k], 0, ()))))

    def fill(self, dst: ir.Var, value: float) -> None:
        self.map(dst, literal(value, dst.dtype))

    def tmp(self, type_: TensorType, zero: bool = False) -> ir.Var:
        return self.b.alloc(type_, "s", zero=zero)

    def scalar(self, dtype: str, fmt: str, *srcs) -> ir.Var:
        var = self.b.new_var(TensorType((), dtype), "i")
        self.map(var, fmt, *srcs)
        return var


def compact_expr(fmt: str, args: list) -> ir.Expr:
    """("fmt", fmt, args) keeping only the arguments `fmt` mentions, so that
    an expression never claims to read a buffer it does not."""
    used = [i for i in range(len(args)) if "{" + str(i) + "}" in fmt]
    for new, old in enumerate(used):
        fmt = fmt.replace("{" + str(old) + "}", "{#" + str(new) + "}")
    return ("fmt", fmt.replace("{#", "{"), [args[i] for i in used])


def literal(value, dtype: str) -> str:
    if dtype == "bool":
        return "true" if value else "false"
    if dtype == "int32":
        return str(int(value))
    v = float(value)
    if v != v:
        return "NAN"
    if v in (float("inf"), float("-inf")):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"{v!r}f"
