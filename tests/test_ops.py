"""Every user-facing op, driven by one table.

Each row is an expression `fn(m, *inputs)` written once against a namespace
`m`: `lantern_stage` itself when staged, `NumpyRef` (the float64 reference
implementation) and `TorchRef` (PyTorch, float64).  For every row, one test
checks the op's value and the value and gradient of

    loss = sum(fn(m, *inputs) * w)        (w: fixed random weights)

with respect to every float input:
  * against the numpy float64 reference value,
  * against central finite differences of the float64 reference (eps 1e-6),
  * against PyTorch autograd in float64, when torch is importable.

Tolerances: lantern computes in float32, the references in float64, so
values and gradients must agree to rtol=1e-4, atol=1e-5 (inputs are O(1) by
construction).  Masks and integer results must agree exactly, dtype included.

Compiling is the slow part (one g++ run per module), so the rows are compiled
in groups of GROUP_SIZE: one staged function takes the inputs of ~10 rows and
returns all their values and gradients; each group is compiled once per test
session (and found in the on-disk cache on re-runs).
"""
from __future__ import annotations

import math
import re
import sys
import zlib
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest

import lantern_stage as lt

try:
    import torch
    import torch.nn.functional as torch_F
except ImportError:  # the torch comparison is skipped, the rest still runs
    torch = None

RTOL, ATOL = 1e-4, 1e-5
FD_EPS = 1e-6
GROUP_SIZE = 10


# ---------------------------------------------------------------- references
def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


class NumpyRef:
    """The float64 reference implementation, with lantern_stage's signatures."""

    exp, log, sqrt, tanh, abs = np.exp, np.log, np.sqrt, np.tanh, np.abs
    maximum, minimum, where, matmul, einsum = np.maximum, np.minimum, np.where, np.matmul, np.einsum

    @staticmethod
    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    @staticmethod
    def relu(x):
        return np.maximum(x, 0.0)

    @staticmethod
    def sum(x, axis=None, keepdims=False):
        return np.sum(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def mean(x, axis=None, keepdims=False):
        return np.mean(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x, axis=None, keepdims=False):
        return np.max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def min(x, axis=None, keepdims=False):
        return np.min(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def argmax(x, axis=None, keepdims=False):
        return np.argmax(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def transpose(x, axes=None):
        return np.transpose(x, axes)

    @staticmethod
    def concat(xs, axis=0):
        return np.concatenate(xs, axis)

    @staticmethod
    def stack(xs, axis=0):
        return np.stack(xs, axis)

    @staticmethod
    def zeros(*shape):
        return np.zeros(_shape(shape))

    @staticmethod
    def ones(*shape):
        return np.ones(_shape(shape))

    @staticmethod
    def full(shape, value):
        return np.full(_shape((shape,)), float(value))

    @staticmethod
    def log_softmax(x, axis=-1):
        m = np.max(x, axis=axis, keepdims=True)
        return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))

    @staticmethod
    def softmax(x, axis=-1):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)

    @staticmethod
    def nll_loss(logp, target, reduction="mean"):
        if logp.ndim == 1:
            picked = -logp[int(target)]
            return picked
        picked = -logp[np.arange(logp.shape[0]), target]
        return picked.mean() if reduction == "mean" else picked.sum()

    @staticmethod
    def cross_entropy(logits, target, reduction="mean"):
        return NumpyRef.nll_loss(NumpyRef.log_softmax(logits, -1), target, reduction)

    @staticmethod
    def mse_loss(a, b, reduction="mean"):
        sq = (a - b) ** 2
        return sq.mean() if reduction == "mean" else sq.sum()


    erf = staticmethod(np.vectorize(math.erf, otypes=[np.float64]))
    sin, cos, log1p = np.sin, np.cos, np.log1p

    @staticmethod
    def gelu(x, approximate="none"):
        if approximate == "tanh":
            return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + NumpyRef.erf(x / math.sqrt(2)))

    @staticmethod
    def silu(x):
        return x / (1.0 + np.exp(-x))

    @staticmethod
    def softplus(x, beta=1.0, threshold=20.0):
        with np.errstate(over="ignore"):
            return np.where(beta * x > threshold, x, np.log1p(np.exp(beta * x)) / beta)

    @staticmethod
    def var(x, axis=None, correction=1, keepdims=False, unbiased=None):
        if unbiased is not None:
            correction = int(unbiased)
        return np.var(x, axis=axis, ddof=correction, keepdims=keepdims)

    @staticmethod
    def std(x, axis=None, correction=1, keepdims=False, unbiased=None):
        return np.sqrt(NumpyRef.var(x, axis, correction, keepdims, unbiased))

    @staticmethod
    def logsumexp(x, axis=None, keepdims=False):
        m = np.max(x, axis=axis, keepdims=True)
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
        return out if keepdims else np.squeeze(out, axis=axis)

    @staticmethod
    def arange(*args, dtype=None):
        out = np.arange(*args)
        return out.astype(np.float64) if dtype == "float32" else out

    @staticmethod
    def tril(x, diagonal=0):
        return np.tril(x, diagonal)

    @staticmethod
    def triu(x, diagonal=0):
        return np.triu(x, diagonal)

    @staticmethod
    def one_hot(idx, num_classes, dtype="int32"):
        return np.eye(num_classes, dtype=np.float64 if dtype == "float32" else np.int64)[idx]

    @staticmethod
    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
        y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
        y = y if weight is None else y * weight
        return y if bias is None else y + bias

    @staticmethod
    def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        axes = (0,) + tuple(range(2, x.ndim))
        spread = (-1,) + (1,) * (x.ndim - 2)
        if training:
            mu, v = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
        else:
            mu, v = running_mean.reshape(spread), running_var.reshape(spread)
        y = (x - mu) / np.sqrt(v + eps)
        y = y if weight is None else y * weight.reshape(spread)
        return y if bias is None else y + bias.reshape(spread)


