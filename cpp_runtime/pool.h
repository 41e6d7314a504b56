// 2-D max and average pooling, float32, NCHW, square kernel k, stride s, no
// padding, floor mode: OH = (H - k) / s + 1, as torch.nn.functional.*_pool2d.
//
// Max pooling matches PyTorch's CPU kernel exactly: the window is scanned in
// row-major order from -inf and a value replaces the running max when it is
// greater or NaN, so ties keep the first maximum, a NaN propagates (the last
// NaN's index is kept), and an all -inf window points at its first element.
// The scan is written with selects, not branches: random data would otherwise
// mispredict about once per comparison.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "error.h"

namespace lt {

namespace pool_detail {

inline void check(const char* what, int N, int C, int H, int W, int k, int s) {
  if (N < 0 || C <= 0 || H <= 0 || W <= 0 || k <= 0 || s <= 0)
    fail("%s: bad shape N=%d C=%d H=%d W=%d k=%d s=%d", what, N, C, H, W, k, s);
  if (k > H || k > W) fail("%s: kernel %d larger than input %dx%d", what, k, H, W);
}

inline int out_size(int n, int k, int s) { return (n - k) / s + 1; }

// One output row of the 2x2 stride-2 average pool, summed in PyTorch's order.
inline void avg_pool_2x2_row(const float* __restrict r0, const float* __restrict r1,
                             float* __restrict y, int OW) {
  for (int ow = 0; ow < OW; ++ow)
    y[ow] = (((r0[2 * ow] + r0[2 * ow + 1]) + r1[2 * ow]) + r1[2 * ow + 1]) / 4.f;
}

// fn(std::integral_constant<int, S>) with S = s for strides 1 and 2, else 0
// (run time): a stride known to the compiler vectorises with shuffles, a run
// time one only with gathers (slower than scalar code on this machine).
template <class Fn>
inline void with_stride(int s, Fn&& fn) {
  if (s == 1) fn(std::integral_constant<int, 1>{});
  else if (s == 2) fn(std::integral_constant<int, 2>{});
  else fn(std::integral_constant<int, 0>{});
}

// One output row of the 2x2 stride-2 max pool (the CNN's case), vectorised by
// GCC.  Starting from the window's first element is the same as starting from
// -inf with its index: it is taken unless it is -inf, and then both agree.
inline void max_pool_2x2_row(const float* __restrict r0, const float* __restrict r1,
                             float* __restrict y, int32_t* __restrict am, int OW, int32_t base,
                             int W) {
  for (int ow = 0; ow < OW; ++ow) {
    const float a = r0[2 * ow], b = r0[2 * ow + 1], c = r1[2 * ow], d = r1[2 * ow + 1];
    const int32_t i0 = base + 2 * ow;
    float m = a;
    int32_t mi = i0;
    bool t = (b > m) | (b != b);
    m = t ? b : m;
    mi = t ? i0 + 1 : mi;
    t = (c > m) | (c != c);
    m = t ? c : m;
    mi = t ? i0 + W : mi;
    t = (d > m) | (d != d);
    m = t ? d : m;
    mi = t ? i0 + W + 1 : mi;
    y[ow] = m;
    am[ow] = mi;
  }
}

}  // namespace pool_detail

// max_pool2d with kernel k, stride s.  Records the flat argmax (index into the
// H*W plane) per output for the backward pass.  y, argmax: [N, C, OH, OW].
inline void max_pool2d_forward(const float* x, float* y, int32_t* argmax, int N, int C, int H,
                               int W, int k, int s) {
  pool_detail::check("max_pool2d", N, C, H, W, k, s);
  const int OH = pool_detail::out_size(H, k, s), OW = pool_detail::out_size(W, k, s);
  const std::size_t planes = std::size_t(N) * C;
  for (std::size_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * H * W;
    float* yp = y + pl * OH * OW;
    int32_t* ap = argmax + pl * OH * OW;
    if (k == 2 && s == 2) {
      for (int oh = 0; oh < OH; ++oh)
        pool_detail::max_pool_2x2_row(xp + 2 * oh * W, xp + (2 * oh + 1) * W, yp + oh * OW,
                                      ap + oh * OW, OW, 2 * oh * W, W);
      continue;
    }
    // Any k, s: the window scan runs over a chunk of outputs at once, so the
    // compare-select chains of neighbouring outputs overlap (one output at a
    // time is bound by the latency of its chain: 0.8 ms instead of ~0.2 for
    // 100x10x24x24, k3 s2).  Each output still sees its window in scan order.
    constexpr int kChunk = 64;
    for (int oh = 0; oh < OH; ++oh)
      for (int ow0 = 0; ow0 < OW; ow0 += kChunk) {
        const int n = std::min(kChunk, OW - ow0);
        float m[kChunk];
        int32_t mi[kChunk];
        for (int t = 0; t < n; ++t) {
          m[t] = -std::numeric_limits<float>::infinity();
          mi[t] = oh * s * W + (ow0 + t) * s;
        }
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) {
            const int32_t base = (oh * s + i) * W + ow0 * s + j;
            pool_detail::with_stride(s, [&](auto st) {
              const int ss = st.value ? st.value : s;
              for (int t = 0; t < n; ++t) {
                const float v = xp[base + t * ss];
                const bool take = (v > m[t]) | (v != v);
                m[t] = take ? v : m[t];
                mi[t] = take ? base + t * ss : mi[t];
              }
            });
          }
        for (int t = 0; t < n; ++t) {
          yp[oh * OW + ow0 + t] = m[t];
          ap[oh * OW + ow0 + t] = mi[t];
        }
      }
  }
}

