// 2-D convolution, forward and backward, float32, NCHW, groups = 1.
//
// Semantics are torch.nn.functional.conv2d: y[n,f,oh,ow] = b[f] +
//   sum_{c,kh,kw} w[f,c,kh,kw] * x[n, c, oh*sh - ph + kh, ow*sw - pw + kw]
// (zero outside the image), OH = (H + 2ph - KH) / sh + 1.
//
// Two implementations, chosen per call by `conv2d_use_direct`:
//  * gemm:   per image, im2col into an arena buffer and scipy_cblas_sgemm
//            (transpose flags, beta = 1 to accumulate, no transposed copies);
//            col2im for dx.  Any stride / padding / size.
//  * direct: stride 1 only.  Register-blocked AVX kernels (GCC vector
//            extensions, 8 floats = one ymm) that read the image in place:
//            the "columns" are unaligned loads at x + offset, so no im2col
//            buffer is ever written.  Output rows are cut into 8-wide vectors
//            (24 = 3, 8 = 1 for the MNIST net); a short last vector is handled
//            by a zero-padded copy of the image / gradient.
//            forward: tile FB filters x RB output vectors, reduce over C*KH*KW.
//            dx:      tile KB (c,kh,kw) columns x RB output vectors, reduce
//                     over F, then col2im-add the tile straight into dx.
//            dw:      tile FB filters x KB columns, lanes hold partial sums
//                     over pixels, reduce over a group of images, horizontal
//                     sum at the end.
//
// Dispatch (conv2d_use_direct*): direct at stride 1, except dw when an image
// group holds fewer than 16 output vectors or dw's partial sums pass 4 MB
// (then gemm); gemm otherwise.
// dx == nullptr (the first layer) skips the input gradient entirely.
//
// Measurements.  AMD EPYC (Zen 4) VM, one core pinned (taskset -c 0),
// OPENBLAS_NUM_THREADS=1, g++ 12 -O3 -march=native; peak of a pure ymm FMA
// loop ~114 GFLOP/s.  The machine is shared with other builds: variants of a
// group ran round-robin (cpp_runtime/dev/bench_conv.cpp); ms per call for
// batch 100, median (fastest run).
//
//   conv1 1->10 k5 28x28 -> 24x24          28.8 MFLOP per product
//     forward  im2col+sgemm per image      0.75 (0.71)
//              direct FB=5 x RB=4          0.39 (0.39)   74 GFLOP/s   <- used
//              direct 10x2 / 4x6 / 3x8     0.39 / 0.49 / 0.60
//     dw       im2col+sgemm per image      0.72 (0.69)
//              direct FB=5 x KB=5          0.34 (0.31)   84 GFLOP/s   <- used
//              direct 4x5 / 4x6 / 3x8      0.38 / 0.49 / 0.54
//     db       0.03;  dx not computed (dx == nullptr for the first layer)
//   conv2 10->20 k5 12x12 -> 8x8           64 MFLOP per product
//     forward  im2col+sgemm per image      2.05 (1.95)
//              direct FB=5 x RB=4          0.68 (0.63)   94 GFLOP/s   <- used
//              direct 10x2 / 4x6 / 3x8     0.69 / 1.01 / 0.77
//     dw       im2col+sgemm per image      2.70 (2.57)
//              direct 5x5, 16K-float groups 0.94 (0.85)  68 GFLOP/s   <- used
//              direct 4x5 / 4x6 / 3x8      0.86 / 0.91 / 1.02
//              direct 5x5, groups of 1 image / 6K / 64K floats: 1.54 / 1.15 / 0.96
//     dx       im2col+sgemm+col2im         2.75 (2.63)
//              direct KB=6 x RB=4          1.21 (1.06)   53 GFLOP/s   <- used
//              direct 5x4 / 3x8 / 10x2     1.19 / 1.18 / 1.45
//   Both layers, fwd + bwd through the public entry points: 3.9 (3.6) ms
//   under load; the five kernels' fastest runs add up to 2.9 ms.  The same
//   products through the gemm path: ~9.5 ms (a hand-written whole-batch im2col
//   + sgemm CNN step spent 6.6 ms in them, plus 1.7 ms of im2col / col2im).
//   Other shapes (N=8..32, C/F 3..128, k3/k5, pad 1/2): direct forward and dx
//   beat gemm by 1.1-1.8x everywhere; direct dw too, except C=F=128 on 8x8
//   (one image per group: 2.4 vs 1.2 ms), hence the dw rule above.
//
// Tried and dropped (same harness):
//  * GCC folds a reused load into each FMA (vfmadd231ps mem) and the tile goes
//    load-bound: dw 4x4 ran at 34 GFLOP/s; vload_reg pins such loads in
//    registers (~95 GFLOP/s in isolation).
//  * zmm accumulators over two vectors (half the instructions and tiles): dx
//    2% faster, forward 0-10% slower (two row loads + insert per zmm) in an
//    interleaved comparison -- Zen 4 executes a zmm FMA as two ymm halves
//    anyway.  Not worth a second code path.
//  * Unrolling the dx reduction loop by 2: 2%.  Not kept.
//  * 16 lanes (zmm) on a Sapphire Rapids Xeon (two 512-bit FMA ports): conv1's
//    forward 0.31 -> 0.28 ms, its dw slower (24-wide rows are 16 + 8 lanes, so
//    dy needs padding to 32), conv2 slower (half-empty zmm); the CNN step
//    unchanged over 21 interleaved rounds.  Not kept (benchmarks/NOTES.md).
//  * dx by input rows (reduce over F*KH, 5x fewer read-modify-writes, but
//    1.1-1.3x extra FMAs at the image edges): 1.07-1.40 ms vs 0.95 in isolation.
//  * Ordering dx columns (kw, kh, c) vs (kw, c, kh): no measurable change, kept
//    for the stated reason (no partially overlapping RMWs in a tile).
#pragma once
#include <cblas.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "arena.h"
#include "error.h"

