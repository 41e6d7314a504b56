"""Matrix products, lowered to OpenBLAS gemm / gemv / ger / dot with transpose
flags (no transposed copy here; `passes/transpose_weights` later gives a
weight read as x W^T in many few-row products one copy per call).

`matmul` and `linear` are compositions over four internal ops on operands
folded to 2-D (a reshape is a free view):
  mm(a, b)     C[M,N] = op(A) op(B)        gemm, ta / tb transpose flags
  mv(a, x)     y = op(A) x                 gemv
  outer(a, b)  C[M,N] = a b^T              ger (adds into a zeroed buffer)
  dot(a, b)    s = a . b
Their derivative rules are bilinear, in the same four ops: for C = A B,
dA = dC B^T and dB = A^T dC are `mm`s with flipped flags, and the JVP is
mm(tA, B) + mm(A, tB).  `fold_accumulations` then turns `t = gemm(...);
dA += t` into `gemm(..., beta = 1)` into dA, today's backward code.
"""
from __future__ import annotations

from ..types import covers_once
from .registry import ShapeError, TensorType, defop


def _size(t) -> int:
    n = 1
    for d in t.shape:
        n *= d
    return n


def _need(cond, msg):
    if not cond:
        raise ShapeError(msg)


# ---------------------------------------------------------------- mm
def _mm_type(a, b, *, M, N, K, ta, tb):
    _need(a.dtype == "float32" and b.dtype == "float32", f"needs float32 operands, got {a} and {b}")
    _need(_size(a) == M * K and _size(b) == K * N, f"internal: {a}, {b} do not fold to {M}x{K} @ {K}x{N}")
    return TensorType((M, N))


def _mm_forward(em, out, a, b, *, M, N, K, ta, tb):
    em.prim("gemm", [out], [a, b], M=M, N=N, K=K, ta=ta, tb=tb)


def _add(x, y):
    from .elementwise import add

    if x is None:
        return y
    return x if y is None else add(x, y)


def product_rule(op, ins, tans, at: dict):
    """The JVP of an op linear in each of its two operands: op(da, b) + op(a, db)."""
    a, b = ins
    return _add(None if tans[0] is None else op(tans[0], b, **at), None if tans[1] is None else op(a, tans[1], **at))


def _mm_jvp(out, ins, tans, **at):
    return product_rule(mm, ins, tans, at)


def _as(x, like):
    from .shape import reshape

    return x if x.shape == like.shape else reshape(x, shape=like.shape)


def _mm_vjp(g, out, ins, needs, *, M, N, K, ta, tb):
    a, b = ins
    da = db = None
    if needs[0]:
        if not ta:  # dA[M,K] = g[M,N] op(B)^T
            da = mm(g, b, M=M, N=K, K=N, ta=False, tb=not tb)
        else:  # A is [K,M]: dA = op(B) g^T
            da = mm(b, g, M=K, N=M, K=N, ta=tb, tb=True)
        da = _as(da, a)
    if needs[1]:
        if not tb:  # dB[K,N] = op(A)^T g
            db = mm(a, g, M=K, N=N, K=M, ta=not ta, tb=False)
        else:  # B is [N,K]: dB = g^T op(A)
            db = mm(g, a, M=N, N=K, K=M, ta=True, tb=ta)
        db = _as(db, b)
    return [da, db]


mm = defop("mm", _mm_type, _mm_forward, jvp=_mm_jvp, vjp=_mm_vjp)


# ---------------------------------------------------------------- mv
def _mv_type(a, x, *, M, N, trans):
    _need(a.dtype == "float32" and x.dtype == "float32", f"needs float32 operands, got {a} and {x}")
    _need(_size(a) == M * N and _size(x) == (M if trans else N), f"internal: bad gemv operands {a}, {x}")
    return TensorType((N if trans else M,))


def _mv_forward(em, out, a, x, *, M, N, trans):
    em.prim("gemv", [out], [a, x], M=M, N=N, trans=trans)


