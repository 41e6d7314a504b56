// Thin wrappers over scipy-openblas32's CBLAS: row-major, transpose flags
// instead of transposed copies, beta = 1 to accumulate into a gradient.
#pragma once
#include <initializer_list>
#include <cblas.h>

#include <cstring>
#include <vector>

// With AVX2 + FMA and without AVX-512, OpenBLAS runs its Haswell kernels,
// which have no small-matrix path: for products of a few rows it packs both
// operands on every call.  There register-blocked kernels that read B in
// place do better (small_rows below, measured on a Zen 3).  On AVX-512 CPUs
// OpenBLAS's SkylakeX kernels have a small-matrix path for products of at most
// ~100^3 multiply-adds (LT_OPENBLAS_SMALL_MATRIX), which beats ours (Zen 4:
// 1.2-1.5x faster at 2-4 rows of 750 x 300, 1.1-1.2x at the LSTM's 20 x 200 x
// 50, 1.1-1.5x at 1024 x 64 x 1-8); past it they pack again.  So there only x
// W^T of a few rows (packed on every call whatever the size) and shallow
// products past that bound are routed to small_rows.
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LT_SMALL_ROWS_GEMM 1
#ifdef __AVX512F__
#define LT_OPENBLAS_SMALL_MATRIX 1
#endif
#endif

