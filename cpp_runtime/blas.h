// Thin wrappers over scipy-openblas32's CBLAS: row-major, transpose flags
// instead of transposed copies, beta = 1 to accumulate into a gradient.
#pragma once
#include <initializer_list>
#include <cblas.h>

#include <cstring>
#include <vector>

namespace lt {

// C[M,N] = op(A) op(B) + beta C;  op(A) is [M,K], op(B) is [K,N]; rows lda,
// ldb, ldc elements apart.
inline void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                 int ldc, float beta) {
  scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
                    A, lda, B, ldb, beta, C, ldc);
}

// The same for packed matrices.
inline void gemm(bool ta, bool tb, int M, int N, int K, const float* A, const float* B, float* C, float beta) {
  gemm(ta, tb, M, N, K, A, ta ? M : K, B, tb ? K : N, C, N, beta);
}

// One gemm per element of a (broadcast) batch: matrix t of A, B and C starts
// at sum_d idx_d * stride_d over the batch dimensions `dims` (stride 0: a
// broadcast operand, or - for C - a sum over that dimension, with beta = 1);
// its rows are lda, ldb, ldc elements apart (blocks of wider matrices).
inline void batched_gemm(bool ta, bool tb, int M, int N, int K, const float* A, const float* B, float* C,
                         float beta, std::initializer_list<long> dims, std::initializer_list<long> sa,
                         std::initializer_list<long> sb, std::initializer_list<long> sc, int lda, int ldb, int ldc) {
  const int nd = static_cast<int>(dims.size());
  const long* dim = dims.begin();
  const long *as = sa.begin(), *bs = sb.begin(), *cs = sc.begin();
  long idx[16] = {0};
  long total = 1;
  for (int d = 0; d < nd; ++d) total *= dim[d];
  long oa = 0, ob = 0, oc = 0;
  for (long t = 0; t < total; ++t) {
    gemm(ta, tb, M, N, K, A + oa, lda, B + ob, ldb, C + oc, ldc, beta);
    for (int d = nd - 1; d >= 0; --d) {
      oa += as[d];
      ob += bs[d];
      oc += cs[d];
      if (++idx[d] < dim[d]) break;
      oa -= as[d] * dim[d];
      ob -= bs[d] * dim[d];
      oc -= cs[d] * dim[d];
      idx[d] = 0;
    }
  }
}

// Packed matrices.
inline void batched_gemm(bool ta, bool tb, int M, int N, int K, const float* A, const float* B, float* C,
                         float beta, std::initializer_list<long> dims, std::initializer_list<long> sa,
                         std::initializer_list<long> sb, std::initializer_list<long> sc) {
  batched_gemm(ta, tb, M, N, K, A, B, C, beta, dims, sa, sb, sc, ta ? M : K, tb ? K : N, N);
}

// y = op(A) x + beta y, A is [M,N]; op(A) = A^T when `trans`.
inline void gemv(bool trans, int M, int N, const float* A, const float* x, float* y, float beta) {
  scipy_cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, M, N, 1.0f, A, N, x, 1, beta, y, 1);
}

// A[M,N] += x[M] y[N]^T
inline void ger(int M, int N, const float* x, const float* y, float* A) {
  scipy_cblas_sger(CblasRowMajor, M, N, 1.0f, x, 1, y, 1, A, N);
}

// Accumulated in double (dsdot), as every other sum (see reduce_sum in kernels.h).
inline void dot(int N, const float* a, const float* b, float* out, bool accumulate) {
  double s = scipy_cblas_dsdot(N, a, 1, b, 1);
  *out = accumulate ? float(*out + s) : float(s);
}

// Rows a_r (length M) and b_r (length N) of outer products a_r b_r^T whose
// sum is added to a gradient at once: flush() is one gemm, C += A^T B.
// The storage grows to the largest call seen and is kept for the next.
// start(M, N, false) keeps the rows of earlier calls: an accumulating train
// step logs the rows of K calls and flushes them in the K-th, as one gemm.
class OuterLog {
 public:
  void start(int M, int N, bool fresh = true) {
    M_ = M;
    N_ = N;
    if (fresh) rows_ = 0;
  }
  void append(const float* a, const float* b, int rows) {
    std::size_t need = static_cast<std::size_t>(rows_ + rows);
    if (a_.size() < need * M_) a_.resize(2 * need * M_);
    if (b_.size() < need * N_) b_.resize(2 * need * N_);
    std::memcpy(a_.data() + static_cast<std::size_t>(rows_) * M_, a, sizeof(float) * rows * M_);
    std::memcpy(b_.data() + static_cast<std::size_t>(rows_) * N_, b, sizeof(float) * rows * N_);
    rows_ += rows;
  }
  void flush(float* C) {
    if (rows_) gemm(true, false, M_, N_, rows_, a_.data(), b_.data(), C, 1.0f);
    rows_ = 0;
  }

 private:
  int M_ = 0, N_ = 0, rows_ = 0;
  std::vector<float> a_, b_;
};

}  // namespace lt
