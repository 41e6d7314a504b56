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
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "error.h"

namespace lt {

namespace pool_detail {

inline void check(const char* what, int N, int C, int H, int W, int k, int s) {
  if (N < 0 || C <= 0 || H <= 0 || W <= 0 || k <= 0 || s <= 0)
    fail("%s: bad shape N=%d C=%d H=%d W=%d k=%d s=%d", what, N, C, H, W, k, s);
  if (k > H || k > W) fail("%s: kernel %d larger than input %dx%d", what, k, H, W);
}

inline int out_size(int n, int k, int s) { return (n - k) / s + 1; }

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
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow) {
        const int base = oh * s * W + ow * s;
        float m = -std::numeric_limits<float>::infinity();
        int32_t mi = base;
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) {
            const int idx = base + i * W + j;
            const float v = xp[idx];
            const bool take = (v > m) | (v != v);
            m = take ? v : m;
            mi = take ? idx : mi;
          }
        yp[oh * OW + ow] = m;
        ap[oh * OW + ow] = mi;
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
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow) {
        const float* w0 = xp + oh * s * W + ow * s;
        float t = 0.f;
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) t += w0[i * W + j];
        yp[oh * OW + ow] = t / div;
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
