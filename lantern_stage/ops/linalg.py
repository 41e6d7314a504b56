"""Matrix products, lowered to OpenBLAS gemm / gemv / ger with transpose flags
(never a transposed copy).  Backward of C = A @ B is the bilinear rule
dA += dC @ B^T, dB += A^T @ dC."""
from __future__ import annotations

from .registry import ShapeError, TensorType, defop


def _matmul_type(a, b):
    if a.dtype != "float32" or b.dtype != "float32":
        raise ShapeError(f"matmul needs float32 operands, got {a} and {b}")
    sa, sb = a.shape, b.shape
    if len(sb) == 2 and len(sa) in (2, 3):
        if sa[-1] != sb[0]:
            raise ShapeError(f"inner dimensions differ: {a} @ {b}")
        return TensorType(sa[:-1] + (sb[1],))
    if len(sa) == 2 and len(sb) == 1:
        if sa[1] != sb[0]:
            raise ShapeError(f"inner dimensions differ: {a} @ {b}")
        return TensorType((sa[0],))
    if len(sa) == 1 and len(sb) == 2:
        if sa[0] != sb[0]:
            raise ShapeError(f"inner dimensions differ: {a} @ {b}")
        return TensorType((sb[1],))
    if len(sa) == 1 and len(sb) == 1:
        if sa[0] != sb[0]:
            raise ShapeError(f"lengths differ: {a} @ {b}")
        return TensorType(())
    raise ShapeError(f"unsupported operand ranks {a} @ {b} (2-D/1-D, or 3-D @ 2-D)")


def _mk(a, b):
    """(M, K, N) of the product, batch dimensions of a 3-D `a` folded into M."""
    if len(a.shape) == 1 and len(b.shape) == 2:
        return 1, a.shape[0], b.shape[1]
    if len(b.shape) == 1:
        m = a.shape[0] if len(a.shape) == 2 else 1
        return m, b.shape[0], 1
    m = a.size // a.shape[-1]
    return m, a.shape[-1], b.shape[1]


def _matmul_forward(em, out, a, b):
    m, k, n = _mk(a, b)
    if len(a.shape) >= 2 and len(b.shape) == 1:
        em.prim("gemv", [out], [a, b], M=m, N=k, trans=False)
    elif len(a.shape) == 1 and len(b.shape) == 2:
        em.prim("gemv", [out], [b, a], M=k, N=n, trans=True)
    elif len(a.shape) == 1:
        em.prim("dot", [out], [a, b], N=k)
    else:
        em.prim("gemm", [out], [a, b], M=m, N=n, K=k, ta=False, tb=False)


def _matmul_backward(em, out, dout, ins, dins):
    a, b = ins
    da, db = dins
    m, k, n = _mk(a, b)
    if len(a.shape) >= 2 and len(b.shape) == 1:  # y[m] = A[m,k] x[k]
        if da is not None:
            em.prim("ger", [da], [dout, b], M=m, N=k, acc=True)
        if db is not None:
            em.prim("gemv", [db], [a, dout], M=m, N=k, trans=True, acc=True)
    elif len(a.shape) == 1 and len(b.shape) == 2:  # y[n] = x[k] B[k,n]
        if da is not None:
            em.prim("gemv", [da], [b, dout], M=k, N=n, trans=False, acc=True)
        if db is not None:
            em.prim("ger", [db], [a, dout], M=k, N=n, acc=True)
    elif len(a.shape) == 1:  # dot
        if da is not None:
            em.map(da, "{0} * {1}", dout, b, acc=True)
        if db is not None:
            em.map(db, "{0} * {1}", dout, a, acc=True)
    else:
        if da is not None:  # dA[m,k] += dC[m,n] B[k,n]^T
            em.prim("gemm", [da], [dout, b], M=m, N=k, K=n, ta=False, tb=True, acc=True)
        if db is not None:  # dB[k,n] += A[m,k]^T dC[m,n]
            em.prim("gemm", [db], [a, dout], M=k, N=n, K=m, ta=True, tb=False, acc=True)


matmul = defop("matmul", _matmul_type, _matmul_forward, _matmul_backward)