class TorchRef:
    """PyTorch (float64) under lantern_stage's signatures."""

    @staticmethod
    def _t(x, like):
        return x if torch.is_tensor(x) else torch.tensor(x, dtype=like.dtype)

    exp = staticmethod(lambda x: torch.exp(x))
    log = staticmethod(lambda x: torch.log(x))
    sqrt = staticmethod(lambda x: torch.sqrt(x))
    tanh = staticmethod(lambda x: torch.tanh(x))
    abs = staticmethod(lambda x: torch.abs(x))
    sigmoid = staticmethod(lambda x: torch.sigmoid(x))
    relu = staticmethod(lambda x: torch.relu(x))
    matmul = staticmethod(lambda a, b: torch.matmul(a, b))
    einsum = staticmethod(lambda subscripts, *xs: torch.einsum(subscripts, *xs))

    @staticmethod
    def maximum(a, b):
        return torch.maximum(TorchRef._t(a, b), TorchRef._t(b, a))

    @staticmethod
    def minimum(a, b):
        return torch.minimum(TorchRef._t(a, b), TorchRef._t(b, a))

    @staticmethod
    def where(c, a, b):
        return torch.where(c, a, b)

    @staticmethod
    def _dims(x, axis):
        return tuple(range(x.dim())) if axis is None else axis

    @staticmethod
    def sum(x, axis=None, keepdims=False):
        return torch.sum(x, dim=TorchRef._dims(x, axis), keepdim=keepdims)

    @staticmethod
    def mean(x, axis=None, keepdims=False):
        x = x if x.is_floating_point() else x.double()  # numpy's mean of a mask or ints
        return torch.mean(x, dim=TorchRef._dims(x, axis), keepdim=keepdims)

    @staticmethod
    def max(x, axis=None, keepdims=False):
        return torch.amax(x, dim=TorchRef._dims(x, axis), keepdim=keepdims)

    @staticmethod
    def min(x, axis=None, keepdims=False):
        return torch.amin(x, dim=TorchRef._dims(x, axis), keepdim=keepdims)

    @staticmethod
    def argmax(x, axis=None, keepdims=False):
        out = torch.argmax(x, dim=axis, keepdim=keepdims)
        return out.reshape((1,) * x.dim()) if axis is None and keepdims else out

    @staticmethod
    def transpose(x, axes=None):
        return x.permute(tuple(reversed(range(x.dim()))) if axes is None else axes)

    @staticmethod
    def concat(xs, axis=0):
        return torch.cat(xs, dim=axis)

    @staticmethod
    def stack(xs, axis=0):
        return torch.stack(xs, dim=axis)

    @staticmethod
    def zeros(*shape):
        return torch.zeros(_shape(shape), dtype=torch.float64)

    @staticmethod
    def ones(*shape):
        return torch.ones(_shape(shape), dtype=torch.float64)

    @staticmethod
    def full(shape, value):
        return torch.full(_shape((shape,)), float(value), dtype=torch.float64)

    @staticmethod
    def log_softmax(x, axis=-1):
        return torch.log_softmax(x, dim=axis)

    @staticmethod
    def softmax(x, axis=-1):
        return torch.softmax(x, dim=axis)

    @staticmethod
    def nll_loss(logp, target, reduction="mean"):
        return torch_F.nll_loss(logp, target.long(), reduction=reduction)

    @staticmethod
    def cross_entropy(logits, target, reduction="mean"):
        return torch_F.cross_entropy(logits, target.long(), reduction=reduction)

    @staticmethod
    def mse_loss(a, b, reduction="mean"):
        return torch_F.mse_loss(a, b, reduction=reduction)

    erf = staticmethod(lambda x: torch.erf(x))
    sin = staticmethod(lambda x: torch.sin(x))
    cos = staticmethod(lambda x: torch.cos(x))
    log1p = staticmethod(lambda x: torch.log1p(x))
    silu = staticmethod(lambda x: torch_F.silu(x))
    tril = staticmethod(lambda x, diagonal=0: torch.tril(x, diagonal))
    triu = staticmethod(lambda x, diagonal=0: torch.triu(x, diagonal))

    @staticmethod
    def gelu(x, approximate="none"):
        return torch_F.gelu(x, approximate=approximate)

    @staticmethod
    def softplus(x, beta=1.0, threshold=20.0):
        return torch_F.softplus(x, beta=beta, threshold=threshold)

    @staticmethod
    def var(x, axis=None, correction=1, keepdims=False, unbiased=None):
        if unbiased is not None:
            correction = int(unbiased)
        return torch.var(x, dim=axis, correction=correction, keepdim=keepdims)

    @staticmethod
    def std(x, axis=None, correction=1, keepdims=False, unbiased=None):
        return torch.sqrt(TorchRef.var(x, axis, correction, keepdims, unbiased))

    @staticmethod
    def logsumexp(x, axis=None, keepdims=False):
        return torch.logsumexp(x, dim=TorchRef._dims(x, axis), keepdim=keepdims)

    @staticmethod
    def arange(*args, dtype=None):
        floats = dtype == "float32" or any(isinstance(a, float) for a in args)
        return torch.arange(*args, dtype=torch.float64 if floats else torch.int64)

    @staticmethod
    def one_hot(idx, num_classes, dtype="int32"):
        out = torch_F.one_hot(idx.long(), num_classes)
        return out.double() if dtype == "float32" else out

    @staticmethod
    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        return torch_F.layer_norm(x, normalized_shape, weight, bias, eps)

    @staticmethod
    def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        stats = [None if t is None else torch.tensor(t, dtype=torch.float64) for t in (running_mean, running_var)]
        return torch_F.batch_norm(x, *stats, weight, bias, training=training, momentum=momentum, eps=eps)


# ---------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Arg:
    """An input: its shape and how to draw it."""

    shape: tuple
    kind: str = "normal"  # normal | positive | nonzero | ties | tied_max | int
    high: int = 0  # int inputs: values in [0, high)
    scale: float = 1.0
    offset: float = 0.0  # normal inputs: scale * N(0, 1) + offset

    @property
    def is_float(self) -> bool:
        return self.kind != "int"

    @property
    def type(self):
        return lt.Tensor[self.shape + (() if self.is_float else ("int32",))]

    def draw(self, rng) -> np.ndarray:
        if self.kind == "normal":
            x = rng.standard_normal(self.shape) + self.offset / self.scale
        elif self.kind == "positive":  # log, sqrt, denominators, fractional powers
            x = rng.uniform(0.5, 2.0, self.shape)
        elif self.kind == "nonzero":  # |x| >= 0.2: away from the kinks of relu, abs
            x = rng.uniform(0.2, 1.5, self.shape) * rng.choice([-1.0, 1.0], self.shape)
        elif self.kind == "ties":  # values in {-1, 0, 1}: ties between inputs, zeros
            x = rng.integers(-1, 2, self.shape).astype(np.float64)
        elif self.kind == "tied_max":  # the maximum of each last-axis row appears exactly twice
            x = rng.standard_normal(self.shape)
            rows = x.reshape(-1, self.shape[-1])
            for row in rows:
                top = int(np.argmax(row))
                row[(top + 1 + rng.integers(0, len(row) - 1)) % len(row)] = row[top]
        elif self.kind == "int":
            return rng.integers(0, self.high, self.shape).astype(np.int32)
        else:
            raise ValueError(self.kind)
        return np.asarray(x * self.scale, dtype=np.float32)


