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


def _softmax_kernel(kind):
    def forward(em, out, x, *, axis):
        em.prim(kind, [out], [x], **_layout(x.shape, axis))

    def backward(em, out, dout, ins, dins, *, axis):
        if dins[0] is not None:
            em.prim(kind + "_backward", [dins[0]], [out, dout], acc=True, **_layout(out.shape, axis))

    return forward, backward


softmax = defop("softmax", _softmax_type, *_softmax_kernel("softmax"))
log_softmax = defop("log_softmax", _softmax_type, *_softmax_kernel("log_softmax"))


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


def _nll_backward(em, out, dout, ins, dins, *, reduction):
    logp, target = ins
    if dins[0] is not None:
        em.prim("nll_backward", [dins[0]], [dout, target], acc=True, **_nll_layout(logp, reduction))


nll_loss = defop("nll_loss", _nll_type, _nll_forward, _nll_backward)