def _mv_jvp(out, ins, tans, **at):
    return product_rule(mv, ins, tans, at)


def _mv_vjp(g, out, ins, needs, *, M, N, trans):
    a, x = ins
    da = dx = None
    if needs[0]:  # y = A x: dA = g x^T; y = A^T x: dA = x g^T
        da = _as(outer(g, x, M=M, N=N) if not trans else outer(x, g, M=M, N=N), a)
    if needs[1]:
        dx = _as(mv(a, g, M=M, N=N, trans=not trans), x)
    return [da, dx]


mv = defop("mv", _mv_type, _mv_forward, jvp=_mv_jvp, vjp=_mv_vjp)


# ---------------------------------------------------------------- outer
def _outer_type(a, b, *, M, N):
    _need(_size(a) == M and _size(b) == N, f"internal: bad outer operands {a}, {b}")
    return TensorType((M, N))


def _outer_forward(em, out, a, b, *, M, N):
    em.prim("ger", [out], [a, b], M=M, N=N, acc=True)  # into a zeroed output


def _outer_jvp(out, ins, tans, **at):
    return product_rule(outer, ins, tans, at)


def _outer_vjp(g, out, ins, needs, *, M, N):
    a, b = ins
    return [_as(mv(g, b, M=M, N=N, trans=False), a) if needs[0] else None,
            _as(mv(g, a, M=M, N=N, trans=True), b) if needs[1] else None]


outer = defop("outer", _outer_type, _outer_forward, jvp=_outer_jvp, vjp=_outer_vjp, zeroed_output=True)


# ---------------------------------------------------------------- dot
def _dot_type(a, b, *, N):
    _need(_size(a) == N and _size(b) == N, f"internal: bad dot operands {a}, {b}")
    return TensorType(())


def _dot_forward(em, out, a, b, *, N):
    em.prim("dot", [out], [a, b], N=N)


def _dot_jvp(out, ins, tans, **at):
    return product_rule(dot, ins, tans, at)


def _dot_vjp(g, out, ins, needs, *, N):
    from .elementwise import mul

    a, b = ins
    return [mul(g, b) if needs[0] else None, mul(g, a) if needs[1] else None]


dot = defop("dot", _dot_type, _dot_forward, jvp=_dot_jvp, vjp=_dot_vjp)


# ---------------------------------------------------------------- bmm
# C[t] = op(A[t]) op(B[t]) over a batch: element t = (i_1, ..., i_d) of
# `batch` has its matrices at oa + sum i_k * sa_k in A (ob, sb in B; oc, so
# in C), each a row-major matrix whose rows are lda (ldb, ldc) elements
# apart - by default packed (K or M for A, N or K for B, N for C).  So a
# matrix can be a block of a wider one: attention's per-head q, k and v read
# in place from the [B, L, 3E] input projection, the per-head outputs
# written in place into [B, L, E].  A zero stride in A or B broadcasts it; a
# zero stride in C sums over that batch dimension (the cotangent of a
# broadcast operand).  When the blocks of C do not cover it exactly once
# (such a sum, or the blocks of one operand's gradient inside a wider
# buffer), the op adds into a zeroed output.  One strided sgemm per batch
# element, never a copy.
def _lds(M, N, K, ta, tb, lda, ldb, ldc):
    return (lda if lda is not None else (M if ta else K), ldb if ldb is not None else (K if tb else N),
            ldc if ldc is not None else N)


def _extent(offset, batch, strides, rows, cols, ld) -> int:
    """One past the last element a batch of rows x cols matrices touches."""
    return offset + sum((n - 1) * st for n, st in zip(batch, strides)) + (rows - 1) * ld + cols