def F(*shape, scale=1.0, offset=0.0):
    return Arg(shape, "normal", scale=scale, offset=offset)


def P(*shape):
    return Arg(shape, "positive")


def NZ(*shape):
    return Arg(shape, "nonzero")


def TIES(*shape):
    return Arg(shape, "ties")


def TIED_MAX(*shape):
    return Arg(shape, "tied_max")


def I(*shape, high):  # noqa: E743 - reads like the others in the table
    return Arg(shape, "int", high=high)


@dataclass(eq=False)
class Case:
    """One table row: `name` is "op/variant"; the op is the part before "/"."""

    name: str
    fn: object
    args: list = field(default_factory=list)
    torch: bool = True  # False: PyTorch has no direct equivalent (negative-step slices)

    @property
    def op(self) -> str:
        return self.name.split("/")[0]


def C(name, fn, *args, torch=True):
    return Case(name, fn, list(args), torch)


# ---------------------------------------------------------------- the table
# batch_norm's running statistics in evaluation: constants of the model, not inputs.
RUNNING_MEAN = np.array([0.5, -1.0, 0.25], dtype=np.float32)
RUNNING_VAR = np.array([2.0, 0.5, 1.5], dtype=np.float32)

CASES = [
    # arithmetic with numpy broadcasting
    C("add/same shape", lambda m, a, b: a + b, F(3, 4), F(3, 4)),
    C("add/broadcast row", lambda m, a, b: a + b, F(3, 4), F(4)),
    C("add/broadcast both ways", lambda m, a, b: a + b, F(2, 1, 4), F(3, 1)),
    C("add/0-d tensor", lambda m, a, b: a + b, F(3, 4), F()),
    C("add/python float", lambda m, a: a + 1.5, F(3, 4)),
    C("add/python float on the left", lambda m, a: 1.5 + a, F(3, 4)),
    C("add/same input twice", lambda m, a: a + a, F(5)),
    C("sub/broadcast column", lambda m, a, b: a - b, F(3, 4), F(3, 1)),
    C("sub/python float on the left", lambda m, a: 2.0 - a, F(3, 4)),
    C("sub/broadcast first operand", lambda m, a, b: a - b, F(4), F(2, 3, 4)),
    C("mul/broadcast 3-d", lambda m, a, b: a * b, F(2, 3, 4), F(3, 1)),
    C("mul/python int", lambda m, a: a * 3, F(3, 4)),
    C("mul/same input twice", lambda m, a: a * a, F(3, 4)),
    C("div/broadcast", lambda m, a, b: a / b, F(3, 4), P(4)),
    C("div/python float on the left", lambda m, a: 1.0 / a, P(3, 4)),
    C("div/by python int", lambda m, a: a / 2, F(3, 4)),
    C("div/0-d denominator", lambda m, a, b: a / b, F(2, 3), P()),
    C("neg/unary minus", lambda m, a: -a, F(3, 4)),
    C("neg/in expression", lambda m, a, b: a * -b, F(3, 4), F(4)),
    C("pow/square", lambda m, a: a ** 2, F(3, 4)),
    C("pow/cube", lambda m, a: a ** 3, F(3, 4)),
    C("pow/zero", lambda m, a: a ** 0, F(3, 4)),
    C("pow/one half", lambda m, a: a ** 0.5, P(3, 4)),
    C("pow/minus one", lambda m, a: a ** -1, P(3, 4)),
    C("pow/one and a half", lambda m, a: a ** 1.5, P(3, 4)),
    C("pow/minus two", lambda m, a: a ** -2.0, P(3, 4)),
    # unary math
    C("exp/", lambda m, a: m.exp(a), F(3, 4)),
    C("log/", lambda m, a: m.log(a), P(3, 4)),
    C("sqrt/", lambda m, a: m.sqrt(a), P(3, 4)),
    C("tanh/", lambda m, a: m.tanh(a), F(3, 4, scale=2.0)),
    C("sigmoid/", lambda m, a: m.sigmoid(a), F(3, 4, scale=3.0)),
    C("relu/", lambda m, a: m.relu(a), NZ(3, 4)),
    C("abs/", lambda m, a: m.abs(a), NZ(3, 4)),
    C("maximum/same shape", lambda m, a, b: m.maximum(a, b), F(3, 4), F(3, 4)),
    C("maximum/broadcast", lambda m, a, b: m.maximum(a, b), F(3, 4), F(4)),
    C("maximum/python float", lambda m, a: m.maximum(a, 0.25), NZ(3, 4)),
    C("minimum/same shape", lambda m, a, b: m.minimum(a, b), F(3, 4), F(3, 4)),
    C("minimum/broadcast", lambda m, a, b: m.minimum(a, b), F(2, 1, 4), F(3, 1)),
    C("minimum/python float", lambda m, a: m.minimum(a, -0.25), NZ(3, 4)),
    C("maximum/ties share the gradient", lambda m, a, b: m.maximum(a, b), TIES(4, 5), TIES(4, 5)),
    C("minimum/ties share the gradient", lambda m, a, b: m.minimum(a, b), TIES(4, 5), TIES(5)),
    C("abs/at zero", lambda m, a: m.abs(a), TIES(4, 5)),
    # comparisons give masks; where selects with them
    C("less/", lambda m, a, b: a < b, F(3, 4), F(3, 4)),
    C("less_equal/ints broadcast", lambda m, a, b: a <= b, I(3, 4, high=4), I(4, high=4)),
    C("greater/python float", lambda m, a: a > 0.0, F(3, 4)),
    C("greater_equal/ints", lambda m, a, b: a >= b, I(3, 4, high=3), I(3, 4, high=3)),
    C("equal/ints", lambda m, a, b: a == b, I(3, 4, high=3), I(3, 4, high=3)),
    C("not_equal/ints broadcast", lambda m, a, b: a != b, I(3, 4, high=3), I(3, 1, high=3)),
    C("greater/mask times value", lambda m, a: (a > 0.0) * a, NZ(3, 4)),
    C("where/mask from comparison", lambda m, a, b: m.where(a > b, a, b), F(3, 4), F(3, 4)),
    C("where/broadcast", lambda m, c, a, b: m.where(c > 0.0, a, b), F(3, 1), F(3, 4), F(4)),
    C("where/scalar branch", lambda m, a: m.where(a > 0.0, a, 0.1 * a), NZ(3, 4)),
    C("where/python floats", lambda m, a: m.where(a > 0.0, 1.0, -1.0), NZ(3, 4)),
    # matmul
    C("matmul/2-D @ 2-D", lambda m, a, b: a @ b, F(3, 4), F(4, 5)),
    C("matmul/2-D @ 1-D", lambda m, a, b: a @ b, F(3, 4), F(4)),
    C("matmul/1-D @ 2-D", lambda m, a, b: a @ b, F(4), F(4, 5)),
    C("matmul/batched 3-D @ 2-D", lambda m, a, b: a @ b, F(2, 3, 4), F(4, 5)),
    C("matmul/1-D @ 1-D", lambda m, a, b: a @ b, F(4), F(4)),
    C("matmul/lt.matmul", lambda m, a, b: m.matmul(a, b), F(3, 4), F(4, 2)),
    C("matmul/transposed operand", lambda m, a, b: a.T @ b, F(4, 3), F(4, 5)),
    C("matmul/sliced operand", lambda m, a, b: a[1:3] @ b, F(4, 3), F(3, 5)),
    C("matmul/column-sliced operand", lambda m, a, b: a[:, 1:3] @ b, F(4, 3), F(2, 5)),
    C("matmul/same input twice", lambda m, a: a @ a.T, F(3, 4)),
    C("matmul/1x1 inner", lambda m, a, b: a @ b, F(3, 1), F(1, 2)),
    # numpy batching: leading batch dimensions, broadcast, strided sgemm per batch element
    C("matmul/batched 4-D @ 4-D", lambda m, a, b: a @ b, F(2, 3, 4, 5), F(2, 3, 5, 4)),
    C("matmul/batched 3-D @ 3-D", lambda m, a, b: a @ b, F(2, 3, 4), F(2, 4, 3)),
    C("matmul/2-D @ batched 3-D", lambda m, a, b: a @ b, F(3, 4), F(2, 4, 5)),
    C("matmul/batch dims broadcast", lambda m, a, b: a @ b, F(2, 1, 3, 4), F(3, 4, 2)),
    C("matmul/1-D @ batched 3-D", lambda m, a, b: a @ b, F(4), F(2, 4, 3)),
    C("matmul/batched 3-D @ 1-D", lambda m, a, b: a @ b, F(2, 3, 4), F(4)),
    C("matmul/attention scores", lambda m, q, k: m.softmax(q @ m.transpose(k, (0, 1, 3, 2)), -1) @ k,
      F(2, 2, 3, 4), F(2, 2, 3, 4)),
    # transpose and reshape
    C("T/2-D", lambda m, a: a.T, F(3, 4)),
    C("T/then broadcast", lambda m, a, b: a.T + b, F(3, 4), F(3)),
    C("transpose/axes (1, 0, 2)", lambda m, a: m.transpose(a, (1, 0, 2)), F(2, 3, 4)),
    C("transpose/axes (2, 0, 1)", lambda m, a: m.transpose(a, (2, 0, 1)), F(2, 3, 4)),
    C("transpose/negative axes", lambda m, a: m.transpose(a, (-1, 0, 1)), F(2, 3, 4)),
    C("transpose/default reverses", lambda m, a: m.transpose(a), F(2, 3, 4)),
    C("transpose/identity", lambda m, a: m.transpose(a, (0, 1)), F(2, 3)),
    C("reshape/ints", lambda m, a: a.reshape(6, 4), F(2, 3, 4)),
    C("reshape/tuple", lambda m, a: a.reshape((4, 6)), F(2, 3, 4)),
    C("reshape/flatten -1", lambda m, a: a.reshape(-1), F(2, 3, 4)),
    C("reshape/-1 inside", lambda m, a: a.reshape(2, -1, 2), F(2, 3, 4)),
    C("reshape/of a transpose", lambda m, a: a.T.reshape(-1), F(3, 4)),
    C("reshape/then broadcast", lambda m, a, b: a.reshape(3, 1) + b, F(3), F(4)),
    C("reshape/of a slice", lambda m, a: a[1:].reshape(2, 4), F(3, 4)),
    # indexing and slicing
    C("index/int", lambda m, a: a[1], F(3, 4)),
    C("index/numpy ints", lambda m, a: a[np.int64(1), np.int32(-1)], F(3, 4)),
    C("index/negative int", lambda m, a: a[-1], F(3, 4)),
    C("index/two ints", lambda m, a: a[1, 2], F(3, 4)),
    C("index/column", lambda m, a: a[:, 1], F(3, 4)),
    C("index/row slice", lambda m, a: a[1:3], F(4, 3)),
    C("index/column slice", lambda m, a: a[:, 1:3], F(3, 4)),
    C("index/step", lambda m, a: a[::2], F(5, 3)),
    C("index/step and start", lambda m, a: a[1::2, ::3], F(5, 7)),
    C("index/negative step", lambda m, a: a[::-1], F(4, 3), torch=False),
    C("index/negative step slice", lambda m, a: a[:, 3:0:-2], F(2, 5), torch=False),
    C("index/mixed 3-D", lambda m, a: a[1, :, 2:4], F(2, 3, 5)),
    C("index/ellipsis", lambda m, a: a[..., 1], F(2, 3, 4)),
    C("index/None", lambda m, a: a[None, 1], F(3, 4)),
    C("index/negative bounds", lambda m, a: a[-2:, :-1], F(3, 4)),
    C("index/out-of-range slice clamps", lambda m, a: a[1:10], F(3, 4)),
    C("index/rows used twice", lambda m, a: a[0] * a[1] + a[0], F(3, 4)),
    C("index/slice of a slice", lambda m, a: a[1:][:, 1:][0], F(3, 4)),
    # concat and stack
    C("concat/axis 0", lambda m, a, b: m.concat([a, b], 0), F(2, 3), F(1, 3)),
    C("concat/axis 1", lambda m, a, b: m.concat([a, b], axis=1), F(2, 3), F(2, 2)),
    C("concat/axis -1 of three", lambda m, a, b, c: m.concat([a, b, c], -1), F(2, 3, 1), F(2, 3, 2), F(2, 3, 1)),
    C("concat/same input twice", lambda m, a: m.concat([a, a], 0), F(2, 3)),
    C("concat/of slices", lambda m, a: m.concat([a[:, 2:], a[:, :2]], 1), F(3, 4)),
    C("stack/axis 0", lambda m, a, b: m.stack([a, b], 0), F(3), F(3)),
    C("stack/axis 1", lambda m, a, b: m.stack([a, b], axis=1), F(2, 3), F(2, 3)),
    C("stack/axis -1 of three", lambda m, a, b, c: m.stack([a, b, c], -1), F(2, 3), F(2, 3), F(2, 3)),
    C("stack/0-d", lambda m, a: m.stack([a[0, 0], a[1, 2]]), F(2, 3)),
    # constants
    C("zeros/ints", lambda m: m.zeros(2, 3)),
    C("zeros/tuple", lambda m: m.zeros((2, 3))),
    C("ones/ints", lambda m: m.ones(3)),
    C("ones/tuple plus input", lambda m, a: a + m.ones((3, 4)), F(3, 4)),
    C("full/", lambda m: m.full((2, 3), 1.5)),
    C("full/times input", lambda m, a: a * m.full((3, 4), -2.5), F(3, 4)),
    # reductions
    C("sum/all", lambda m, a: m.sum(a), F(2, 3, 4)),
    C("sum/axis 0", lambda m, a: m.sum(a, axis=0), F(2, 3, 4)),
    C("sum/axis 1", lambda m, a: m.sum(a, axis=1), F(2, 3, 4)),
    C("sum/axis -1", lambda m, a: m.sum(a, -1), F(2, 3, 4)),
    C("sum/axes (0, 2)", lambda m, a: m.sum(a, axis=(0, 2)), F(2, 3, 4)),
    C("sum/keepdims axis 1", lambda m, a: m.sum(a, axis=1, keepdims=True), F(2, 3, 4)),
    C("sum/keepdims all", lambda m, a: m.sum(a, keepdims=True), F(2, 3, 4)),
    C("sum/keepdims axes (0, 1)", lambda m, a: m.sum(a, axis=(0, 1), keepdims=True), F(2, 3, 4)),
    C("sum/method", lambda m, a: a.sum(1), F(3, 4)),
    C("sum/1-D", lambda m, a: m.sum(a), F(7)),
    C("mean/all", lambda m, a: m.mean(a), F(2, 3, 4)),
    C("mean/axis 0", lambda m, a: m.mean(a, axis=0), F(2, 3, 4)),
    C("mean/axis -1 keepdims", lambda m, a: m.mean(a, axis=-1, keepdims=True), F(2, 3, 4)),
    C("mean/axes (1, 2)", lambda m, a: m.mean(a, axis=(1, 2)), F(2, 3, 4)),
    C("mean/keepdims all", lambda m, a: m.mean(a, keepdims=True), F(3, 4)),
    C("max/all", lambda m, a: m.max(a), F(2, 3, 4)),
    C("max/axis 1", lambda m, a: m.max(a, axis=1), F(2, 3, 4)),
    C("max/axis 0 keepdims", lambda m, a: m.max(a, axis=0, keepdims=True), F(2, 3, 4)),
    C("max/axis -1", lambda m, a: m.max(a, axis=-1), F(3, 5)),
    C("max/axes (0, 2)", lambda m, a: m.max(a, axis=(0, 2)), F(2, 3, 4)),
    C("max/keepdims all", lambda m, a: m.max(a, keepdims=True), F(3, 4)),
    C("max/ties share the gradient", lambda m, a: m.max(a, axis=-1), TIED_MAX(3, 4)),
    C("max/ties in the whole tensor", lambda m, a: m.max(a), TIED_MAX(2, 5)),
    C("max/ints", lambda m, a: m.max(a, axis=0), I(3, 4, high=9)),
    C("min/all", lambda m, a: m.min(a), F(2, 3, 4)),
    C("min/axis 1", lambda m, a: m.min(a, axis=1), F(2, 3, 4)),
    C("min/axis -1 keepdims", lambda m, a: m.min(a, axis=-1, keepdims=True), F(3, 5)),
    C("min/ties share the gradient", lambda m, a: m.min(-a, axis=-1), TIED_MAX(3, 4)),
    C("min/ints", lambda m, a: m.min(a, axis=1), I(3, 4, high=9)),
    C("argmax/all", lambda m, a: m.argmax(a), F(3, 4)),
    C("argmax/axis 0", lambda m, a: m.argmax(a, axis=0), F(3, 4)),
    C("argmax/axis -1 keepdims", lambda m, a: m.argmax(a, axis=-1, keepdims=True), F(2, 3, 4)),
    C("argmax/first of ties", lambda m, a: m.argmax(a, axis=1), TIES(4, 6)),
    C("argmax/ints", lambda m, a: m.argmax(a, axis=1), I(3, 5, high=3)),
    C("argmax/keepdims all", lambda m, a: m.argmax(a, keepdims=True), F(3, 4)),
    C("sum/of a mask", lambda m, a: m.sum(a > 0.0), F(3, 4)),
    C("sum/of a mask along an axis", lambda m, a: m.sum(a > 0.0, axis=1), F(3, 4)),
    C("sum/ints", lambda m, a: m.sum(a), I(3, 4, high=9)),
    C("sum/ints keepdims", lambda m, a: m.sum(a, axis=0, keepdims=True), I(3, 4, high=9)),
    C("sum/empty slice", lambda m, a: m.sum(a[1:1], axis=0), F(3, 4)),
    C("mean/of a mask", lambda m, a: m.mean(a > 0.0), F(3, 4)),
    C("index/int tensor element", lambda m, a: a[1, 2] * 2 + 1, I(3, 4, high=9)),
    # softmax family and losses
    C("softmax/last axis", lambda m, a: m.softmax(a), F(3, 5)),
    C("softmax/axis 0", lambda m, a: m.softmax(a, axis=0), F(3, 5)),
    C("softmax/3-D middle axis", lambda m, a: m.softmax(a, 1), F(2, 4, 3)),
    C("softmax/1-D", lambda m, a: m.softmax(a), F(6)),
    C("log_softmax/last axis", lambda m, a: m.log_softmax(a), F(3, 5)),
    C("log_softmax/axis 0", lambda m, a: m.log_softmax(a, axis=0), F(3, 5)),
    C("log_softmax/3-D middle axis", lambda m, a: m.log_softmax(a, 1), F(2, 4, 3)),
    C("log_softmax/large logits", lambda m, a: m.log_softmax(a), F(3, 5, scale=30.0)),
    C("log_softmax/logits near 1e4", lambda m, a: m.log_softmax(a), F(3, 5, offset=1e4)),
    C("softmax/logits near -1e4", lambda m, a: m.softmax(a, axis=0), F(4, 3, offset=-1e4)),
    C("nll_loss/mean", lambda m, lp, t: m.nll_loss(lp, t), F(4, 5), I(4, high=5)),
    C("nll_loss/sum", lambda m, lp, t: m.nll_loss(lp, t, reduction="sum"), F(4, 5), I(4, high=5)),
    C("nll_loss/of log_softmax", lambda m, x, t: m.nll_loss(m.log_softmax(x), t), F(6, 3), I(6, high=3)),
    C("nll_loss/1-D input, 0-d target", lambda m, lp, t: m.nll_loss(lp, t), F(5), I(high=5)),
    C("cross_entropy/mean", lambda m, x, t: m.cross_entropy(x, t), F(4, 5), I(4, high=5)),
    C("cross_entropy/sum", lambda m, x, t: m.cross_entropy(x, t, reduction="sum"), F(4, 5), I(4, high=5)),
    C("cross_entropy/large logits", lambda m, x, t: m.cross_entropy(x, t), F(4, 3, scale=30.0), I(4, high=3)),
    C("cross_entropy/logits near 1e4", lambda m, x, t: m.cross_entropy(x, t), F(4, 3, offset=1e4), I(4, high=3)),
    C("mse_loss/mean", lambda m, a, b: m.mse_loss(a, b), F(3, 4), F(3, 4)),
    C("mse_loss/sum", lambda m, a, b: m.mse_loss(a, b, reduction="sum"), F(3, 4), F(3, 4)),
    C("mse_loss/1-D", lambda m, a, b: m.mse_loss(a, b), F(6), F(6)),
    # activations and special functions (issue 12)
    C("erf/", lambda m, a: m.erf(a), F(3, 4, scale=1.5)),
    C("erf/saturates", lambda m, a: m.erf(a), F(3, 4, scale=5.0)),
    C("sin/", lambda m, a: m.sin(a), F(3, 4, scale=3.0)),
    C("sin/large arguments", lambda m, a: m.sin(a), F(3, 4, scale=30.0)),
    C("cos/", lambda m, a: m.cos(a), F(3, 4, scale=3.0)),
    C("cos/large arguments", lambda m, a: m.cos(a), F(3, 4, scale=30.0)),
    C("log1p/", lambda m, a: m.log1p(a), P(3, 4)),
    C("log1p/small arguments", lambda m, a: m.log1p(a), F(3, 4, scale=1e-3)),
    C("gelu/exact", lambda m, a: m.gelu(a), F(3, 4, scale=2.0)),
    C("gelu/tanh", lambda m, a: m.gelu(a, approximate="tanh"), F(3, 4, scale=2.0)),
    C("silu/", lambda m, a: m.silu(a), F(3, 4, scale=3.0)),
    C("softplus/", lambda m, a: m.softplus(a), F(3, 4, scale=3.0)),
    C("softplus/beta and threshold", lambda m, a: m.softplus(a, beta=2.0, threshold=5.0), F(3, 4, scale=4.0)),
    C("softplus/large inputs do not overflow", lambda m, a: m.softplus(a), F(3, 4, scale=60.0)),
    # statistics
    C("var/all (unbiased)", lambda m, a: m.var(a), F(2, 3, 4)),
    C("var/axis 1 keepdims", lambda m, a: m.var(a, axis=1, keepdims=True), F(2, 3, 4)),
    C("var/correction 0", lambda m, a: m.var(a, -1, correction=0), F(3, 5)),
    C("var/unbiased False axes (0, 2)", lambda m, a: m.var(a, (0, 2), unbiased=False), F(2, 3, 4)),
    C("std/all", lambda m, a: m.std(a), F(3, 4)),
    C("std/axis -1", lambda m, a: m.std(a, axis=-1), F(3, 5)),
    C("logsumexp/last axis", lambda m, a: m.logsumexp(a, -1), F(3, 5)),
    C("logsumexp/all", lambda m, a: m.logsumexp(a), F(3, 4)),
    C("logsumexp/axis 0 keepdims", lambda m, a: m.logsumexp(a, 0, keepdims=True), F(3, 4)),
    C("logsumexp/large values", lambda m, a: m.logsumexp(a, axis=1), F(3, 5, scale=100.0)),
    # constant index tensors and masks
    C("arange/stop", lambda m: m.arange(5)),
    C("arange/start stop step", lambda m: m.arange(2, 11, 3)),
    C("arange/floats", lambda m: m.arange(0.5, 3.0, 0.5)),
    C("arange/times input", lambda m, a: a * m.arange(4), F(3, 4)),
    C("arange/float dtype", lambda m, a: a + m.arange(4, dtype="float32"), F(4)),
    C("tril/", lambda m, a: m.tril(a), F(4, 4)),
    C("tril/diagonal 1, wide", lambda m, a: m.tril(a, 1), F(3, 5)),
    C("tril/batched", lambda m, a: m.tril(a, -1), F(2, 4, 4)),
    C("tril/causal mask", lambda m: m.tril(m.ones(4, 4))),
    C("triu/", lambda m, a: m.triu(a), F(4, 4)),
    C("triu/diagonal -1, tall", lambda m, a: m.triu(a, -1), F(5, 3)),
    C("one_hot/", lambda m, t: m.one_hot(t, 5), I(6, high=5)),
    C("one_hot/2-D indices", lambda m, t: m.one_hot(t, 3), I(2, 4, high=3)),
    C("one_hot/float32 times input", lambda m, a, t: a * m.one_hot(t, 4, dtype="float32"), F(3, 4), I(3, high=4)),
    # normalisation
    C("layer_norm/last axis affine", lambda m, x, w, b: m.layer_norm(x, (5,), w, b), F(3, 5), F(5), F(5)),
    C("layer_norm/two axes", lambda m, x: m.layer_norm(x, (3, 4)), F(2, 3, 4)),
    C("layer_norm/eps", lambda m, x, w: m.layer_norm(x, [4], w, eps=0.5), F(3, 4, scale=0.5), F(4)),
    C("batch_norm/training 2-D", lambda m, x, w, b: m.batch_norm(x, None, None, w, b, training=True),
      F(6, 3), F(3), F(3)),
    C("batch_norm/training 4-D", lambda m, x, w, b: m.batch_norm(x, None, None, w, b, True), F(4, 3, 2, 2), F(3), F(3)),
    C("batch_norm/training 3-D no affine", lambda m, x: m.batch_norm(x, None, None, training=True), F(3, 2, 5)),
    C("batch_norm/eval", lambda m, x, w, b: m.batch_norm(x, RUNNING_MEAN, RUNNING_VAR, w, b), F(5, 3), F(3), F(3)),
    # compositions, as models use them
    C("chain/dense tanh layer", lambda m, x, w, b: m.tanh(x @ w + b), F(4, 3), F(3, 5), F(5)),
    C("chain/softmax of matmul", lambda m, x, w: m.softmax(x @ w, axis=-1).sum(0), F(4, 3), F(3, 5)),
    C("chain/normalise rows", lambda m, a: a / m.sqrt(m.sum(a * a, axis=1, keepdims=True)), F(3, 4)),
    C("chain/max-subtracted exp", lambda m, a: m.exp(a - m.max(a, axis=1, keepdims=True)), F(3, 4)),
    # einsum: lowered to permutations, mm / bmm and sums
    C("einsum/matmul", lambda m, a, b: m.einsum("ij,jk->ik", a, b), F(3, 4), F(4, 5)),
    C("einsum/implicit output", lambda m, a, b: m.einsum("ij,jk", a, b), F(3, 4), F(4, 5)),
    C("einsum/attention scores (transposed operand)", lambda m, q, k: m.einsum("bhqd,bhkd->bhqk", q, k),
      F(2, 3, 4, 5), F(2, 3, 6, 5)),
    C("einsum/attention output", lambda m, p, v: m.einsum("bhqk,bhkd->bhqd", p, v), F(2, 3, 4, 6), F(2, 3, 6, 5)),
    C("einsum/heads permuted", lambda m, q, k: m.einsum("bqhd,bkhd->bhqk", q, k), F(2, 4, 3, 5), F(2, 6, 3, 5)),
    C("einsum/first operand transposed", lambda m, a, b: m.einsum("bji,bjk->bik", a, b), F(2, 4, 3), F(2, 4, 5)),
    C("einsum/ellipsis broadcast", lambda m, a, b: m.einsum("...ij,jk->...ik", a, b), F(2, 3, 4), F(4, 5)),
    C("einsum/transpose", lambda m, a: m.einsum("ijk->kij", a), F(2, 3, 4)),
    C("einsum/outer product", lambda m, a, b: m.einsum("i,j->ij", a, b), F(3), F(4)),
    C("einsum/trace", lambda m, a: m.einsum("ii->", a), F(4, 4)),
    C("einsum/diagonal", lambda m, a: m.einsum("ii->i", a), F(4, 4)),
    C("einsum/sum over an index", lambda m, a: m.einsum("ij->j", a), F(3, 4)),
    C("einsum/dot and sum", lambda m, a, b: m.einsum("ij,ij->", a, b), F(3, 4), F(3, 4)),
    C("einsum/three operands", lambda m, a, b, c: m.einsum("ij,jk,kl->il", a, b, c), F(2, 3), F(3, 4), F(4, 5)),
    C("einsum/same operand twice", lambda m, a: m.einsum("ij,kj->ik", a, a), F(3, 4)),
    C("einsum/contracted label broadcast from size 1", lambda m, a, b: m.einsum("ij,jk->ik", a, b), F(2, 1), F(3, 4)),
]