namespace lt {

#ifdef LT_SMALL_ROWS_GEMM
namespace small_rows {

// Products of at most this many rows take the kernel below.  Measured on a
// Zen 3 against OpenBLAS 0.3.34 (Haswell): 20x200x50 4.5 vs 5.7 us, 20x200x26
// 2.5 vs 3.4, 4x752x300 44 vs 54, 16x752x300 105 vs 113; 64x752x300 356 vs
// 340 (OpenBLAS ahead from there).
constexpr int kMaxRows = 32;

// Products with B transposed (x W^T) take gemm_bt below when they have at
// most kFewRowsBt rows, or at most kMaxRowsBt rows and a depth of at least
// kMinDepthBt.  OpenBLAS packs W on every call, which for a few rows costs
// more than the product; gemm_bt's per-element lane sums cost more at a
// small depth.  Measured on a Zen 3 (us, gemm_bt against OpenBLAS):
// 750 x 300 at 1 / 2 / 4 / 8 / 16 / 24 / 32 rows, 20 / 18 / 27 / 47 / 90 /
// 142 / 196 against 98 / 78 / 64 / 83 / 119 / 155 / 194; 4 x 200 x 50 2.1
// against 2.9, 12 x 200 x 64 5.2 against 5.9; but 8 x 200 x 26 2.8 against
// 2.2 and 20 x 200 x 50 11.3 against 8.0.
//
// On AVX-512 CPUs (measured on a Zen 4, OpenBLAS SkylakeX, W evicted from L2
// between calls; us, gemm_bt against OpenBLAS): 750 x 300 at 2 / 4 / 8 / 16
// rows 26 / 40 / 61 / 136 against 79 / 86 / 104 / 141, 450 x 300 at 4 / 8 rows
// 21 / 31 against 50 / 61.  From 8 rows on the product is bound by the FMA rate
// rather than by reading W, and OpenBLAS's 512-bit kernels on a CPU with two
// 512-bit FMA units (Intel's) would outrun this 256-bit kernel, hence the lower
// row bound there (not measured on Intel).
constexpr int kFewRowsBt = 4;
#ifdef LT_OPENBLAS_SMALL_MATRIX
constexpr int kMaxRowsBt = 8;
#else
constexpr int kMaxRowsBt = 24;
#endif
constexpr int kMinDepthBt = 64;

inline bool takes_bt(int M, int K) { return M <= kFewRowsBt || (M <= kMaxRowsBt && K >= kMinDepthBt); }

// Products of any number of rows that are shallow and narrow (K <= kMaxShallowDepth,
// N a multiple of 8 up to kMaxShallowCols, B's rows at most that far apart) and
// not accumulated also take the kernel below: for them OpenBLAS's packing and
// its zeroing of C before a beta = 0 product (a memset) cost more than the
// panel's reads of B, whose panel stays in L1.  Measured on a Zen 3 (time of
// the kernel / OpenBLAS's, M = 64 to 5120): 0.71-0.93 for K 1-96 and N 32-96
// (0.89 for the PINN's 1024 x 64 x 64, 0.71 for its 1024 x 64 x 2); but 1.1-1.4
// with a masked last panel (N 26), 1.3-2.0 for N <= 10, 1.05-1.17 at a
// power-of-two B stride of 128 floats (a panel's rows then share few L1 sets),
// and 0.98-1.04 when accumulating (beta = 1, no memset to save).
constexpr int kMaxShallowDepth = 96;
constexpr int kMaxShallowCols = 96;

// On AVX-512 CPUs shallow products take the kernel only past OpenBLAS's
// small-matrix path.  Measured on a Zen 4 (time of the kernel / OpenBLAS's,
// M = 1024, beta = 0): N 32 at K 8 / 16 / 32 / 64 / 96 1.12 / 1.10 / 0.82 /
// 0.84 / 0.90, N 64 at K 8 / 16 / 64 1.11 / 0.81 / 0.88; 512 x 64 x 64 0.88,
// 256 x 64 x 64 0.85, 512 x 64 x 26 1.01: the crossing lies between M N K =
// 0.85e6 and 1.05e6, where OpenBLAS's path ends (100^3).
constexpr double kOpenBlasSmallMatrixMacs = 1e6;

inline bool takes_shallow(int N, int K, int ldb) {
  return K <= kMaxShallowDepth && N >= 16 && N % 8 == 0 && ldb <= kMaxShallowCols;
}

// Whether op(A) B with B as it is takes small_rows::gemm: few rows, or shallow
// and narrow - on AVX-512 CPUs only the latter, past OpenBLAS's small path.
inline bool takes_plain(bool ta, int M, int N, int K, int ldb, float beta) {
  const bool shallow = !ta && beta == 0.0f && takes_shallow(N, K, ldb);
#ifdef LT_OPENBLAS_SMALL_MATRIX
  return shallow && double(M) * N * K > kOpenBlasSmallMatrixMacs;
#else
  return shallow || (M <= kMaxRows && (beta == 0.0f || beta == 1.0f));
#endif
}

// The mask of a vector's first n lanes (n in 0..8), for masked loads and stores.
inline __m256i first_lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// C[MR, 8 NV] (+)= op(A)[MR, K] B[K, 8 NV] in 6 x 2 = 12 accumulators (enough
// independent FMA chains to hide the FMA latency); the last of the NV column
// vectors holds only the lanes set in `mask` when Masked.  Each element is one
// FMA chain over k in order.
template <int MR, int NV, bool Masked>
inline __attribute__((always_inline)) void block(int K, const float* A, long as_i, long as_k, const float* B, int ldb,
                                                 float* C, int ldc, bool accumulate, __m256i mask) {
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    __m256 b[NV];
    const float* row = B + static_cast<long>(k) * ldb;
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v)
      b[v] = Masked && v == NV - 1 ? _mm256_maskload_ps(row + 8 * v, mask) : _mm256_loadu_ps(row + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * as_i + k * as_k);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      float* c = C + static_cast<long>(r) * ldc + 8 * v;
      if (Masked && v == NV - 1) {
        const __m256 sum = accumulate ? _mm256_add_ps(_mm256_maskload_ps(c, mask), acc[r][v]) : acc[r][v];
        _mm256_maskstore_ps(c, mask, sum);
      } else {
        _mm256_storeu_ps(c, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c), acc[r][v]) : acc[r][v]);
      }
    }
}

