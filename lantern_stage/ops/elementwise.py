"""Elementwise ops with numpy broadcasting: one line each.

Formulas are C++ expressions.  Forward: `{x}` (unary) or `{a}`, `{b}`;
backward: also `{g}` (the output's gradient) and `{y}` (the output).  The
math functions `lt::exp_f`, `lt::tanh_f`, ... live in cpp_runtime/math.h.
"""
from __future__ import annotations

from .registry import ShapeError, TensorType, broadcast_shapes, defop, no_gradient


def _positional(fmt: str, names: str) -> str:
    for i, n in enumerate(names):
        fmt = fmt.replace("{" + n + "}", "{" + str(i) + "}")
    return fmt


def _float_type(t: TensorType) -> TensorType:
    if t.dtype == "bool":
        raise ShapeError("expects a number, got a bool mask")
    return TensorType(t.shape, "float32")


def elementwise(name: str, forward: str, derivative: str | None):
    """A unary op y = f(x); `derivative` gives dx += ... in terms of {g}, {x}, {y};
    None: the op is not differentiable (integer-valued)."""
    fwd = _positional(forward, "x")
    grad = _positional(derivative, "gxy") if derivative else None

    def infer(x, **_):
        return _float_type(x)

    def emit_forward(em, out, x):
        em.map(out, fwd, x)

    def emit_backward(em, out, dout, ins, dins):
        if dins[0] is not None:
            em.map(dins[0], grad, dout, ins[0], out, acc=True, shape=out.shape)

    return defop(name, infer, emit_forward, emit_backward if grad else no_gradient)


def _arith_type(a: TensorType, b: TensorType) -> TensorType:
    shape = broadcast_shapes(a.shape, b.shape)
    if "bool" in (a.dtype, b.dtype) and a.dtype != b.dtype and "float32" not in (a.dtype, b.dtype):
        dtype = "int32"
    else:
        dtype = "float32" if "float32" in (a.dtype, b.dtype) else "int32"
    return TensorType(shape, dtype)


def binary(name: str, forward: str, grad_a: str | None, grad_b: str | None, result=_arith_type):
    """A broadcasting binary op; gradients in terms of {g}, {a}, {b}, {y}."""
    fwd = _positional(forward, "ab")
    grads = [_positional(g, "gaby") if g else None for g in (grad_a, grad_b)]

    def infer(a, b, **_):
        return result(a, b)

    def emit_forward(em, out, a, b):
        em.map(out, fwd, a, b)

    def emit_backward(em, out, dout, ins, dins):
        for din, g in zip(dins, grads):
            if din is not None and g is not None:
                em.map(din, g, dout, ins[0], ins[1], out, acc=True, shape=out.shape)

    return defop(name, infer, emit_forward, emit_backward)


def _compare_type(a: TensorType, b: TensorType) -> TensorType:
    return TensorType(broadcast_shapes(a.shape, b.shape), "bool")


def _float_result(a: TensorType, b: TensorType) -> TensorType:
    return TensorType(broadcast_shapes(a.shape, b.shape), "float32")


add = binary("add", "{a} + {b}", "{g}", "{g}")
sub = binary("sub", "{a} - {b}", "{g}", "-{g}")
mul = binary("mul", "{a} * {b}", "{g} * {b}", "{g} * {a}")
div = binary("div", "(float)({a}) / (float)({b})", "{g} / {b}", "-{g} * {y} / {b}", result=_float_result)
# At a tie each side gets half the gradient, as in PyTorch (and central differences);
# at a NaN (the result is NaN) both sides get all of it, as in PyTorch.
maximum = binary("maximum", "lt::max_f({a}, {b})", "({a} < {b} ? 0.0f : {a} == {b} ? 0.5f * {g} : {g})",
                 "({b} < {a} ? 0.0f : {a} == {b} ? 0.5f * {g} : {g})")
minimum = binary("minimum", "lt::min_f({a}, {b})", "({a} > {b} ? 0.0f : {a} == {b} ? 0.5f * {g} : {g})",
                 "({b} > {a} ? 0.0f : {a} == {b} ? 0.5f * {g} : {g})")