// dx[argmax] += dy.  dx: [N, C, H, W].
inline void max_pool2d_backward(const float* dy, const int32_t* argmax, float* dx, int N, int C,
                                int H, int W, int k, int s) {
  pool_detail::check("max_pool2d backward", N, C, H, W, k, s);
  const int OH = pool_detail::out_size(H, k, s), OW = pool_detail::out_size(W, k, s);
  const std::size_t planes = std::size_t(N) * C, P = std::size_t(OH) * OW;
  for (std::size_t pl = 0; pl < planes; ++pl) {
    float* dxp = dx + pl * H * W;
    const float* dyp = dy + pl * P;
    const int32_t* ap = argmax + pl * P;
    for (std::size_t o = 0; o < P; ++o) dxp[ap[o]] += dyp[o];
  }
}

// avg_pool2d with kernel k, stride s (divisor k*k: no padding, so PyTorch's
// count_include_pad makes no difference).
inline void avg_pool2d_forward(const float* x, float* y, int N, int C, int H, int W, int k, int s) {
  pool_detail::check("avg_pool2d", N, C, H, W, k, s);
  const int OH = pool_detail::out_size(H, k, s), OW = pool_detail::out_size(W, k, s);
  const std::size_t planes = std::size_t(N) * C;
  const float div = float(k * k);
  for (std::size_t pl = 0; pl < planes; ++pl) {
    const float* xp = x + pl * H * W;
    float* yp = y + pl * OH * OW;
    if (k == 2 && s == 2) {
      for (int oh = 0; oh < OH; ++oh)
        pool_detail::avg_pool_2x2_row(xp + 2 * oh * W, xp + (2 * oh + 1) * W, yp + oh * OW, OW);
      continue;
    }
    for (int oh = 0; oh < OH; ++oh) {
      // Summed in PyTorch's order (row by row) for a chunk of outputs at once.
      constexpr int kChunk = 64;
      for (int ow0 = 0; ow0 < OW; ow0 += kChunk) {
        const int n = std::min(kChunk, OW - ow0);
        float acc[kChunk];
        for (int t = 0; t < n; ++t) acc[t] = 0.f;
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) {
            const float* r = xp + (oh * s + i) * W + ow0 * s + j;
            pool_detail::with_stride(s, [&](auto st) {
              const int ss = st.value ? st.value : s;
              for (int t = 0; t < n; ++t) acc[t] += r[t * ss];
            });
          }
        for (int t = 0; t < n; ++t) yp[oh * OW + ow0 + t] = acc[t] / div;
      }
    }
  }
}

// dx[window] += dy / (k*k).
inline void avg_pool2d_backward(const float* dy, float* dx, int N, int C, int H, int W, int k,
                                int s) {
  pool_detail::check("avg_pool2d backward", N, C, H, W, k, s);
  const int OH = pool_detail::out_size(H, k, s), OW = pool_detail::out_size(W, k, s);
  const std::size_t planes = std::size_t(N) * C;
  const float div = float(k * k);
  for (std::size_t pl = 0; pl < planes; ++pl) {
    float* dxp = dx + pl * H * W;
    const float* dyp = dy + pl * OH * OW;
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow) {
        float* w0 = dxp + oh * s * W + ow * s;
        const float g = dyp[oh * OW + ow] / div;
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) w0[i * W + j] += g;
      }
  }
}

}  // namespace lt