// The columns of one panel of B (8 NV wide, read from cache for every block of
// rows), all M rows: blocks of 6, then the rest as one block.
template <int NV, bool Masked>
inline void panel(int M, int K, const float* A, long as_i, long as_k, const float* B, int ldb, float* C, int ldc,
                  bool accumulate, __m256i mask) {
  int i = 0;
  for (; i + 6 <= M; i += 6) block<6, NV, Masked>(K, A + i * as_i, as_i, as_k, B, ldb, C + static_cast<long>(i) * ldc, ldc, accumulate, mask);
  const float* a = A + i * as_i;
  float* c = C + static_cast<long>(i) * ldc;
  switch (M - i) {
    case 5: block<5, NV, Masked>(K, a, as_i, as_k, B, ldb, c, ldc, accumulate, mask); break;
    case 4: block<4, NV, Masked>(K, a, as_i, as_k, B, ldb, c, ldc, accumulate, mask); break;
    case 3: block<3, NV, Masked>(K, a, as_i, as_k, B, ldb, c, ldc, accumulate, mask); break;
    case 2: block<2, NV, Masked>(K, a, as_i, as_k, B, ldb, c, ldc, accumulate, mask); break;
    case 1: block<1, NV, Masked>(K, a, as_i, as_k, B, ldb, c, ldc, accumulate, mask); break;
    default: break;
  }
}

// C[MR, N] (+)= op(A)[MR, K] B[K, N] for MR <= kStreamRows rows and a deep K
// (a chunk of few rows times a weight matrix: the input gradient dZ U).
// Panels read B down all K rows 16 columns at a time, ldb floats apart,
// which for one pass over a matrix bigger than L2 ran at about a third of
// the bandwidth of reading it in order; here B's rows are read in order, KB
// at a time, into MR rows of sums held in L1 (kStreamCols columns at a time).
// Each element is one FMA chain over k in order from zero, added to C when
// accumulating: the same sums as block()'s.
constexpr int kStreamRows = 4;
constexpr int kStreamMinDepth = 128;
constexpr int kStreamCols = 512;

template <int MR>
inline void stream_rows(int N, int K, const float* A, long as_i, long as_k, const float* B, int ldb, float* C, int ldc,
                        bool accumulate) {
  constexpr int KB = 4;  // rows of B per pass over the sums (2 for 3-4 rows, fewer broadcasts held: slower)
  alignas(32) float sums[MR][kStreamCols];
  for (int j0 = 0; j0 < N; j0 += kStreamCols) {
    const int n = N - j0 < kStreamCols ? N - j0 : kStreamCols;
    const int n8 = n & ~7;
    const __m256i mask = first_lanes(n - n8);
    const int width = n8 < n ? n8 + 8 : n8;  // the masked last vector's lanes past n stay zero
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < width; v += 8) _mm256_store_ps(&sums[r][v], _mm256_setzero_ps());
    const float* b = B + j0;
    int k = 0;
    for (; k + KB <= K; k += KB, b += static_cast<long>(KB) * ldb) {
      __m256 a[MR][KB];
      for (int r = 0; r < MR; ++r)
        for (int t = 0; t < KB; ++t) a[r][t] = _mm256_broadcast_ss(A + r * as_i + (k + t) * as_k);
      for (int v = 0; v < width; v += 8) {
        __m256 row[KB];
        for (int t = 0; t < KB; ++t)
          row[t] = v < n8 ? _mm256_loadu_ps(b + static_cast<long>(t) * ldb + v)
                          : _mm256_maskload_ps(b + static_cast<long>(t) * ldb + v, mask);
        for (int r = 0; r < MR; ++r) {
          __m256 s = _mm256_load_ps(&sums[r][v]);
          for (int t = 0; t < KB; ++t) s = _mm256_fmadd_ps(a[r][t], row[t], s);
          _mm256_store_ps(&sums[r][v], s);
        }
      }
    }
    for (; k < K; ++k, b += ldb) {
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * as_i + k * as_k);
        for (int v = 0; v < width; v += 8) {
          const __m256 row = v < n8 ? _mm256_loadu_ps(b + v) : _mm256_maskload_ps(b + v, mask);
          _mm256_store_ps(&sums[r][v], _mm256_fmadd_ps(a, row, _mm256_load_ps(&sums[r][v])));
        }
      }
    }
    for (int r = 0; r < MR; ++r) {
      float* c = C + static_cast<long>(r) * ldc + j0;
      for (int v = 0; v < n8; v += 8) {
        const __m256 s = _mm256_load_ps(&sums[r][v]);
        _mm256_storeu_ps(c + v, accumulate ? _mm256_add_ps(_mm256_loadu_ps(c + v), s) : s);
      }
      if (n8 < n) {
        const __m256 s = _mm256_load_ps(&sums[r][n8]);
        _mm256_maskstore_ps(c + n8, mask, accumulate ? _mm256_add_ps(_mm256_maskload_ps(c + n8, mask), s) : s);
      }
    }
  }
}