# The ops issue 2 promises; the table must exercise each (test_table_covers_contract).
CONTRACT_OPS = {
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "T", "transpose", "reshape",
    "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "maximum", "minimum", "where",
    "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
    "sum", "mean", "max", "min", "argmax", "index", "concat", "stack", "zeros", "ones", "full",
    "log_softmax", "softmax", "nll_loss", "cross_entropy", "mse_loss",
    # issue 12
    "erf", "sin", "cos", "log1p", "gelu", "silu", "softplus", "var", "std", "logsumexp",
    "arange", "tril", "triu", "one_hot", "layer_norm", "batch_norm", "einsum",
}

GROUPS = [CASES[i:i + GROUP_SIZE] for i in range(0, len(CASES), GROUP_SIZE)]
GROUP_OF = {case.name: g for g, group in enumerate(GROUPS) for case in group}


# ---------------------------------------------------------------- running
def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


@cache
def case_data(case: Case):
    """Inputs, weights, and the float64 reference output of one row."""
    rng = np.random.default_rng(_seed(case.name))
    inputs = [a.draw(rng) for a in case.args]
    ref = np.asarray(case.fn(NumpyRef, *[_f64(x) for x in inputs]))
    weights = rng.standard_normal(ref.shape).astype(np.float32) if _differentiable(case, ref) else None
    return inputs, weights, ref


