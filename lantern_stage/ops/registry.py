"""How an op is declared, and how applying one stages IR.

An op is declared once, with
  infer(*input_types, **attrs) -> output TensorType   (raise ShapeError)
  forward(em, out, *ins, **attrs)                      emits primitive stmts
  backward(em, out, dout, ins, dins, **attrs)          emits `+=` into dins
where `dins[i]` is the input's gradient buffer, or None: "no gradient".
Ops that only re-view their input (reshape, a contiguous slice) declare
`view(*input_types, **attrs) -> offset` instead: the output aliases the
input's buffer and its gradient aliases the input's gradient, so they need no
forward or backward code at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import ir
from ..staging import Rep, current, staging_error, user_location
from ..tree import TreeDef, tree_flatten
from ..types import IntArrayType, TensorType, contiguous_strides


class ShapeError(Exception):
    """Raised by shape rules; `apply` adds the op name and the user's line."""


def no_gradient(*_args, **_kwargs):
    """Backward rule of an op whose inputs get no gradient."""


@dataclass
class Op:
    name: str
    infer: Callable
    forward: Callable | None = None
    backward: Callable | None = None
    view: Callable | None = None

    def __post_init__(self):
        if self.view is None and (self.forward is None or self.backward is None):
            raise TypeError(f"op {self.name}: needs forward and backward (or view)")

    def __call__(self, *inputs, **attrs) -> Rep:
        return apply(self, inputs, attrs)


OPS: dict[str, Op] = {}


def defop(name: str, infer, forward=None, backward=None, view=None) -> Op:
    if name in OPS:
        raise TypeError(f"op {name} declared twice")
    op = Op(name, infer, forward, backward, view)
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
    grads = [r.grad for r in reps]
    needs_grad = out_type.is_float and any(g is not None for g in grads)

    if op.view is not None:
        offset = op.view(*[r.type for r in reps], **attrs)
        src = reps[0]
        out = b.new_var(out_type, op.name)
        if out.storage == "scalar":  # a 0-d int/bool is held by value: read it
            b.emit(ir.ScalarDef(out, ("load", ir.View(src.var, offset, ()))))
            return Rep(out, b.block)
        b.emit(ir.Alias(out, src.var, offset))
        rep = Rep(out, b.block)
        if src.grad is not None:
            dout = b.new_var(out_type, "d_" + out.name + "_")
            b.emit(ir.Alias(dout, src.grad, offset))
            rep.grad = dout
        return rep

    loc = user_location()
    out = b.alloc(out_type, op.name)
    em = Emitter(b, f"{op.name} {loc}")
    op.forward(em, out, *[r.var for r in reps], **attrs)
    rep = Rep(out, b.block)
    if needs_grad:
        rep.grad = b.alloc(out_type, "d_" + out.name + "_", zero=True)
        ins = [r.var for r in reps]

        def backward():
            op.backward(Emitter(b, f"d {op.name} {loc}"), out, rep.grad, ins, grads, **attrs)

        b.push_backward(backward)
    return rep


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


class Emitter:
    """What forward and backward rules use to emit primitive statements."""

    def __init__(self, builder, note: str = ""):
        self.b = builder
        self.note = note

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
        # A kernel writes memory; a 0-d int/bool result is held by value, so
        # the kernel writes a one-element buffer that is then read into it.
        scalars = [(k, v) for k, v in enumerate(outs) if v.storage == "scalar"]
        outs = list(outs)
        for k, v in scalars:
            outs[k] = self.tmp(TensorType((1,), v.dtype))
        self._emit(ir.Prim(kind, outs, list(ins), attrs, acc))
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