// C[M,N] (+)= op(A) B, B not transposed (rows of N contiguous floats).
inline void gemm(bool ta, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                 bool accumulate) {
  const long as_i = ta ? 1 : lda, as_k = ta ? lda : 1;
  if (M <= kStreamRows && K >= kStreamMinDepth) {
    switch (M) {
      case 1: stream_rows<1>(N, K, A, as_i, as_k, B, ldb, C, ldc, accumulate); return;
      case 2: stream_rows<2>(N, K, A, as_i, as_k, B, ldb, C, ldc, accumulate); return;
      case 3: stream_rows<3>(N, K, A, as_i, as_k, B, ldb, C, ldc, accumulate); return;
      case 4: stream_rows<4>(N, K, A, as_i, as_k, B, ldb, C, ldc, accumulate); return;
      default: break;
    }
  }
  const __m256i none = _mm256_setzero_si256();
  int j = 0;
  for (; j + 16 <= N; j += 16) panel<2, false>(M, K, A, as_i, as_k, B + j, ldb, C + j, ldc, accumulate, none);
  if (N - j >= 8) {
    panel<1, false>(M, K, A, as_i, as_k, B + j, ldb, C + j, ldc, accumulate, none);
    j += 8;
  }
  if (j < N) {
    const __m256i lanes = first_lanes(N - j);
    panel<1, true>(M, K, A, as_i, as_k, B + j, ldb, C + j, ldc, accumulate, lanes);
  }
}

// Sum of each of four vectors' lanes: [sum a, sum b, sum c, sum d].
inline __m128 lane_sums(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// C[MR, NR] (+)= A[MR, K] B[NR, K]^T with rows of A and of B contiguous in k:
// MR x NR dot products, each in one 8-lane accumulator over k in order (the
// last K % 8 through `tail`), its lanes summed at the end.
template <int MR, int NR>
inline __attribute__((always_inline)) void dot_block(int K, const float* A, int lda, const float* B, int ldb, float* C,
                                                     int ldc, bool accumulate, __m256i tail) {
  __m256 acc[MR * NR];
#pragma GCC unroll 8
  for (int t = 0; t < MR * NR; ++t) acc[t] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 b[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      b[c] = _mm256_loadu_ps(B + static_cast<long>(c) * ldb + k);
      // Keep the vector in a register: g++ otherwise folds its load into
      // every FMA that uses it (MR or NR loads instead of one), and the loop
      // becomes bound by loads instead of FMAs.
      __asm__("" : "+x"(b[c]));
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      __m256 a = _mm256_loadu_ps(A + static_cast<long>(r) * lda + k);
      __asm__("" : "+x"(a));
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r * NR + c] = _mm256_fmadd_ps(a, b[c], acc[r * NR + c]);
    }
  }
  if (k < K) {
    __m256 b[NR];
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) b[c] = _mm256_maskload_ps(B + static_cast<long>(c) * ldb + k, tail);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_maskload_ps(A + static_cast<long>(r) * lda + k, tail);
#pragma GCC unroll 8
      for (int c = 0; c < NR; ++c) acc[r * NR + c] = _mm256_fmadd_ps(a, b[c], acc[r * NR + c]);
    }
  }
  float sums[MR * NR];
  int t = 0;