def _f64(x):
    return x.astype(np.float64) if x.dtype == np.float32 else x


def _differentiable(case: Case, ref) -> bool:
    return ref.dtype == np.float64 and any(a.is_float for a in case.args)


def _stage_case(case: Case, reps, weights):
    """Staged: the row's output, or (output, loss, gradients) for float rows."""
    if weights is None:
        return (case.fn(lt, *reps),)
    floats = [i for i, a in enumerate(case.args) if a.is_float]

    def loss(*float_reps):
        args = list(reps)
        for i, r in zip(floats, float_reps):
            args[i] = r
        out = case.fn(lt, *args)
        return lt.sum(out * weights), out

    (value, out), grads = lt.value_and_grad(loss, argnums=tuple(range(len(floats))), has_aux=True)(
        *[reps[i] for i in floats]
    )
    return out, value, grads


def compile_cases(cases: list[Case], name: str):
    """One compiled function over the rows `cases`: takes every row's inputs
    (and weights) as separate annotated parameters, returns one tuple per row."""
    params, layout = [], []
    for ci, case in enumerate(cases):
        inputs, weights, _ = case_data(case)
        names = [f"c{ci}_{j}" for j in range(len(inputs))]
        params += [(n, a.type) for n, a in zip(names, case.args)]
        wname = None
        if weights is not None:
            wname = f"c{ci}_w"
            params.append((wname, lt.Tensor[weights.shape]))
        layout.append((case, names, wname))

    def body(**reps):
        return tuple(
            _stage_case(case, [reps[n] for n in names], reps[wname] if wname else None)
            for case, names, wname in layout
        )

    arglist = ", ".join(n for n, _ in params)
    namespace = {"body": body}
    exec(f"def {name}({arglist}):\n    return body({', '.join(f'{n}={n}' for n, _ in params)})\n", namespace)
    fn = namespace[name]
    fn.__annotations__ = dict(params)
    return lt.compile(fn)