namespace lt {

struct Conv2dShape {
  int N, C, H, W, F, KH, KW;
  int sh, sw, ph, pw;
  int OH, OW;
  std::size_t in_plane() const { return std::size_t(H) * W; }
  std::size_t out_plane() const { return std::size_t(OH) * OW; }
  std::size_t ckk() const { return std::size_t(C) * KH * KW; }
};

inline Conv2dShape conv2d_shape(int N, int C, int H, int W, int F, int KH, int KW, int sh, int sw,
                                int ph, int pw) {
  if (N < 0 || C <= 0 || H <= 0 || W <= 0 || F <= 0 || KH <= 0 || KW <= 0)
    fail("conv2d: bad shape N=%d C=%d H=%d W=%d F=%d KH=%d KW=%d", N, C, H, W, F, KH, KW);
  if (sh <= 0 || sw <= 0 || ph < 0 || pw < 0)
    fail("conv2d: bad stride (%d,%d) or padding (%d,%d)", sh, sw, ph, pw);
  if (H + 2 * ph < KH || W + 2 * pw < KW)
    fail("conv2d: kernel %dx%d larger than padded input %dx%d", KH, KW, H + 2 * ph, W + 2 * pw);
  Conv2dShape s{N, C, H, W, F, KH, KW, sh, sw, ph, pw, 0, 0};
  s.OH = (H + 2 * ph - KH) / sh + 1;
  s.OW = (W + 2 * pw - KW) / sw + 1;
  return s;
}

namespace conv_detail {

// ---------------------------------------------------------------- gemm path

// Output positions o in [lo, hi) read input index o*s + off inside [0, n).
inline void valid_range(int n, int s, int off, int count, int& lo, int& hi) {
  lo = off >= 0 ? 0 : (-off + s - 1) / s;
  hi = (n - 1 - off) < 0 ? 0 : std::min(count, (n - 1 - off) / s + 1);
  if (lo > hi) lo = hi;
}

// col[(c*KH + kh)*KW + kw][oh*OW + ow] = x[c][oh*sh - ph + kh][ow*sw - pw + kw] or 0.
inline void im2col(const float* x, float* col, const Conv2dShape& s) {
  const int P = s.OH * s.OW;
  float* row = col;
  for (int c = 0; c < s.C; ++c) {
    const float* xc = x + std::size_t(c) * s.in_plane();
    for (int kh = 0; kh < s.KH; ++kh) {
      int oh_lo, oh_hi;
      valid_range(s.H, s.sh, kh - s.ph, s.OH, oh_lo, oh_hi);
      for (int kw = 0; kw < s.KW; ++kw, row += P) {
        int ow_lo, ow_hi;
        valid_range(s.W, s.sw, kw - s.pw, s.OW, ow_lo, ow_hi);
        std::memset(row, 0, sizeof(float) * std::size_t(oh_lo) * s.OW);
        for (int oh = oh_lo; oh < oh_hi; ++oh) {
          float* r = row + std::size_t(oh) * s.OW;
          const float* xr = xc + std::size_t(oh * s.sh - s.ph + kh) * s.W + (kw - s.pw);
          for (int ow = 0; ow < ow_lo; ++ow) r[ow] = 0.f;
          if (s.sw == 1) {
            std::memcpy(r + ow_lo, xr + ow_lo, sizeof(float) * (ow_hi - ow_lo));
          } else {
            for (int ow = ow_lo; ow < ow_hi; ++ow) r[ow] = xr[ow * s.sw];
          }
          for (int ow = ow_hi; ow < s.OW; ++ow) r[ow] = 0.f;
        }
        std::memset(row + std::size_t(oh_hi) * s.OW, 0,
                    sizeof(float) * std::size_t(s.OH - oh_hi) * s.OW);
      }
    }
  }
}

// dx[c][ih][iw] += col[...] for every column entry that reads inside the image.
inline void col2im_add(const float* col, float* dx, const Conv2dShape& s) {
  const int P = s.OH * s.OW;
  const float* row = col;
  for (int c = 0; c < s.C; ++c) {
    float* dxc = dx + std::size_t(c) * s.in_plane();
    for (int kh = 0; kh < s.KH; ++kh) {
      int oh_lo, oh_hi;
      valid_range(s.H, s.sh, kh - s.ph, s.OH, oh_lo, oh_hi);
      for (int kw = 0; kw < s.KW; ++kw, row += P) {
        int ow_lo, ow_hi;
        valid_range(s.W, s.sw, kw - s.pw, s.OW, ow_lo, ow_hi);
        for (int oh = oh_lo; oh < oh_hi; ++oh) {
          const float* r = row + std::size_t(oh) * s.OW;
          float* dr = dxc + std::size_t(oh * s.sh - s.ph + kh) * s.W + (kw - s.pw);
          for (int ow = ow_lo; ow < ow_hi; ++ow) dr[ow * s.sw] += r[ow];
        }
      }
    }
  }
}

inline bool is_pointwise(const Conv2dShape& s) {
  return s.KH == 1 && s.KW == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
}

inline void gemm_forward(const float* x, const float* w, const float* b, float* y,
                         const Conv2dShape& s, Arena& arena) {
  ArenaScope scope(arena);
  const int P = s.OH * s.OW, K = int(s.ckk());
  const bool pointwise = is_pointwise(s);
  float* col = pointwise ? nullptr : arena.alloc<float>(s.ckk() * P);
  for (int n = 0; n < s.N; ++n) {
    const float* xn = x + std::size_t(n) * s.C * s.in_plane();
    float* yn = y + std::size_t(n) * s.F * P;
    if (!pointwise) im2col(xn, col, s);
    if (b)
      for (int f = 0; f < s.F; ++f) std::fill(yn + std::size_t(f) * P, yn + std::size_t(f + 1) * P, b[f]);
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.F, P, K, 1.f, w, K,
                      pointwise ? xn : col, P, b ? 1.f : 0.f, yn, P);
  }
}

// Adds into dw; into dx too, or assigns dx when `accumulate_dx` is false.
inline void gemm_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                          const Conv2dShape& s, Arena& arena, bool accumulate_dx = true) {
  ArenaScope scope(arena);
  const int P = s.OH * s.OW, K = int(s.ckk());
  const bool pointwise = is_pointwise(s);
  float* col = (pointwise || !dw) ? nullptr : arena.alloc<float>(s.ckk() * P);
  float* dcol = (pointwise || !dx) ? nullptr : arena.alloc<float>(s.ckk() * P);
  for (int n = 0; n < s.N; ++n) {
    const float* xn = x + std::size_t(n) * s.C * s.in_plane();
    const float* dyn = dy + std::size_t(n) * s.F * P;
    float* dxn = dx ? dx + std::size_t(n) * s.C * s.in_plane() : nullptr;
    if (dw) {
      if (!pointwise) im2col(xn, col, s);
      // dw[F][K] += dy_n[F][P] * col[K][P]^T
      scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.F, K, P, 1.f, dyn, P,
                        pointwise ? xn : col, P, 1.f, dw, K);
    }
    if (dx) {
      // dcol[K][P] = w[F][K]^T * dy_n[F][P]; pointwise: straight into dx with beta = 1.
      scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, s.F, 1.f, w, K, dyn, P,
                        pointwise && accumulate_dx ? 1.f : 0.f, pointwise ? dxn : dcol, P);
      if (!pointwise) {
        if (!accumulate_dx) std::memset(dxn, 0, sizeof(float) * s.C * s.in_plane());
        col2im_add(dcol, dxn, s);
      }
    }
  }
}

