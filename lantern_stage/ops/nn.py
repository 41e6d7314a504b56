"""Neural-network ops: linear, conv2d, pooling, dropout masks, embedding
gathers, and `assign`, the in-place write into a captured buffer that
optimizers and random generators use.

Max pooling and dropout are compositions of two ops each, so that no op
needs a buffer saved from its forward for its backward:
  max_pool2d = pool_gather(x, pool_argmax(x))   (the argmax is an int32 tensor)
  dropout    = x * dropout_mask(generator)      (the mask is an ordinary tensor,
                                                 read again by mul's backward)
The C++ kernels are in cpp_runtime/conv.h, pool.h, random.h and nn.h.
"""
from __future__ import annotations

from math import prod

from ..staging import current, staging_error, user_location
from .registry import Emitter, ShapeError, TensorType, as_rep, broadcast_shapes, defop, no_gradient


def _need_float(what: str, t: TensorType) -> None:
    if t.dtype != "float32":
        raise ShapeError(f"{what} must be float32, got {t}")


# ---------------------------------------------------------------- linear
def _linear_type(x, w):
    _need_float("input", x)
    _need_float("weight", w)
    if len(w.shape) != 2 or not x.shape or x.shape[-1] != w.shape[1]:
        raise ShapeError(f"expects input [..., in] and weight [out, in], got {x} and {w}")
    return TensorType(x.shape[:-1] + (w.shape[0],))


def _linear_dims(x, w):
    k = w.shape[1]
    return x.size // k, w.shape[0], k  # M, N, K


def _linear_forward(em, out, x, w):
    m, n, k = _linear_dims(x, w)
    if m == 1:  # y[n] = w[n,k] x[k]
        em.prim("gemv", [out], [w, x], M=n, N=k, trans=False)
    else:
        em.prim("gemm", [out], [x, w], M=m, N=n, K=k, ta=False, tb=True)


def _linear_backward(em, out, dout, ins, dins):
    x, w = ins
    dx, dw = dins
    m, n, k = _linear_dims(x, w)
    if m == 1:
        if dx is not None:  # dx[k] += w[n,k]^T dy[n]
            em.prim("gemv", [dx], [w, dout], M=n, N=k, trans=True, acc=True)
        if dw is not None:  # dw[n,k] += dy[n] x[k]^T
            em.prim("ger", [dw], [dout, x], M=n, N=k, acc=True)
        return
    if dx is not None:  # dx[m,k] += dy[m,n] w[n,k]
        em.prim("gemm", [dx], [dout, w], M=m, N=k, K=n, ta=False, tb=False, acc=True)
    if dw is not None:  # dw[n,k] += dy[m,n]^T x[m,k]
        em.prim("gemm", [dw], [dout, x], M=n, N=k, K=m, ta=True, tb=False, acc=True)


# x @ w.T with PyTorch's [out, in] weight layout, as one gemm with a transpose
# flag: `x @ w.T` over primitives would copy the transposed weight every call.
linear = defop("linear", _linear_type, _linear_forward, _linear_backward)