def _call_args(cases):
    args = []
    for case in cases:
        inputs, weights, _ = case_data(case)
        args += inputs
        if weights is not None:
            args.append(weights)
    return args


@cache
def group_results(g: int) -> dict:
    """name -> the row's outputs, or the exception compiling or running it raised.
    A group that fails is retried row by row, so one broken op fails one test."""
    cases = GROUPS[g]
    try:
        outs = compile_cases(cases, f"op_group_{g}")(*_call_args(cases))
        return {case.name: out for case, out in zip(cases, outs)}
    except Exception:
        if len(cases) == 1:
            raise
    results = {}
    for k, case in enumerate(cases):
        try:
            results[case.name] = compile_cases([case], f"op_group_{g}_row_{k}")(*_call_args([case]))[0]
        except Exception as e:  # reported by that row's test
            results[case.name] = e
    return results


@pytest.fixture(scope="session")
def op_results():
    """Compiled groups, shared by every row of a test session."""
    def get(case: Case):
        result = group_results(GROUP_OF[case.name])[case.name]
        if isinstance(result, Exception):
            raise result
        return result

    yield get
    group_results.cache_clear()


# ---------------------------------------------------------------- checks
def assert_close(actual, desired, what):
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=ATOL, err_msg=what)


def reference_loss(case, inputs, weights):
    return float(np.sum(case.fn(NumpyRef, *inputs) * weights.astype(np.float64)))