// -------------------------------------------------------------- direct path

typedef float vf8 __attribute__((vector_size(32)));
constexpr int kLanes = 8;

inline vf8 vload(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, vf8 v) { std::memcpy(p, &v, sizeof v); }
// Store the first n (<= 8) lanes.
inline void vstore_n(float* p, vf8 v, int n) {
  if (n == kLanes) vstore(p, v);
  else std::memcpy(p, &v, sizeof(float) * n);
}
inline vf8 vsplat(float s) { return vf8{s, s, s, s, s, s, s, s}; }
// Load a vector that a kernel reuses several times.  The empty asm makes it a
// register value: otherwise GCC folds the load into every FMA that uses it
// (vfmadd231ps mem, ...), and the kernel becomes bound by loads, not FMAs
// (measured: dw tile 4x4 at 34 GFLOP/s instead of ~100).
inline vf8 vload_reg(const float* p) {
  vf8 v = vload(p);
#if defined(__GNUC__) && defined(__AVX__)  // one ymm register (without AVX a vf8 is two)
  asm("" : "+v"(v));
#endif
  return v;
}
inline float vsum(vf8 v) {
  float t = 0.f;
  for (int i = 0; i < kLanes; ++i) t += v[i];
  return t;
}

// Geometry of the stride-1 direct kernels.  Output row `oh` is covered by
// `nch` vectors of 8; vector v = oh*nch + ch.  The input is read from a
// [C][Hq][Wq] plane that holds the padding (and room for the over-read of a
// short last vector); when no padding is needed it is x itself.  Gradients
// dy are read from [F][OH][OWv] planes (dy itself when OW % 8 == 0, else a
// copy with zero tail lanes), so vector v of a dy plane is at v*8.
struct DirectPlan {
  int nch, OWv, nvec;  // vectors per row, padded row width, vectors per plane
  int Hq, Wq;          // padded input plane
  bool copy_x;         // x needs a padded copy
  bool exact;          // OW % 8 == 0: dy / y rows are whole vectors
  const int* vx;       // [nvec] input-plane offset of vector v: oh*Wq + ch*8
  const int* vy;       // [nvec] output-plane offset of vector v: oh*OW + ch*8
  const int* vn;       // [nvec] lanes of vector v inside the row: min(8, OW - ch*8)
  const int* koff;     // [C*KH*KW] input-plane offset of column (c, kh, kw)
  std::size_t q_plane() const { return std::size_t(Hq) * Wq; }
  std::size_t v_plane(const Conv2dShape& s) const { return std::size_t(s.OH) * OWv; }
};