def bmm_covers_output(attrs, size: int) -> bool:
    """The blocks of C are `size` elements, each written exactly once."""
    lda, ldb, ldc = _lds(attrs["M"], attrs["N"], attrs["K"], attrs["ta"], attrs["tb"],
                         attrs.get("lda"), attrs.get("ldb"), attrs.get("ldc"))
    if attrs.get("oc", 0):
        return False
    return covers_once([*attrs["batch"], attrs["M"], attrs["N"]], [*attrs["so"], ldc, 1], size)


def _bmm_type(a, b, *, out_shape, batch, sa, sb, so, M, N, K, ta, tb, oa=0, ob=0, oc=0, lda=None, ldb=None,
              ldc=None):
    _need(a.dtype == "float32" and b.dtype == "float32", f"needs float32 operands, got {a} and {b}")
    lda, ldb, ldc = _lds(M, N, K, ta, tb, lda, ldb, ldc)
    _need(_extent(oa, batch, sa, K if ta else M, M if ta else K, lda) <= _size(a)
          and _extent(ob, batch, sb, N if tb else K, K if tb else N, ldb) <= _size(b)
          and _extent(oc, batch, so, M, N, ldc) <= _size(TensorType(tuple(out_shape))),
          f"internal: batched {M}x{K} @ {K}x{N} blocks run past {a}, {b} or {tuple(out_shape)}")
    return TensorType(tuple(out_shape))


def _bmm_forward(em, out, a, b, *, out_shape, batch, sa, sb, so, M, N, K, ta, tb, oa=0, ob=0, oc=0, lda=None,
                 ldb=None, ldc=None):
    lda, ldb, ldc = _lds(M, N, K, ta, tb, lda, ldb, ldc)
    attrs = dict(M=M, N=N, K=K, ta=ta, tb=tb, batch=tuple(batch), sa=tuple(sa), sb=tuple(sb), so=tuple(so))
    if (oa, ob, oc, lda, ldb, ldc) != (0, 0, 0) + _lds(M, N, K, ta, tb, None, None, None):
        attrs.update(oa=oa, ob=ob, oc=oc, lda=lda, ldb=ldb, ldc=ldc)
    em.prim("batched_gemm", [out], [a, b], acc=em.zeroed_output, **attrs)


def _bmm_jvp(out, ins, tans, **at):
    return product_rule(bmm, ins, tans, at)


def _bmm_vjp(g, out, ins, needs, *, out_shape, batch, sa, sb, so, M, N, K, ta, tb, oa=0, ob=0, oc=0, lda=None,
             ldb=None, ldc=None):
    # The transposed products of the forward one, over the same batch; each
    # operand's layout (offset, batch strides, row stride) goes with it.
    a, b = ins
    lda, ldb, ldc = _lds(M, N, K, ta, tb, lda, ldb, ldc)
    A, B, G = (oa, sa, lda), (ob, sb, ldb), (oc, so, ldc)

    def product(x, y, X, Y, Z, shape, **dims):
        return bmm(x, y, out_shape=shape, batch=batch, sa=X[1], sb=Y[1], so=Z[1], oa=X[0], ob=Y[0], oc=Z[0],
                   lda=X[2], ldb=Y[2], ldc=Z[2], **dims)

    da = db = None
    if needs[0]:
        if not ta:  # dA[M,K] = g op(B)^T
            da = product(g, b, G, B, A, a.shape, M=M, N=K, K=N, ta=False, tb=not tb)
        else:  # A is [K,M]: dA = op(B) g^T
            da = product(b, g, B, G, A, a.shape, M=K, N=M, K=N, ta=tb, tb=True)
    if needs[1]:
        if not tb:  # dB[K,N] = op(A)^T g
            db = product(a, g, A, G, B, b.shape, M=K, N=N, K=M, ta=not ta, tb=False)
        else:  # B is [N,K]: dB = g^T op(A)
            db = product(g, a, G, A, B, b.shape, M=N, N=K, K=M, ta=True, tb=ta)
    return [da, db]


def _bmm_zeroed(attrs) -> bool:
    return not bmm_covers_output(attrs, _size(TensorType(tuple(attrs["out_shape"]))))