def finite_difference_grads(case, inputs, weights):
    """Central differences of the float64 reference loss, per float input."""
    inputs = [_f64(x) for x in inputs]
    grads = []
    for i, a in enumerate(case.args):
        if not a.is_float:
            continue
        x = inputs[i]
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            old = x[idx]
            x[idx] = old + FD_EPS
            up = reference_loss(case, inputs, weights)
            x[idx] = old - FD_EPS
            down = reference_loss(case, inputs, weights)
            x[idx] = old
            g[idx] = (up - down) / (2 * FD_EPS)
        grads.append(g)
    return grads


def torch_value_and_grads(case, inputs, weights):
    tensors = [
        torch.tensor(_f64(x), requires_grad=True) if a.is_float else torch.from_numpy(x)
        for a, x in zip(case.args, inputs)
    ]
    out = case.fn(TorchRef, *tensors)
    if weights is None:
        return out.detach().numpy(), None, None
    loss = torch.sum(out * torch.tensor(weights, dtype=torch.float64))
    floats = [t for a, t in zip(case.args, tensors) if a.is_float]
    if not loss.requires_grad:  # e.g. where(mask, 1.0, -1.0): constant in the inputs
        return out.detach().numpy(), loss.item(), [np.zeros(t.shape) for t in floats]
    grads = torch.autograd.grad(loss, floats, allow_unused=True)
    grads = [np.zeros(t.shape) if g is None else g.numpy() for t, g in zip(floats, grads)]
    return out.detach().numpy(), loss.item(), grads


