// Thin wrappers over scipy-openblas32's CBLAS: row-major, transpose flags
// instead of transposed copies, beta = 1 to accumulate into a gradient.
#pragma once
#include <cblas.h>

namespace lt {

// C[M,N] = op(A) op(B) + beta C;  op(A) is [M,K], op(B) is [K,N].
inline void gemm(bool ta, bool tb, int M, int N, int K, const float* A, const float* B, float* C, float beta) {
  scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
                    A, ta ? M : K, B, tb ? K : N, beta, C, N);
}

// y = op(A) x + beta y, A is [M,N]; op(A) = A^T when `trans`.
inline void gemv(bool trans, int M, int N, const float* A, const float* x, float* y, float beta) {
  scipy_cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, M, N, 1.0f, A, N, x, 1, beta, y, 1);
}

// A[M,N] += x[M] y[N]^T
inline void ger(int M, int N, const float* x, const float* y, float* A) {
  scipy_cblas_sger(CblasRowMajor, M, N, 1.0f, x, 1, y, 1, A, N);
}

inline void dot(int N, const float* a, const float* b, float* out, bool accumulate) {
  float s = scipy_cblas_sdot(N, a, 1, b, 1);
  *out = accumulate ? *out + s : s;
}

}  // namespace lt
