// Kernels for the non-elementwise primitives: reductions, softmax, NLL,
// row gathers.  Layouts are (outer, n, inner): the reduced axis in the middle.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "error.h"
#include "math.h"

namespace lt {

// U may be wider than T: a bool mask sums (or maxes) to int32.
template <class T, class U>
inline void reduce_sum(const T* x, U* out, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o) {
    U* dst = out + o * inner;
    const T* src = x + o * n * inner;
    for (long j = 0; j < inner; ++j) dst[j] = U(0);
    for (long i = 0; i < n; ++i)
      for (long j = 0; j < inner; ++j) dst[j] += src[i * inner + j];
  }
}

// n >= 1 (the shape rule rejects the max of an empty axis); NaN wins, as in numpy.
template <class T, class U>
inline void reduce_max(const T* x, U* out, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o) {
    U* dst = out + o * inner;
    const T* src = x + o * n * inner;
    for (long j = 0; j < inner; ++j) dst[j] = src[j];
    for (long i = 1; i < n; ++i)
      for (long j = 0; j < inner; ++j) {
        U v = src[i * inner + j];
        if (v > dst[j] || v != v) dst[j] = v;
      }
  }
}

// The minimum, as reduce_max (NaN wins, as in numpy).
template <class T, class U>
inline void reduce_min(const T* x, U* out, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o) {
    U* dst = out + o * inner;
    const T* src = x + o * n * inner;
    for (long j = 0; j < inner; ++j) dst[j] = src[j];
    for (long i = 1; i < n; ++i)
      for (long j = 0; j < inner; ++j) {
        U v = src[i * inner + j];
        if (v < dst[j] || v != v) dst[j] = v;
      }
  }
}

// The index of the first maximum along the middle axis (the first NaN, if
// any, as numpy.argmax).
template <class T>
inline void reduce_argmax(const T* x, int32_t* out, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o)
    for (long j = 0; j < inner; ++j) {
      const T* src = x + o * n * inner + j;
      T best = src[0];
      int32_t at = 0;
      for (long i = 1; i < n && best == best; ++i) {
        T v = src[i * inner];
        if (v > best || v != v) {
          best = v;
          at = static_cast<int32_t>(i);
        }
      }
      out[o * inner + j] = at;
    }
}

// y = softmax(x) or log_softmax(x) along the middle axis.
template <bool Log>
inline void softmax_any(const float* x, float* y, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o)
    for (long j = 0; j < inner; ++j) {
      const float* src = x + o * n * inner + j;
      float* dst = y + o * n * inner + j;
      float m = src[0];
      for (long i = 1; i < n; ++i) m = max_f(m, src[i * inner]);
      float s = 0.0f;
      for (long i = 0; i < n; ++i) s += exp_f(src[i * inner] - m);
      if (Log) {
        float lse = m + log_f(s);
        for (long i = 0; i < n; ++i) dst[i * inner] = src[i * inner] - lse;
      } else {
        float inv = 1.0f / s;
        for (long i = 0; i < n; ++i) dst[i * inner] = exp_f(src[i * inner] - m) * inv;
      }
    }
}

inline void softmax(const float* x, float* y, long outer, long n, long inner) { softmax_any<false>(x, y, outer, n, inner); }
inline void log_softmax(const float* x, float* y, long outer, long n, long inner) { softmax_any<true>(x, y, outer, n, inner); }

// dx += y * (dy - sum(dy * y))
inline void softmax_backward(const float* y, const float* dy, float* dx, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o)
    for (long j = 0; j < inner; ++j) {
      long base = o * n * inner + j;
      float s = 0.0f;
      for (long i = 0; i < n; ++i) s += dy[base + i * inner] * y[base + i * inner];
      for (long i = 0; i < n; ++i) dx[base + i * inner] += y[base + i * inner] * (dy[base + i * inner] - s);
    }
}

// dx += dy - exp(y) * sum(dy)
inline void log_softmax_backward(const float* y, const float* dy, float* dx, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o)
    for (long j = 0; j < inner; ++j) {
      long base = o * n * inner + j;
      float s = 0.0f;
      for (long i = 0; i < n; ++i) s += dy[base + i * inner];
      for (long i = 0; i < n; ++i) dx[base + i * inner] += dy[base + i * inner] - exp_f(y[base + i * inner]) * s;
    }
}

// out = -scale * sum_n logp[n, target[n]]
inline void nll(const float* logp, const int32_t* target, float* out, long N, long C, float scale) {
  float s = 0.0f;
  for (long i = 0; i < N; ++i) s += logp[i * C + check_index(target[i], C, "nll_loss target")];
  *out = -s * scale;
}

inline void nll_backward(const float* dout, const int32_t* target, float* dlogp, long N, long C, float scale) {
  float g = -dout[0] * scale;
  for (long i = 0; i < N; ++i) dlogp[i * C + check_index(target[i], C, "nll_loss target")] += g;
}

// out[:] = x[i, :] with a bounds check; and its gradient.
template <class T>
inline void take_row(const T* x, int32_t i, T* out, long rows, long width) {
  std::memcpy(out, x + check_index(i, rows, "row index") * width, sizeof(T) * width);
}

inline void take_row_backward(const float* dout, int32_t i, float* dx, long rows, long width) {
  float* dst = dx + check_index(i, rows, "row index") * width;
  for (long j = 0; j < width; ++j) dst[j] += dout[j];
}

}  // namespace lt