// The sizes only (table pointers null).
inline DirectPlan direct_geometry(const Conv2dShape& s) {
  DirectPlan p{};
  p.nch = (s.OW + kLanes - 1) / kLanes;
  p.OWv = p.nch * kLanes;
  p.nvec = s.OH * p.nch;
  p.Hq = s.H + 2 * s.ph;
  p.Wq = std::max(s.W + 2 * s.pw, p.OWv + s.KW - 1);
  p.copy_x = s.ph != 0 || s.pw != 0 || p.Wq != s.W;
  p.exact = p.OWv == s.OW;
  return p;
}

// Geometry and tables; the tables come from the arena, so call this inside
// the caller's ArenaScope.
inline DirectPlan direct_plan(const Conv2dShape& s, Arena& arena) {
  DirectPlan p = direct_geometry(s);
  int* vx = arena.alloc<int>(p.nvec);
  int* vy = arena.alloc<int>(p.nvec);
  int* vn = arena.alloc<int>(p.nvec);
  for (int v = 0; v < p.nvec; ++v) {
    const int oh = v / p.nch, ch = v % p.nch;
    vx[v] = oh * p.Wq + ch * kLanes;
    vy[v] = oh * s.OW + ch * kLanes;
    vn[v] = std::min(kLanes, s.OW - ch * kLanes);
  }
  const int K = int(s.ckk());
  int* koff = arena.alloc<int>(K);
  for (int k = 0; k < K; ++k) {
    const int kw = k % s.KW, kh = (k / s.KW) % s.KH, c = k / (s.KW * s.KH);
    koff[k] = int(c * p.q_plane()) + kh * p.Wq + kw;
  }
  p.vx = vx;
  p.vy = vy;
  p.vn = vn;
  p.koff = koff;
  return p;
}

// xq[c] = x[c] placed at (ph, pw) in a zeroed Hq x Wq plane.
inline void pad_image(const float* x, float* xq, const Conv2dShape& s, const DirectPlan& p) {
  std::memset(xq, 0, sizeof(float) * s.C * p.q_plane());
  for (int c = 0; c < s.C; ++c)
    for (int h = 0; h < s.H; ++h)
      std::memcpy(xq + c * p.q_plane() + std::size_t(h + s.ph) * p.Wq + s.pw,
                  x + c * s.in_plane() + std::size_t(h) * s.W, sizeof(float) * s.W);
}

// dyv[f][oh][0:OWv] = dy[f][oh][0:OW], zero tail lanes.
inline void pad_rows(const float* dy, float* dyv, const Conv2dShape& s, const DirectPlan& p) {
  for (int r = 0; r < s.F * s.OH; ++r) {
    std::memcpy(dyv + std::size_t(r) * p.OWv, dy + std::size_t(r) * s.OW, sizeof(float) * s.OW);
    std::memset(dyv + std::size_t(r) * p.OWv + s.OW, 0, sizeof(float) * (p.OWv - s.OW));
  }
}

// One image: y[f0:f0+FB][vectors v0:v0+RB] = b + sum_k wt[k][f] * column_k(v).
// wt is w transposed to [K][Fp] and zero-padded to Fp (a multiple of FB).
// Loops with compile-time bounds over the FB x RB accumulators keep them in
// registers; partial tiles repeat their last vector and store only the valid part.
template <int FB, int RB, bool Full>
inline void direct_forward_tile(const float* xq, const float* wt, int Fp, const float* b, float* y,
                                int f0, int v0, const Conv2dShape& s, const DirectPlan& p) {
  const int rb = Full ? RB : std::min(RB, p.nvec - v0), fb = Full ? FB : std::min(FB, s.F - f0);
  const float* xr[RB];
  int yo[RB], yn[RB];
  for (int r = 0; r < RB; ++r) {
    const int v = v0 + std::min(r, rb - 1);
    xr[r] = xq + p.vx[v];
    yo[r] = p.vy[v];
    yn[r] = p.vn[v];
  }
  vf8 acc[FB][RB];
  for (int f = 0; f < FB; ++f) {
    const vf8 bias = vsplat(b && f < fb ? b[f0 + f] : 0.f);
    for (int r = 0; r < RB; ++r) acc[f][r] = bias;
  }
  const int K = int(s.ckk());
  const float* wk = wt + f0;
  for (int k = 0; k < K; ++k, wk += Fp) {
    const int off = p.koff[k];
    vf8 xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = vload_reg(xr[r] + off);
    for (int f = 0; f < FB; ++f) {
      const vf8 wv = vsplat(wk[f]);
      for (int r = 0; r < RB; ++r) acc[f][r] += wv * xv[r];
    }
  }
  const std::size_t plane = s.out_plane();
  const bool exact = p.exact;
  for (int f = 0; f < FB; ++f)
    for (int r = 0; r < RB; ++r)
      if (Full || (f < fb && r < rb)) {
        float* out = y + (f0 + f) * plane + yo[r];
        if (Full && exact) vstore(out, acc[f][r]);
        else vstore_n(out, acc[f][r], yn[r]);
      }
}

