"""Elementwise ops with numpy broadcasting: one line each.

The forward formula is a C++ expression in `{x}` (unary) or `{a}`, `{b}`
(the math functions `lt::exp_f`, `lt::tanh_f`, ... live in
cpp_runtime/math.h).  The derivative is ONE partial-derivative expression
written in staged ops: `lambda x, y: 1 - y * y` (unary, y the output) or
`lambda a, b, y: (b, a)` (binary: both partials; a Python number for a
constant, None where there is no derivative).  From it: the JVP is
`sum(t_i * d_i)` and the VJP `g * d_i`, summed down onto a broadcast input;
after fusion `dx += g * (1 - y*y)` is again one loop, and its own derivative
is just the derivative of those staged ops.
"""
from __future__ import annotations

from .registry import ShapeError, TensorType, broadcast_shapes, defop


def _positional(fmt: str, names: str) -> str:
    for i, n in enumerate(names):
        fmt = fmt.replace("{" + n + "}", "{" + str(i) + "}")
    return fmt


def _float_type(t: TensorType) -> TensorType:
    if t.dtype == "bool":
        raise ShapeError("expects a number, got a bool mask")
    return TensorType(t.shape, "float32")


def _times(t, d):
    """t * d, folding constant partials (1: t itself, -1: -t)."""
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        if d == 1:
            return t
        if d == -1:
            return neg(t)
        return mul(t, float(d))
    return mul(t, d)


def _sum_terms(terms):
    out = None
    for t in terms:
        out = t if out is None else add(out, t)
    return out


def elementwise(name: str, forward: str, derivative):
    """A unary op y = f(x); `derivative(x, y)` is dy/dx in staged ops (or a
    number); None: the op is not differentiable (integer-valued)."""
    fwd = _positional(forward, "x")

    def infer(x, **_):
        return _float_type(x)

    def emit_forward(em, out, x):
        em.map(out, fwd, x)

    if derivative is None:
        return defop(name, infer, emit_forward)

    def jvp(out, ins, tans):
        return _times(tans[0], derivative(ins[0], out))

    def vjp(g, out, ins, needs):
        return [_times(g, derivative(ins[0], out))]

    return defop(name, infer, emit_forward, jvp=jvp, vjp=vjp)


def _arith_type(a: TensorType, b: TensorType) -> TensorType:
    shape = broadcast_shapes(a.shape, b.shape)
    if "bool" in (a.dtype, b.dtype) and a.dtype != b.dtype and "float32" not in (a.dtype, b.dtype):
        dtype = "int32"
    else:
        dtype = "float32" if "float32" in (a.dtype, b.dtype) else "int32"
    return TensorType(shape, dtype)


def binary(name: str, forward: str, derivative=None, result=_arith_type):
    """A broadcasting binary op; `derivative(a, b, y)` gives (da, db), the
    partials in staged ops (a number, or None: no derivative for that side);
    `derivative=None`: not differentiable (comparisons, integer ops)."""
    fwd = _positional(forward, "ab")

    def infer(a, b, **_):
        return result(a, b)

    def emit_forward(em, out, a, b):
        em.map(out, fwd, a, b)

    if derivative is None:
        return defop(name, infer, emit_forward)

    def jvp(out, ins, tans):
        partials = derivative(ins[0], ins[1], out)
        return _sum_terms(_times(t, d) for t, d in zip(tans, partials) if t is not None and d is not None)

    def vjp(g, out, ins, needs):
        partials = derivative(ins[0], ins[1], out)
        return [_times(g, d) if need and d is not None else None for need, d in zip(needs, partials)]

    return defop(name, infer, emit_forward, jvp=jvp, vjp=vjp)


def _compare_type(a: TensorType, b: TensorType) -> TensorType:
    return TensorType(broadcast_shapes(a.shape, b.shape), "bool")


def _float_result(a: TensorType, b: TensorType) -> TensorType:
    return TensorType(broadcast_shapes(a.shape, b.shape), "float32")


add = binary("add", "{a} + {b}", lambda a, b, y: (1, 1))
sub = binary("sub", "{a} - {b}", lambda a, b, y: (1, -1))
mul = binary("mul", "{a} * {b}", lambda a, b, y: (b, a))
div = binary("div", "(float)({a}) / (float)({b})", lambda a, b, y: (1.0 / b, neg(y) / b), result=_float_result)
# At a tie each side gets half the gradient, as in PyTorch (and central differences);
# at a NaN (the result is NaN) both sides get all of it, as in PyTorch.
maximum = binary("maximum", "lt::max_f({a}, {b})",
                 lambda a, b, y: (_share(a < b, a == b), _share(b < a, a == b)))
minimum = binary("minimum", "lt::min_f({a}, {b})",
                 lambda a, b, y: (_share(a > b, a == b), _share(b > a, a == b)))
# `{where}`: the op and the user's file:line, for ZeroDivisionError at run time.
floordiv = binary("floordiv", "lt::floordiv({a}, {b}, {where})")
mod = binary("mod", "lt::mod({a}, {b}, {where})")

less = binary("less", "{a} < {b}", result=_compare_type)
less_equal = binary("less_equal", "{a} <= {b}", result=_compare_type)
greater = binary("greater", "{a} > {b}", result=_compare_type)
greater_equal = binary("greater_equal", "{a} >= {b}", result=_compare_type)
equal = binary("equal", "{a} == {b}", result=_compare_type)
not_equal = binary("not_equal", "{a} != {b}", result=_compare_type)
logical_and = binary("logical_and", "({a} && {b})", result=_compare_type)
logical_or = binary("logical_or", "({a} || {b})", result=_compare_type)