bmm = defop("bmm", _bmm_type, _bmm_forward, jvp=_bmm_jvp, vjp=_bmm_vjp, zeroed_output=_bmm_zeroed)


# ---------------------------------------------------------------- matmul
def matmul_type(a, b):
    """numpy's matmul shape rule: 1-D operands are promoted (and the added
    dimension removed again), leading batch dimensions broadcast."""
    if a.dtype != "float32" or b.dtype != "float32":
        raise ShapeError(f"matmul needs float32 operands, got {a} and {b}")
    sa, sb = a.shape, b.shape
    if not sa or not sb:
        raise ShapeError(f"matmul of a 0-d operand: {a} @ {b} (use *)")
    pa = (1,) + sa if len(sa) == 1 else sa
    pb = sb + (1,) if len(sb) == 1 else sb
    if pa[-1] != pb[-2]:
        raise ShapeError(f"inner dimensions differ: {a} @ {b}")
    from .registry import broadcast_shapes

    try:
        batch = broadcast_shapes(pa[:-2], pb[:-2])
    except ShapeError:
        raise ShapeError(f"batch dimensions {pa[:-2]} and {pb[:-2]} do not broadcast: {a} @ {b}") from None
    out = batch + (pa[-2], pb[-1])
    if len(sb) == 1:
        out = out[:-1]
    if len(sa) == 1:
        out = out[:-2] + out[-1:] if len(sb) != 1 else out[:-1]
    return TensorType(out)


def _batch_strides(shape, batch, matrix):
    """Element strides of each batch dimension of a contiguous operand of
    `shape` (its leading dims right-aligned with `batch`), 0 where it broadcasts."""
    own = shape[:-2]
    strides = []
    step = matrix
    inner = []
    for n in reversed(own):
        inner.append(step)
        step *= n
    inner = list(reversed(inner))
    lead = len(batch) - len(own)
    for d, n in enumerate(batch):
        k = d - lead
        strides.append(0 if k < 0 or own[k] == 1 else inner[k])
    return tuple(strides)


def matmul(a, b):
    """numpy's matmul, staged as one of the internal products: 2-D and
    foldable batches (x[..., K] @ w[K, N]) as one gemm, matrix-vector as
    gemv, and everything else as a strided batch of gemms (bmm)."""
    from ..staging import staging_error
    from .registry import as_rep
    from .shape import reshape

    a, b = as_rep(a), as_rep(b)
    try:
        out_type = matmul_type(a.type, b.type)
    except ShapeError as e:
        raise staging_error(f"matmul: {e}") from None
    sa, sb = a.shape, b.shape
    if len(sa) >= 2 and len(sb) == 1:  # batches of rows fold into one gemv
        out = mv(a, b, M=a.size // sb[0], N=sb[0], trans=False)
    elif len(sa) == 1 and len(sb) == 2:
        out = mv(b, a, M=sb[0], N=sb[1], trans=True)
    elif len(sa) == 1 and len(sb) == 1:
        return dot(a, b, N=sa[0])
    elif len(sb) == 2:  # [..., M, K] @ [K, N]: the batch folds into M
        out = mm(a, b, M=a.size // sa[-1], N=sb[1], K=sa[-1], ta=False, tb=False)
    else:
        pa = (1,) + sa if len(sa) == 1 else sa
        m, k, n = pa[-2], pa[-1], sb[-1]
        batch = tuple(out_type.shape[:-2]) if len(sa) > 1 else tuple(out_type.shape[:-1])
        full = batch + (m, n)
        ga = reshape(a, shape=pa) if pa != sa else a
        out = bmm(ga, b, out_shape=full, batch=batch, sa=_batch_strides(pa, batch, m * k),
                  sb=_batch_strides(sb, batch, k * n), so=_batch_strides(full, batch, m * n),
                  M=m, N=n, K=k, ta=False, tb=False)
    return out if out.shape == out_type.shape else reshape(out, shape=out_type.shape)