template <int FB, int RB>
inline void direct_forward(const float* x, const float* w, const float* b, float* y,
                           const Conv2dShape& s, Arena& arena) {
  ArenaScope scope(arena);
  const DirectPlan p = direct_plan(s, arena);
  const int K = int(s.ckk());
  const int Fp = (s.F + FB - 1) / FB * FB;
  float* wt = arena.alloc_zeroed<float>(std::size_t(K) * Fp);
  for (int f = 0; f < s.F; ++f)
    for (int k = 0; k < K; ++k) wt[std::size_t(k) * Fp + f] = w[std::size_t(f) * K + k];
  float* xq = p.copy_x ? arena.alloc<float>(s.C * p.q_plane()) : nullptr;
  for (int n = 0; n < s.N; ++n) {
    const float* xn = x + std::size_t(n) * s.C * s.in_plane();
    if (p.copy_x) pad_image(xn, xq, s, p);
    float* yn = y + std::size_t(n) * s.F * s.out_plane();
    for (int f0 = 0; f0 < s.F; f0 += FB)
      for (int v0 = 0; v0 < p.nvec; v0 += RB) {
        if (f0 + FB <= s.F && v0 + RB <= p.nvec)
          direct_forward_tile<FB, RB, true>(p.copy_x ? xq : xn, wt, Fp, b, yn, f0, v0, s, p);
        else
          direct_forward_tile<FB, RB, false>(p.copy_x ? xq : xn, wt, Fp, b, yn, f0, v0, s, p);
      }
  }
}

// One image: for KB columns (k) x RB output vectors, dcol = sum_f w[f][k] * dy[f](v),
// added into the padded input-gradient plane dxq at the column's position.
// `kperm` lists columns in (kw, kh, c) order: a tile's read-modify-writes then
// share one alignment (no partial overlaps) and mostly fall in different
// channel planes (no chains through memory), so none waits on store forwarding.
template <int KB, int RB, bool Full>
inline void direct_dx_tile(const float* dyv, const float* w, float* dxq, int j0, int v0,
                           const Conv2dShape& s, const DirectPlan& p, const int* kperm) {
  const int K = int(s.ckk());
  const int kb = Full ? KB : std::min(KB, K - j0), rb = Full ? RB : std::min(RB, p.nvec - v0);
  // Offsets copied to locals: the stores into dxq cannot alias them.
  int yo[RB], xo[RB], wo[KB], dq[KB];
  for (int r = 0; r < RB; ++r) {
    const int v = v0 + std::min(r, rb - 1);
    yo[r] = v * kLanes;
    xo[r] = p.vx[v];
  }
  for (int j = 0; j < KB; ++j) {
    wo[j] = kperm[j0 + std::min(j, kb - 1)];
    dq[j] = p.koff[wo[j]];
  }
  vf8 acc[KB][RB];
  for (int j = 0; j < KB; ++j)
    for (int r = 0; r < RB; ++r) acc[j][r] = vf8{};
  const std::size_t vplane = p.v_plane(s);
  const float* dyf = dyv;
  const float* wf = w;
  for (int f = 0; f < s.F; ++f, dyf += vplane, wf += K) {
    vf8 dv[RB];
    for (int r = 0; r < RB; ++r) dv[r] = vload_reg(dyf + yo[r]);
    for (int j = 0; j < KB; ++j) {
      const vf8 wv = vsplat(wf[wo[j]]);
      for (int r = 0; r < RB; ++r) acc[j][r] += wv * dv[r];
    }
  }
  for (int j = 0; j < KB; ++j)
    for (int r = 0; r < RB; ++r)
      if (Full || (j < kb && r < rb)) {
        float* d = dxq + dq[j] + xo[r];
        vstore(d, vload(d) + acc[j][r]);
      }
}