def _share(loses, ties):
    """0 where this side loses, 1/2 at a tie, else 1 (wins, or a NaN): a float mask."""
    return where(loses, 0.0, where(ties, 0.5, 1.0))


neg = elementwise("neg", "-{x}", lambda x, y: -1)
exp = elementwise("exp", "lt::exp_f({x})", lambda x, y: y)
log = elementwise("log", "lt::log_f({x})", lambda x, y: 1.0 / x)
sqrt = elementwise("sqrt", "lt::sqrt_f({x})", lambda x, y: 0.5 / y)
tanh = elementwise("tanh", "lt::tanh_f({x})", lambda x, y: 1.0 - y * y)
# A fused kernel rather than 1/(1+exp(-x)) over primitives: one pass, and its
# derivative y*(1-y) needs no extra buffers.
sigmoid = elementwise("sigmoid", "lt::sigmoid_f({x})", lambda x, y: y * (1.0 - y))
relu = elementwise("relu", "lt::max_f({x}, 0.0f)", lambda x, y: where(x <= 0.0, 0.0, 1.0))  # NaN: g, as PyTorch
erf = elementwise("erf", "lt::erf_f({x})", lambda x, y: 1.1283791670955126 * exp(-(x * x)))
# Exact GELU as one op rather than x/2 (1 + erf(x/sqrt 2)) over primitives: the
# backward reads x alone, d/dx = Phi(x) + x phi(x), where the composite kept
# three intermediates of x's size from the forward pass for it.
gelu = elementwise("gelu", "lt::gelu_f({x})",
                   lambda x, y: 0.5 * (erf(x * 0.7071067811865476) + 1.0) + x * (0.3989422804014327 * exp(-(x * x) * 0.5)))
sin = elementwise("sin", "lt::sin_f({x})", lambda x, y: cos(x))
cos = elementwise("cos", "lt::cos_f({x})", lambda x, y: -sin(x))
log1p = elementwise("log1p", "lt::log1p_f({x})", lambda x, y: 1.0 / (1.0 + x))
abs_ = elementwise("abs", "lt::abs_f({x})", lambda x, y: where(x > 0.0, 1.0, where(x < 0.0, -1.0, 0.0)))


def _pow_type(x, *, exponent):
    return _float_type(x)


def _pow_forward(em, out, x, *, exponent):
    em.map(out, _pow_expr("{0}", exponent), x)


def _pow_partial(x, exponent):
    """d/dx x**e = e * x**(e-1), in staged ops (a number when constant)."""
    if exponent == 0:
        return None
    if exponent == 1:
        return 1
    return mul(pow_(x, exponent=exponent - 1), float(exponent))


def _pow_jvp(out, ins, tans, *, exponent):
    d = _pow_partial(ins[0], exponent)
    return None if d is None else _times(tans[0], d)


def _pow_vjp(g, out, ins, needs, *, exponent):
    d = _pow_partial(ins[0], exponent)
    return [None if d is None else _times(g, d)]


def _pow_expr(x: str, exponent: float) -> str:
    """x**exponent for a constant exponent; small integer powers as products."""
    if exponent == 0:
        return "1.0f"
    if float(exponent).is_integer() and 1 <= exponent <= 4:
        return " * ".join([x] * int(exponent))
    if exponent == 0.5:
        return f"lt::sqrt_f({x})"
    if exponent == -1:
        return f"1.0f / {x}"
    return f"lt::pow_f({x}, {float(exponent)!r}f)"


pow_ = defop("pow", _pow_type, _pow_forward, jvp=_pow_jvp, vjp=_pow_vjp)


def _where_type(c, a, b):
    if c.dtype != "bool":
        raise ShapeError(f"condition must be a bool mask (a comparison), got {c}")
    shape = broadcast_shapes(c.shape, a.shape, b.shape)
    return TensorType(shape, _arith_type(a, b).dtype)


def _where_forward(em, out, c, a, b):
    em.map(out, "({0} ? {1} : {2})", c, a, b)


def _where_jvp(out, ins, tans):
    c = ins[0]
    return where(c, 0.0 if tans[1] is None else tans[1], 0.0 if tans[2] is None else tans[2])


def _where_vjp(g, out, ins, needs):
    c = ins[0]
    return [None, where(c, g, 0.0) if needs[1] else None, where(c, 0.0, g) if needs[2] else None]


where = defop("where", _where_type, _where_forward, jvp=_where_jvp, vjp=_where_vjp)


def _cast_type(x, *, dtype):
    return TensorType(x.shape, dtype)


def _cast_forward(em, out, x, *, dtype):
    from ..types import CPP_TYPE

    em.map(out, f"static_cast<{CPP_TYPE[dtype]}>({{0}})", x)


def _cast_jvp(out, ins, tans, *, dtype):
    return tans[0] if dtype == "float32" else None


def _cast_vjp(g, out, ins, needs, *, dtype):
    return [g if dtype == "float32" else None]


cast = defop("cast", _cast_type, _cast_forward, jvp=_cast_jvp, vjp=_cast_vjp)


def _broadcast_type(x, *, shape):
    if broadcast_shapes(x.shape, tuple(shape)) != tuple(shape):
        raise ShapeError(f"cannot broadcast {x} to {tuple(shape)}")
    return TensorType(tuple(shape), x.dtype)


def _broadcast_forward(em, out, x, *, shape):
    em.map(out, "{0}", x)


# x numpy-broadcast to `shape` (a copy; after fusion usually a register).
# Its cotangent is g itself: accumulating it sums it down onto x.
broadcast_to = defop("broadcast_to", _broadcast_type, _broadcast_forward,
                     jvp=lambda out, ins, tans, *, shape: broadcast_to(tans[0], shape=shape),
                     vjp=lambda g, out, ins, needs, *, shape: [g])
