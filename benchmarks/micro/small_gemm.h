// A register-blocked gemm for small packed matrices, written to be measured
// against OpenBLAS on the char transformer's per-head products (32x32x16 and the
// like, 64 per batched product) by batched_gemm_bench.cpp.  lantern_stage does
// not use it (benchmarks/NOTES.md has the measurements and why): the generated
// code calls lt::batched_gemm (cpp_runtime/blas.h), one lt::gemm per matrix,
// which on AVX2 CPUs without AVX-512 takes products of few rows with B read in
// place (small_rows::gemm, no packed panel) and gives the rest to OpenBLAS.
// For matrices this small OpenBLAS's per-call cost - argument checks, buffer
// set-up, packing A and B into its panel layout - can exceed the multiply-adds
// themselves.  Here op(B) is copied (only when transposed, or when N is not a
// multiple of W) into a zero-padded K x roundW(N) panel on the stack, and C is
// computed in blocks held in registers across the whole K loop: rows in groups
// of 8, as 4 x 2W blocks and an 8 x W block for the last W columns or fewer
// (eight W-wide accumulators each), then the last M mod 8 rows one at a time
// (W = 16 floats with AVX-512, else 8).
#pragma once
#if defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace lt {

// Sizes small_gemm takes: every dimension at most this, so that the packed
// panel of op(B) (K x roundW(N) floats, 16 KB) lives on the stack.
constexpr int kSmallGemmMax = 64;

namespace small_gemm_detail {

#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float vec __attribute__((vector_size(4 * W)));
typedef float vec_u __attribute__((vector_size(4 * W), aligned(4)));  // an unaligned load / store

inline vec fmadd(vec a, vec b, vec c) {
#if defined(__AVX512F__)
  return (vec)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  return (vec)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// C[i0:i0+MR, j0:j0+W*NV] (clipped to N columns) from rows of A read as
// A(i, k) = A[i * as_i + k * as_k] and the packed panel P[k * ldp + j].
template <int MR, int NV>
inline void block(int N, int K, const float* A, long as_i, long as_k, const float* P, int ldp, float* C, int ldc,
                  int i0, int j0, bool accumulate) {
  vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vec{};
  const float* a = A + i0 * as_i;
  const float* p = P + j0;
  for (int k = 0; k < K; ++k) {
    vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const vec_u*>(p + k * ldp + W * v);
    for (int r = 0; r < MR; ++r) {
      const float x = a[r * as_i + k * as_k];
      const vec xs = vec{} + x;
      for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(xs, b[v], acc[r][v]);
    }
  }
  const int width = N - j0 < W * NV ? N - j0 : W * NV;
  for (int r = 0; r < MR; ++r) {
    float* c = C + static_cast<long>(i0 + r) * ldc + j0;
    if (width == W * NV) {
      for (int v = 0; v < NV; ++v) {
        vec_u* dst = reinterpret_cast<vec_u*>(c + W * v);
        *dst = accumulate ? *dst + acc[r][v] : acc[r][v];
      }
    } else {
      float lanes[W * NV];
      for (int v = 0; v < NV; ++v) *reinterpret_cast<vec_u*>(lanes + W * v) = acc[r][v];
      for (int j = 0; j < width; ++j) c[j] = accumulate ? c[j] + lanes[j] : lanes[j];
    }
  }
}

// Rows i0..i0+MR of C: (MR/2) x 2W blocks (one 1 x 2W block when MR = 1), then
// an MR x W block for the last W columns or fewer.  With MR = 8 each block has
// eight accumulators, enough independent FMA chains to cover the FMA latency.
template <int MR>
inline void row_block(int N, int K, const float* A, long as_i, long as_k, const float* P, int ldp, float* C,
                      int i0, bool accumulate) {
  int j = 0;
  for (; j + W < N; j += 2 * W)
    for (int r = 0; r < MR; r += MR / 2 > 0 ? MR / 2 : 1)
      block<(MR / 2 > 0 ? MR / 2 : 1), 2>(N, K, A, as_i, as_k, P, ldp, C, N, i0 + r, j, accumulate);
  if (j < N) block<MR, 1>(N, K, A, as_i, as_k, P, ldp, C, N, i0, j, accumulate);
}

}  // namespace small_gemm_detail

// C[M,N] = op(A) op(B) (+ C when `accumulate`), row-major, op(A) [M,K] and
// op(B) [K,N] as in lt::gemm; every dimension at most kSmallGemmMax.
inline void small_gemm(bool ta, bool tb, int M, int N, int K, const float* A, const float* B, float* C,
                       bool accumulate) {
  using namespace small_gemm_detail;
  const int ldp = (N + W - 1) / W * W;
  alignas(32) float panel[kSmallGemmMax * kSmallGemmMax];
  const float* P = B;
  int ld = N;
  if (tb || ldp != N) {  // op(B) as K rows of ldp floats (zero-padded)
    if (tb) {
      for (int j = 0; j < N; ++j)
        for (int k = 0; k < K; ++k) panel[k * ldp + j] = B[static_cast<long>(j) * K + k];
    } else {
      for (int k = 0; k < K; ++k)
        for (int j = 0; j < N; ++j) panel[k * ldp + j] = B[static_cast<long>(k) * N + j];
    }
    for (int k = 0; k < K; ++k)
      for (int j = N; j < ldp; ++j) panel[k * ldp + j] = 0.0f;
    P = panel;
    ld = ldp;
  }
  const long as_i = ta ? 1 : K, as_k = ta ? M : 1;
  int i = 0;
  for (; i + 8 <= M; i += 8) row_block<8>(N, K, A, as_i, as_k, P, ld, C, i, accumulate);
  for (; i < M; ++i) row_block<1>(N, K, A, as_i, as_k, P, ld, C, i, accumulate);
}

}  // namespace lt