// Adds into dx, or assigns it (`accumulate` false): then each image's dx is
// zeroed right before its tiles add into it, while it fits in L1.
template <int KB, int RB>
inline void direct_dx(const float* w, const float* dy, float* dx, const Conv2dShape& s,
                      Arena& arena, bool accumulate = true) {
  ArenaScope scope(arena);
  const DirectPlan p = direct_plan(s, arena);
  const int K = int(s.ckk());
  int* kperm = arena.alloc<int>(K);
  int j = 0;
  for (int kw = 0; kw < s.KW; ++kw)
    for (int kh = 0; kh < s.KH; ++kh)
      for (int c = 0; c < s.C; ++c) kperm[j++] = (c * s.KH + kh) * s.KW + kw;
  float* dxq = p.copy_x ? arena.alloc<float>(s.C * p.q_plane()) : nullptr;
  float* dyv = p.exact ? nullptr : arena.alloc<float>(s.F * p.v_plane(s));
  for (int n = 0; n < s.N; ++n) {
    const float* dyn = dy + std::size_t(n) * s.F * s.out_plane();
    float* dxn = dx + std::size_t(n) * s.C * s.in_plane();
    if (!p.exact) pad_rows(dyn, dyv, s, p);
    if (p.copy_x) std::memset(dxq, 0, sizeof(float) * s.C * p.q_plane());
    else if (!accumulate) std::memset(dxn, 0, sizeof(float) * s.C * s.in_plane());
    const float* dys = p.exact ? dyn : dyv;
    float* dxs = p.copy_x ? dxq : dxn;
    for (int j0 = 0; j0 < K; j0 += KB)
      for (int v0 = 0; v0 < p.nvec; v0 += RB) {
        if (j0 + KB <= K && v0 + RB <= p.nvec)
          direct_dx_tile<KB, RB, true>(dys, w, dxs, j0, v0, s, p, kperm);
        else
          direct_dx_tile<KB, RB, false>(dys, w, dxs, j0, v0, s, p, kperm);
      }
    if (p.copy_x)
      for (int c = 0; c < s.C; ++c)
        for (int h = 0; h < s.H; ++h) {
          const float* src = dxq + c * p.q_plane() + std::size_t(h + s.ph) * p.Wq + s.pw;
          float* dst = dxn + c * s.in_plane() + std::size_t(h) * s.W;
          if (accumulate)
            for (int i = 0; i < s.W; ++i) dst[i] += src[i];
          else
            std::memcpy(dst, src, sizeof(float) * s.W);
        }
  }
}

// Images per dw group: the group's dy and x are read once per tile, so they
// should stay close (16K floats = 64 KB, L1 + L2; measured better than 6K or 64K).
constexpr std::size_t kDwGroupFloats = 16384;
inline int dw_group(const Conv2dShape& s, const DirectPlan& p, std::size_t group_floats) {
  const std::size_t per_image = s.F * p.v_plane(s) + s.C * p.q_plane();
  return int(std::max<std::size_t>(1, std::min<std::size_t>(s.N, group_floats / per_image)));
}

// Over G images: vacc[f][k] (8 lanes) += sum_v dy[f](v) * column_k(v) for FB
// filters x KB consecutive columns.
template <int FB, int KB, bool Full>
inline void direct_dw_tile(const float* const* dyv, const float* const* xq, int G, float* vacc,
                           int f0, int k0, const Conv2dShape& s, const DirectPlan& p) {
  const int K = int(s.ckk());
  const int fb = Full ? FB : std::min(FB, s.F - f0), kb = Full ? KB : std::min(KB, K - k0);
  const std::size_t vplane = p.v_plane(s);
  std::size_t fo[FB];
  int xo[KB];
  for (int f = 0; f < FB; ++f) fo[f] = (f0 + std::min(f, fb - 1)) * vplane;
  for (int j = 0; j < KB; ++j) xo[j] = p.koff[k0 + std::min(j, kb - 1)];
  vf8 acc[FB][KB];
  for (int f = 0; f < FB; ++f)
    for (int j = 0; j < KB; ++j) acc[f][j] = vf8{};
  for (int g = 0; g < G; ++g) {
    const float* dyg = dyv[g];
    const float* xg = xq[g];
    for (int v = 0; v < p.nvec; ++v) {
      const float* dyp = dyg + v * kLanes;
      const float* xp = xg + p.vx[v];
      vf8 dv[FB];
      for (int f = 0; f < FB; ++f) dv[f] = vload_reg(dyp + fo[f]);
      for (int j = 0; j < KB; ++j) {
        const vf8 xv = vload(xp + xo[j]);
        for (int f = 0; f < FB; ++f) acc[f][j] += dv[f] * xv;
      }
    }
  }
  for (int f = 0; f < FB; ++f)
    for (int j = 0; j < KB; ++j)
      if (Full || (f < fb && j < kb)) {
        float* a = vacc + (std::size_t(f0 + f) * K + k0 + j) * kLanes;
        vstore(a, vload(a) + acc[f][j]);
      }
}