# ---------------------------------------------------------------- conv2d
def _conv2d_type(x, w, *b, stride, padding):
    _need_float("input", x)
    _need_float("weight", w)
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise ShapeError(f"expects input [N, C, H, W] and weight [F, C, KH, KW], got {x} and {w}")
    n, c, h, wd = x.shape
    f, c2, kh, kw = w.shape
    if c != c2:
        raise ShapeError(f"input has {c} channels but the weight expects {c2}: {x} and {w}")
    if b and (b[0].dtype != "float32" or b[0].shape != (f,)):
        raise ShapeError(f"bias must be float32[{f}], got {b[0]}")
    (sh, sw), (ph, pw) = stride, padding
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ShapeError(f"bad stride {stride} or padding {padding}")
    if h + 2 * ph < kh or wd + 2 * pw < kw:
        raise ShapeError(f"kernel {kh}x{kw} larger than the padded input {h + 2 * ph}x{wd + 2 * pw}")
    return TensorType((n, f, (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1))


def _conv2d_dims(x, w, stride, padding):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    return dict(N=n, C=c, H=h, W=wd, F=f, KH=kh, KW=kw,
                sh=stride[0], sw=stride[1], ph=padding[0], pw=padding[1])


def _conv2d_forward(em, out, x, w, *b, stride, padding):
    em.prim("conv2d", [out], [x, w, *b], **_conv2d_dims(x, w, stride, padding))


def _conv2d_backward(em, out, dout, ins, dins, *, stride, padding):
    x, w = ins[:2]
    # The kernel takes nullptr for a gradient nobody needs: `grads` says
    # which of dx, dw, db the outputs are.
    present = [(name, d) for name, d in zip(("dx", "dw", "db"), dins) if d is not None]
    if present:
        em.prim("conv2d_backward", [d for _, d in present], [x, w, dout], acc=True,
                grads=tuple(name for name, _ in present), **_conv2d_dims(x, w, stride, padding))


# NCHW, groups = 1: im2col + sgemm or direct AVX kernels (cpp_runtime/conv.h).
conv2d = defop("conv2d", _conv2d_type, _conv2d_forward, _conv2d_backward)


# ---------------------------------------------------------------- pooling
def _pool_type(x, *, kernel, stride):
    _need_float("input", x)
    if len(x.shape) != 4:
        raise ShapeError(f"expects input [N, C, H, W], got {x}")
    n, c, h, w = x.shape
    if kernel < 1 or stride < 1:
        raise ShapeError(f"bad kernel {kernel} or stride {stride}")
    if kernel > h or kernel > w:
        raise ShapeError(f"kernel {kernel} larger than the input {h}x{w}")
    return TensorType((n, c, (h - kernel) // stride + 1, (w - kernel) // stride + 1))


def _pool_dims(x, kernel, stride):
    n, c, h, w = x.shape
    return dict(N=n, C=c, H=h, W=w, k=kernel, s=stride)


def _argmax_type(x, *, kernel, stride):
    return TensorType(_pool_type(x, kernel=kernel, stride=stride).shape, "int32")


def _argmax_forward(em, out, x, *, kernel, stride):
    scratch = em.tmp(TensorType(out.shape))
    em.prim("pool_argmax", [out, scratch], [x], **_pool_dims(x, kernel, stride))


# at[n, c, oh, ow] = flat index in the H*W plane of the window's maximum
# (the first one on ties, as PyTorch).
pool_argmax = defop("pool_argmax", _argmax_type, _argmax_forward, no_gradient)


def _gather_type(x, at):
    _need_float("input", x)
    if len(x.shape) != 4 or len(at.shape) != 4 or at.dtype != "int32" or at.shape[:2] != x.shape[:2]:
        raise ShapeError(f"expects input [N, C, H, W] and int32 indices [N, C, OH, OW], got {x} and {at}")
    return TensorType(at.shape)


def _plane_dims(x, at):
    return dict(planes=x.shape[0] * x.shape[1], in_plane=x.shape[2] * x.shape[3], out_plane=at.shape[2] * at.shape[3])


def _gather_forward(em, out, x, at):
    em.prim("pool_gather", [out], [x, at], **_plane_dims(x, at))


def _gather_backward(em, out, dout, ins, dins):
    x, at = ins
    if dins[0] is not None:
        em.prim("pool_gather_backward", [dins[0]], [dout, at], acc=True, **_plane_dims(x, at))


# y[n, c, o] = x[n, c, at[n, c, o]]; the gradient goes back where it came from.
pool_gather = defop("pool_gather", _gather_type, _gather_forward, _gather_backward)


def _avg_pool_forward(em, out, x, *, kernel, stride):
    em.prim("avg_pool2d", [out], [x], **_pool_dims(x, kernel, stride))


def _avg_pool_backward(em, out, dout, ins, dins, *, kernel, stride):
    if dins[0] is not None:
        em.prim("avg_pool2d_backward", [dins[0]], [dout], acc=True, **_pool_dims(ins[0], kernel, stride))


avg_pool2d = defop("avg_pool2d", _pool_type, _avg_pool_forward, _avg_pool_backward)


# ---------------------------------------------------------------- dropout
def _mask_type(state, *, shape, p):
    if state.dtype != "int32" or state.shape != (4,):
        raise ShapeError(f"a generator's state is int32[4], got {state}")
    if not 0.0 <= p <= 1.0:
        raise ShapeError(f"probability {p} not in [0, 1]")
    return TensorType(tuple(shape))


def _mask_forward(em, out, state, *, shape, p):
    # Reads the generator's state and advances it in place: a side effect on
    # a captured buffer, so the statement stays even though `state` is not used later.
    em.prim("dropout_mask", [out, state], [state], p=p)


# mask = 0 with probability p, else 1/(1-p): inverted dropout, as PyTorch's.
dropout_mask = defop("dropout_mask", _mask_type, _mask_forward, no_gradient)


# ---------------------------------------------------------------- embedding
def _embedding_type(table, idx):
    _need_float("table", table)
    if len(table.shape) != 2:
        raise ShapeError(f"table must be 2-D [rows, width], got {table}")
    if idx.dtype != "int32":
        raise ShapeError(f"indices must be int32, got {idx}")
    return TensorType(idx.shape + (table.shape[1],))


def _embedding_dims(table, idx):
    return dict(n=prod(idx.shape), rows=table.shape[0], width=table.shape[1])


def _embedding_forward(em, out, table, idx):
    em.prim("gather_rows", [out], [table, idx], **_embedding_dims(table, idx))


def _embedding_backward(em, out, dout, ins, dins):
    table, idx = ins
    if dins[0] is not None:
        em.prim("scatter_add_rows", [dins[0]], [dout, idx], acc=True, **_embedding_dims(table, idx))


# out[..., :] = table[idx[...], :], bounds-checked; gradient rows scatter-added.
embedding = defop("embedding", _embedding_type, _embedding_forward, _embedding_backward)


# ---------------------------------------------------------------- assign
def assign(dst, value):
    """Write `value` (broadcast to dst's shape) into the captured array `dst`
    in place: a statement, not an op, with no result buffer and no gradient.
    It is how a staged optimizer updates parameters and its state, which
    live in numpy arrays shared with C++.  Returns the staged `dst`, which
    reads the new value from here on."""
    b = current()
    d = as_rep(dst)
    v = as_rep(value, d.dtype)
    if not any(var is d.var for _, var in b.captures):
        raise staging_error(
            "assign: the destination must be a captured array (a numpy array or "
            "parameter used by the staged code), not a value computed while staging"
        )
    try:
        shape = broadcast_shapes(d.shape, v.shape)
    except ShapeError as e:
        raise staging_error(f"assign: {e}") from None
    if shape != d.shape:
        raise staging_error(f"assign: a value of shape {v.shape} does not fit into {d.shape}")
    if v.dtype != d.dtype and not (d.dtype == "float32" and v.var.storage == "const"):
        raise staging_error(f"assign: cannot write {v.dtype} into a {d.dtype} array; cast it first")
    if v.block is not None and not b.visible(v.block):
        raise staging_error(f"assign: {v.var.name} is used outside the scope it was computed in")
    Emitter(b, f"assign {user_location()}").map(d.var, "{0}", v.var)
    return d