#pragma GCC unroll 4
  for (; t + 4 <= MR * NR; t += 4) _mm_storeu_ps(sums + t, lane_sums(acc[t], acc[t + 1], acc[t + 2], acc[t + 3]));
#pragma GCC unroll 4
  for (; t < MR * NR; ++t) sums[t] = _mm_cvtss_f32(lane_sums(acc[t], acc[t], acc[t], acc[t]));
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NR; ++c) {
      float* out = C + static_cast<long>(r) * ldc + c;
      *out = accumulate ? *out + sums[r * NR + c] : sums[r * NR + c];
    }
}

// The rows of A against NR rows of B (read from L1 for every block of rows):
// blocks of MR rows, then the rest as one block.  MR x NR accumulators and
// NR rows of B fit in the 16 vector registers.
template <int NR>
inline void dot_columns(int M, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                        bool accumulate, __m256i tail) {
  constexpr int MR = NR >= 4 ? 2 : 4;
  int i = 0;
  for (; i + MR <= M; i += MR)
    dot_block<MR, NR>(K, A + static_cast<long>(i) * lda, lda, B, ldb, C + static_cast<long>(i) * ldc, ldc, accumulate, tail);
  const float* a = A + static_cast<long>(i) * lda;
  float* c = C + static_cast<long>(i) * ldc;
  switch (M - i) {
    case 3: dot_block<3, NR>(K, a, lda, B, ldb, c, ldc, accumulate, tail); break;
    case 2: dot_block<2, NR>(K, a, lda, B, ldb, c, ldc, accumulate, tail); break;
    case 1: dot_block<1, NR>(K, a, lda, B, ldb, c, ldc, accumulate, tail); break;
    default: break;
  }
}

// C[M,N] (+)= A B^T, A [M,K] and B [N,K] with rows contiguous in k.  B is
// streamed once, a few of its rows at a time, against every row of A (which
// stays in cache): four rows for one or two rows of A (four independent FMA
// chains at least), two for more.
inline void gemm_bt(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                    bool accumulate) {
  const __m256i tail = first_lanes(K % 8);
  int j = 0;
  if (M <= 2)
    for (; j + 4 <= N; j += 4) dot_columns<4>(M, K, A, lda, B + static_cast<long>(j) * ldb, ldb, C + j, ldc, accumulate, tail);
  for (; j + 2 <= N; j += 2) dot_columns<2>(M, K, A, lda, B + static_cast<long>(j) * ldb, ldb, C + j, ldc, accumulate, tail);
  if (j < N) dot_columns<1>(M, K, A, lda, B + static_cast<long>(j) * ldb, ldb, C + j, ldc, accumulate, tail);
}

}  // namespace small_rows
#endif

// C[M,N] = op(A) op(B) + beta C;  op(A) is [M,K], op(B) is [K,N]; rows lda,
// ldb, ldc elements apart.
inline void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C,
                 int ldc, float beta) {
#ifdef LT_SMALL_ROWS_GEMM
  if (!tb && small_rows::takes_plain(ta, M, N, K, ldb, beta)) {
    small_rows::gemm(ta, M, N, K, A, lda, B, ldb, C, ldc, beta == 1.0f);
    return;
  }
  if (tb && !ta && small_rows::takes_bt(M, K) && (beta == 0.0f || beta == 1.0f)) {
    small_rows::gemm_bt(M, N, K, A, lda, B, ldb, C, ldc, beta == 1.0f);
    return;
  }
#endif
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
  // C += A^T B, or C = A^T B when not `accumulate` (C all zeros if no rows
  // were logged: the first write of a gradient that was not zero-filled).
  void flush(float* C, bool accumulate = true) {
    if (rows_)
      gemm(true, false, M_, N_, rows_, a_.data(), b_.data(), C, accumulate ? 1.0f : 0.0f);
    else if (!accumulate)
      std::memset(C, 0, sizeof(float) * static_cast<std::size_t>(M_) * N_);
    rows_ = 0;
  }

 private:
  int M_ = 0, N_ = 0, rows_ = 0;
  std::vector<float> a_, b_;
};

}  // namespace lt