template <int FB, int KB>
inline void direct_dw(const float* x, const float* dy, float* dw, const Conv2dShape& s,
                      Arena& arena, std::size_t group_floats = kDwGroupFloats) {
  ArenaScope scope(arena);
  const DirectPlan p = direct_plan(s, arena);
  const int K = int(s.ckk());
  float* vacc = arena.alloc_zeroed<float>(std::size_t(s.F) * K * kLanes);
  const int G = dw_group(s, p, group_floats);
  float* xbuf = p.copy_x ? arena.alloc<float>(G * s.C * p.q_plane()) : nullptr;
  float* dybuf = p.exact ? nullptr : arena.alloc<float>(G * s.F * p.v_plane(s));
  const float** xq = arena.alloc<const float*>(G);
  const float** dyv = arena.alloc<const float*>(G);
  for (int n0 = 0; n0 < s.N; n0 += G) {
    const int g_n = std::min(G, s.N - n0);
    for (int g = 0; g < g_n; ++g) {
      const float* xn = x + std::size_t(n0 + g) * s.C * s.in_plane();
      const float* dyn = dy + std::size_t(n0 + g) * s.F * s.out_plane();
      if (p.copy_x) {
        float* q = xbuf + g * s.C * p.q_plane();
        pad_image(xn, q, s, p);
        xq[g] = q;
      } else {
        xq[g] = xn;
      }
      if (!p.exact) {
        float* q = dybuf + g * s.F * p.v_plane(s);
        pad_rows(dyn, q, s, p);
        dyv[g] = q;
      } else {
        dyv[g] = dyn;
      }
    }
    for (int f0 = 0; f0 < s.F; f0 += FB)
      for (int k0 = 0; k0 < K; k0 += KB) {
        if (f0 + FB <= s.F && k0 + KB <= K)
          direct_dw_tile<FB, KB, true>(dyv, xq, g_n, vacc, f0, k0, s, p);
        else
          direct_dw_tile<FB, KB, false>(dyv, xq, g_n, vacc, f0, k0, s, p);
      }
  }
  for (std::size_t i = 0; i < std::size_t(s.F) * K; ++i) dw[i] += vsum(vload(vacc + i * kLanes));
}

// Sum of n floats, 16 lanes at a time.
inline float sum_floats(const float* d, std::size_t n) {
  vf8 a0{}, a1{};
  const std::size_t n16 = n / (2 * kLanes) * (2 * kLanes);
  for (std::size_t i = 0; i < n16; i += 2 * kLanes) {
    a0 += vload(d + i);
    a1 += vload(d + i + kLanes);
  }
  float t = vsum(a0 + a1);
  for (std::size_t i = n16; i < n; ++i) t += d[i];
  return t;
}

inline void bias_backward(const float* dy, float* db, const Conv2dShape& s) {
  const std::size_t P = s.out_plane();
  for (int n = 0; n < s.N; ++n)
    for (int f = 0; f < s.F; ++f) db[f] += sum_floats(dy + (std::size_t(n) * s.F + f) * P, P);
}

}  // namespace conv_detail

// The direct kernels win at stride 1 for every shape measured (table above),
// except the weight gradient when a dw group holds few output vectors (big
// C*H*W or F per image, small planes): each tile then reduces over too few
// vectors to pay for its setup and its read-modify-write of the partial sums.
inline bool conv2d_use_direct(const Conv2dShape& s) { return s.sh == 1 && s.sw == 1; }
// Also gemm when the 8-lane partial sums of dw (F*C*KH*KW*8 floats) pass 4 MB:
// they would leave the caches (and grow the arena) for shapes where sgemm
// has enough work per product anyway.
inline bool conv2d_use_direct_dw(const Conv2dShape& s) {
  if (!conv2d_use_direct(s)) return false;
  const conv_detail::DirectPlan p = conv_detail::direct_geometry(s);
  return conv_detail::dw_group(s, p, conv_detail::kDwGroupFloats) * p.nvec >= 16 &&
         s.F * s.ckk() * conv_detail::kLanes <= (std::size_t(1) << 20);
}

// Tile shapes of the dispatch (measured above).  A tile's accumulators live in
// vector registers: AVX-512VL gives 32 ymm registers, AVX2 alone 16, where the
// forward and dw tiles above (20 and 25 accumulators) spill.  Measured on a
// Zen 4 with -mno-avx512f (the code an AVX2 CPU gets; bench_conv, ms): forward
// 5 x 2 against 5 x 4, conv1 0.30 / 0.49, conv2 0.59 / 0.91, and 0.70-0.74 of
// 5 x 4's time on the five other shapes; dw 2 x 5 against 5 x 5, conv1 0.31 /
// 0.47, conv2 0.80 / 1.19, 0.57-0.77 on the others.  dx keeps 6 x 4: smaller
// tiles (3 x 3, 4 x 2) win on some shapes (conv2 0.95 / 1.26) and lose on
// others (64 channels on 32x32: 15.4 / 12.3), their read-modify-writes of dx
// growing with the tile count.  With 32 registers 5 x 2 and 10 x 2 forward
// tiles were mixed against 5 x 4 (0.8-1.2x over the shapes), so those stay.
namespace conv_detail {
#ifdef __AVX512VL__
constexpr int kFwdFB = 5, kFwdRB = 4;  // forward: filters x output vectors
constexpr int kDwFB = 5, kDwKB = 5;    // dw: filters x columns
#else
constexpr int kFwdFB = 5, kFwdRB = 2;
constexpr int kDwFB = 2, kDwKB = 5;
#endif
constexpr int kDxKB = 6, kDxRB = 4;    // dx: columns x output vectors

inline std::size_t arena_bytes(std::size_t bytes) {
  return (bytes + Arena::kAlign - 1) / Arena::kAlign * Arena::kAlign;
}
inline std::size_t plan_bytes(const Conv2dShape& s, const DirectPlan& p) {
  return 3 * arena_bytes(sizeof(int) * p.nvec) + arena_bytes(sizeof(int) * s.ckk());
}
}  // namespace conv_detail

