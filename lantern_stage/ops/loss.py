"""Softmax, log-softmax and negative log-likelihood, as fused kernels: each is
one numerically stable pass, and its backward needs only its own output.
(`cross_entropy` and `mse_loss` are compositions, in `lantern_stage.api`.)"""
from __future__ import annotations

from math import prod

from .registry import ShapeError, TensorType, defop


def _softmax_type(x, *, axis):
    if x.dtype != "float32":
        raise ShapeError(f"needs float32, got {x}")
    if not x.shape or not -len(x.shape) <= axis < len(x.shape):
        raise ShapeError(f"axis {axis} out of range for {x}")
    return x


def _layout(shape, axis):
    axis %= len(shape)
    return dict(outer=prod(shape[:axis]), n=shape[axis], inner=prod(shape[axis + 1:]))


def _softmax_forward(kind):
    def forward(em, out, x, *, axis):
        em.prim(kind, [out], [x], **_layout(x.shape, axis))

    return forward


def _row_sum(x, axis):
    from .reduce import sum_axis

    return sum_axis(x, axis=axis, keepdims=True)


# softmax: y = softmax(x);  vjp  dx = sb(y, g) = y * (g - sum(g * y))
def _softmax_jvp(out, ins, tans, *, axis):
    return softmax_t(out, tans[0], axis=axis)  # the JVP is the same linear map


softmax = defop("softmax", _softmax_type, _softmax_forward("softmax"), jvp=_softmax_jvp,
                vjp=lambda g, out, ins, needs, *, axis: [softmax_t(out, g, axis=axis)])


def _sb_jvp(out, ins, tans, *, axis):
    from .elementwise import mul, sub
    from .linalg import _add

    y, g = ins
    ty, tg = tans
    a = None if tg is None else softmax_t(y, tg, axis=axis)
    b = None
    if ty is not None:  # d/dy [y (g - S(g y))] . ty = ty (g - S(g y)) - y S(g ty)
        b = sub(mul(ty, sub(g, _row_sum(mul(g, y), axis))), mul(y, _row_sum(mul(g, ty), axis)))
    return _add(a, b)


def _sb_vjp(c, out, ins, needs, *, axis):
    from .elementwise import mul, sub

    y, g = ins
    dy = dg = None
    if needs[0]:  # c (g - S(g y)) - g S(y c)
        dy = sub(mul(c, sub(g, _row_sum(mul(g, y), axis))), mul(g, _row_sum(mul(y, c), axis)))
    if needs[1]:  # self-adjoint in g
        dg = softmax_t(y, c, axis=axis)
    return [dy, dg]


def _t_type(y, g, *, axis):
    return y


def _t_forward(kind):
    def forward(em, out, y, g, *, axis):
        em.prim(kind, [out], [y, g], acc=True, **_layout(y.shape, axis))

    return forward


# y * (g - sum(g * y)): softmax's backward kernel, as an op.
softmax_t = defop("softmax_t", _t_type, _t_forward("softmax_backward"), zeroed_output=True,
                  jvp=_sb_jvp, vjp=_sb_vjp)


# log_softmax: y = log_softmax(x);  vjp  dx = lsb(y, g) = g - exp(y) * sum(g)
def _lsb_jvp(out, ins, tans, *, axis):
    from .elementwise import exp, mul, neg
    from .linalg import _add

    y, g = ins
    ty, tg = tans
    a = None if tg is None else log_softmax_t(y, tg, axis=axis)
    b = None if ty is None else neg(mul(mul(exp(y), ty), _row_sum(g, axis)))
    return _add(a, b)


def _lsb_vjp(c, out, ins, needs, *, axis):
    from .elementwise import exp, mul, neg, sub

    y, g = ins
    e = exp(y)
    dy = neg(mul(mul(e, c), _row_sum(g, axis))) if needs[0] else None
    dg = sub(c, _row_sum(mul(e, c), axis)) if needs[1] else None
    return [dy, dg]


log_softmax_t = defop("log_softmax_t", _t_type, _t_forward("log_softmax_backward"), zeroed_output=True,
                      jvp=_lsb_jvp, vjp=_lsb_vjp)
def _log_softmax_jvp(out, ins, tans, *, axis):
    # t - sum(softmax * t): the transpose of the vjp's g - softmax * sum(g)
    from .elementwise import exp, mul, sub

    return sub(tans[0], _row_sum(mul(exp(out), tans[0]), axis))


log_softmax = defop("log_softmax", _softmax_type, _softmax_forward("log_softmax"), jvp=_log_softmax_jvp,
                    vjp=lambda g, out, ins, needs, *, axis: [log_softmax_t(out, g, axis=axis)])


def _nll_type(logp, target, *, reduction):
    if reduction not in ("mean", "sum"):
        raise ShapeError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logp.dtype != "float32":
        raise ShapeError(f"log-probabilities must be float32, got {logp}")
    if target.dtype != "int32":
        raise ShapeError(f"targets must be int32 class indices, got {target}")
    if len(logp.shape) == 2 and target.shape == (logp.shape[0],):
        return TensorType(())
    if len(logp.shape) == 1 and target.shape == ():
        return TensorType(())
    raise ShapeError(f"expected input [N, C] with target [N], or [C] with a 0-d target; got {logp} and {target}")


def _nll_layout(logp, reduction):
    n = logp.shape[0] if len(logp.shape) == 2 else 1
    c = logp.shape[-1]
    return dict(N=n, C=c, scale=(1.0 / n if reduction == "mean" else 1.0))


def _nll_forward(em, out, logp, target, *, reduction):
    em.prim("nll", [out], [logp, target], **_nll_layout(logp, reduction))


def _nll_t_type(g, target, *, shape, reduction):
    return TensorType(tuple(shape))


def _nll_t_forward(em, out, g, target, *, shape, reduction):
    em.prim("nll_backward", [out], [g, target], acc=True, **_nll_layout(out, reduction))


# nll is linear in logp: its vjp is the scatter nll_t(g) (the backward kernel),
# and nll is nll_t's transpose.
nll_t = defop("nll_t", _nll_t_type, _nll_t_forward, zeroed_output=True,
              jvp=lambda out, ins, tans, **at: nll_t(tans[0], ins[1], **at),
              vjp=lambda c, out, ins, needs, *, shape, reduction: [nll_loss(c, ins[1], reduction=reduction), None])
nll_loss = defop("nll_loss", _nll_type, _nll_forward,
                 jvp=lambda out, ins, tans, *, reduction: nll_loss(tans[0], ins[1], reduction=reduction),
                 vjp=lambda g, out, ins, needs, *, reduction: [
                     nll_t(g, ins[1], shape=ins[0].shape, reduction=reduction), None])