def expected_dtype(ref: np.ndarray):
    return {"f": np.float32, "b": np.bool_, "i": np.int32}[ref.dtype.kind]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_op(case, op_results):
    inputs, weights, ref = case_data(case)
    result = op_results(case)
    out = result[0]

    # forward: against the float64 numpy reference
    assert out.shape == ref.shape, f"shape {out.shape}, numpy gives {ref.shape}"
    assert out.dtype == expected_dtype(ref), f"dtype {out.dtype}, expected {np.dtype(expected_dtype(ref))}"
    if ref.dtype.kind == "f":
        assert_close(out, ref, "value vs numpy float64")
    else:
        np.testing.assert_array_equal(out, ref, err_msg="value vs numpy")

    if weights is not None:
        _, value, grads = result
        assert_close(value, reference_loss(case, [_f64(x) for x in inputs], weights), "loss vs numpy float64")
        fd = finite_difference_grads(case, inputs, weights)
        assert len(grads) == len(fd)
        for k, (g, want) in enumerate(zip(grads, fd)):
            assert g.shape == want.shape and g.dtype == np.float32
            assert_close(g, want, f"gradient of float input {k} vs finite differences")

    if torch is None or not case.torch:
        return
    t_out, t_value, t_grads = torch_value_and_grads(case, inputs, weights)
    if ref.dtype.kind == "f":
        assert_close(out, t_out, "value vs torch")
    else:
        np.testing.assert_array_equal(out, t_out, err_msg="value vs torch")
    if weights is not None:
        assert_close(value, t_value, "loss vs torch")
        for k, (g, want) in enumerate(zip(grads, t_grads)):
            assert_close(g, want, f"gradient of float input {k} vs torch autograd")


@pytest.mark.parametrize("subscripts, shapes, message", [
    ("ij,jk->ik", [(3, 4), (5, 6)], "subscript 'j' has sizes 4 and 5"),
    ("ij->ii", [(3, 3)], "output subscript 'i' appears more than once"),
    ("ij->k", [(3, 4)], "output subscript 'k' does not appear in the inputs"),
    ("ij,jk", [(3, 4)], "2 input term(s) for 1 operand(s)"),
    ("i1", [(3, 4)], "invalid subscript '1'"),
    ("ijk", [(3, 4)], "3 subscript(s) for an operand of shape (3, 4)"),
    ("ii", [(3, 4)], "subscript 'i' has sizes 3 and 4"),
    ("i...j...", [(3, 4)], "more than one '...'"),
])
def test_einsum_rejects_unsupported_subscripts_at_the_users_line(subscripts, shapes, message):
    def one(a):  # types from the call
        return lt.einsum(subscripts, a)

    def two(a, b):
        return lt.einsum(subscripts, a, b)

    f = lt.compile(one if len(shapes) == 1 else two)
    with pytest.raises(lt.StagingError, match=re.escape(message)) as info:
        f(*[np.zeros(s, np.float32) for s in shapes])
    assert f"{__file__}:" in str(info.value) and "einsum" in str(info.value)


def test_table_covers_contract():
    covered = {case.op for case in CASES}
    assert CONTRACT_OPS <= covered, f"ops without a table row: {sorted(CONTRACT_OPS - covered)}"
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "row names must be unique"


if __name__ == "__main__":  # python tests/test_ops.py: the same run without pytest's summary
    sys.exit(pytest.main([__file__, "-q"]))