floordiv = binary("floordiv", "lt::floordiv({a}, {b}, {where})", None, None)
mod = binary("mod", "lt::mod({a}, {b}, {where})", None, None)

less = binary("less", "{a} < {b}", None, None, result=_compare_type)
less_equal = binary("less_equal", "{a} <= {b}", None, None, result=_compare_type)
greater = binary("greater", "{a} > {b}", None, None, result=_compare_type)
greater_equal = binary("greater_equal", "{a} >= {b}", None, None, result=_compare_type)
equal = binary("equal", "{a} == {b}", None, None, result=_compare_type)
not_equal = binary("not_equal", "{a} != {b}", None, None, result=_compare_type)
logical_and = binary("logical_and", "({a} && {b})", None, None, result=_compare_type)
logical_or = binary("logical_or", "({a} || {b})", None, None, result=_compare_type)

neg = elementwise("neg", "-{x}", "-{g}")
exp = elementwise("exp", "lt::exp_f({x})", "{g} * {y}")
log = elementwise("log", "lt::log_f({x})", "{g} / {x}")
sqrt = elementwise("sqrt", "lt::sqrt_f({x})", "{g} * 0.5f / {y}")
tanh = elementwise("tanh", "lt::tanh_f({x})", "{g} * (1.0f - {y} * {y})")
# A fused kernel rather than 1/(1+exp(-x)) over primitives: one pass, and its
# derivative y*(1-y) needs no extra buffers.
sigmoid = elementwise("sigmoid", "lt::sigmoid_f({x})", "{g} * {y} * (1.0f - {y})")
relu = elementwise("relu", "lt::max_f({x}, 0.0f)", "({x} <= 0.0f ? 0.0f : {g})")  # NaN: g, as PyTorch
abs_ = elementwise("abs", "lt::abs_f({x})", "({x} > 0.0f ? {g} : ({x} < 0.0f ? -{g} : 0.0f))")


def _pow_type(x, *, exponent):
    return _float_type(x)


def _pow_forward(em, out, x, *, exponent):
    em.map(out, _pow_expr("{0}", exponent), x)


def _pow_backward(em, out, dout, ins, dins, *, exponent):
    if dins[0] is not None:
        deriv = _pow_expr("{1}", exponent - 1)
        em.map(dins[0], f"{{0}} * {float(exponent)!r}f * ({deriv})", dout, ins[0], acc=True, shape=out.shape)


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


pow_ = defop("pow", _pow_type, _pow_forward, _pow_backward)


def _where_type(c, a, b):
    if c.dtype != "bool":
        raise ShapeError(f"condition must be a bool mask (a comparison), got {c}")
    shape = broadcast_shapes(c.shape, a.shape, b.shape)
    return TensorType(shape, _arith_type(a, b).dtype)


def _where_forward(em, out, c, a, b):
    em.map(out, "({0} ? {1} : {2})", c, a, b)


def _where_backward(em, out, dout, ins, dins):
    c = ins[0]
    if dins[1] is not None:
        em.map(dins[1], "({1} ? {0} : 0.0f)", dout, c, acc=True, shape=out.shape)
    if dins[2] is not None:
        em.map(dins[2], "({1} ? 0.0f : {0})", dout, c, acc=True, shape=out.shape)


where = defop("where", _where_type, _where_forward, _where_backward)


def _cast_type(x, *, dtype):
    return TensorType(x.shape, dtype)


def _cast_forward(em, out, x, *, dtype):
    from ..types import CPP_TYPE

    em.map(out, f"static_cast<{CPP_TYPE[dtype]}>({{0}})", x)


def _cast_backward(em, out, dout, ins, dins, *, dtype):
    if dins[0] is not None and dtype == "float32":
        em.map(dins[0], "{0}", dout, acc=True, shape=out.shape)


cast = defop("cast", _cast_type, _cast_forward, _cast_backward)