// Arena bytes that conv2d_forward / conv2d_backward (any gradients) take at
// most for this shape; everything is released when the call returns.  For
// sizing an arena.  (Checked against the arena's peak in cpp_runtime/dev/.)
inline std::size_t conv2d_workspace_bytes(int N, int C, int H, int W, int F, int KH, int KW,
                                          int sh, int sw, int ph, int pw) {
  using namespace conv_detail;
  const Conv2dShape s = conv2d_shape(N, C, H, W, F, KH, KW, sh, sw, ph, pw);
  const std::size_t fl = sizeof(float), K = s.ckk();
  const std::size_t col = is_pointwise(s) ? 0 : arena_bytes(fl * K * s.out_plane());
  std::size_t fwd = col, dx = 2 * col, dw = 2 * col;  // gemm paths (backward: col + dcol)
  if (conv2d_use_direct(s)) {
    const DirectPlan p = direct_geometry(s);
    const std::size_t xq = p.copy_x ? arena_bytes(fl * s.C * p.q_plane()) : 0;
    const std::size_t dyv = p.exact ? 0 : arena_bytes(fl * s.F * p.v_plane(s));
    const std::size_t Fp = (s.F + kFwdFB - 1) / kFwdFB * kFwdFB;
    fwd = plan_bytes(s, p) + arena_bytes(fl * K * Fp) + xq;
    dx = plan_bytes(s, p) + arena_bytes(sizeof(int) * K) + xq + dyv;
    if (conv2d_use_direct_dw(s)) {
      const std::size_t G = dw_group(s, p, kDwGroupFloats);
      dw = plan_bytes(s, p) + arena_bytes(fl * s.F * K * kLanes) + G * xq + G * dyv +
           2 * arena_bytes(sizeof(float*) * G);
    }
  }
  return std::max(fwd, std::max(dx, dw));
}

// y = conv2d(x, w) + b.  x [N,C,H,W], w [F,C,KH,KW], b [F] or nullptr,
// y [N,F,OH,OW] (overwritten).
inline void conv2d_forward(const float* x, const float* w, const float* b, float* y, int N, int C,
                           int H, int W, int F, int KH, int KW, int sh, int sw, int ph, int pw,
                           Arena& arena) {
  const Conv2dShape s = conv2d_shape(N, C, H, W, F, KH, KW, sh, sw, ph, pw);
  using namespace conv_detail;
  if (conv2d_use_direct(s)) direct_forward<kFwdFB, kFwdRB>(x, w, b, y, s, arena);
  else gemm_forward(x, w, b, y, s, arena);
}

inline void conv2d_forward(const float* x, const float* w, const float* b, float* y, int N, int C,
                           int H, int W, int F, int KH, int KW, int stride, int pad, Arena& arena) {
  conv2d_forward(x, w, b, y, N, C, H, W, F, KH, KW, stride, stride, pad, pad, arena);
}

// Accumulates (+=) into dx, dw, db; each may be nullptr when that gradient is not needed.
// With `accumulate` false they are assigned instead (the first write of a gradient
// buffer, passes/first_write.py, which then needs no zero fill): dw and db are
// zeroed here (small), dx an image at a time inside its kernel, while in cache.
inline void conv2d_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                            float* db, int N, int C, int H, int W, int F, int KH, int KW, int sh,
                            int sw, int ph, int pw, Arena& arena, bool accumulate = true) {
  const Conv2dShape s = conv2d_shape(N, C, H, W, F, KH, KW, sh, sw, ph, pw);
  if (!accumulate && db) std::memset(db, 0, sizeof(float) * F);
  if (!accumulate && dw) std::memset(dw, 0, sizeof(float) * s.F * s.ckk());
  if (db) conv_detail::bias_backward(dy, db, s);
  using namespace conv_detail;
  const bool use_dx = conv2d_use_direct(s), use_dw = conv2d_use_direct_dw(s);
  if (dx && use_dx) direct_dx<kDxKB, kDxRB>(w, dy, dx, s, arena, accumulate);
  if (dw && use_dw) direct_dw<kDwFB, kDwKB>(x, dy, dw, s, arena);
  if ((dx && !use_dx) || (dw && !use_dw))
    gemm_backward(x, w, dy, use_dx ? nullptr : dx, use_dw ? nullptr : dw, s, arena, accumulate);
}

inline void conv2d_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                            float* db, int N, int C, int H, int W, int F, int KH, int KW,
                            int stride, int pad, Arena& arena) {
  conv2d_backward(x, w, dy, dx, dw, db, N, C, H, W, F, KH, KW, stride, stride, pad, pad, arena);
}

}  // namespace lt
