// Kernels for the non-elementwise primitives: reductions, softmax, NLL,
// row gathers.  Layouts are (outer, n, inner): the reduced axis in the middle.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "error.h"
#include "math.h"

namespace lt {

// Float sums accumulate in double: float32 running sums lose every addend
// once the sum is 2^24 times larger (sum of 2^25 ones = 2^24), and drift by
// n * 6e-8 before that.  A double sum of n < 2^29 float32 terms is within
// 2e-9 relative of the exact one, so the float result is the exact sum
// rounded once.  `lane_sum` keeps 8 independent partial sums, which g++
// vectorises (and which hides the add latency); columns are summed in
// tiles of double accumulators, still one pass over x in memory order.
template <class F>
inline double lane_sum(long n, F&& term) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  long i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += term(i + k);
  double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += term(i);
  return s;
}

// U may be wider than T: a bool mask sums (or maxes) to int32.
template <class T, class U>
inline void reduce_sum(const T* x, U* out, long outer, long n, long inner) {
  if constexpr (std::is_floating_point_v<U>) {
    constexpr long kTile = 256;
    for (long o = 0; o < outer; ++o) {
      U* dst = out + o * inner;
      const T* src = x + o * n * inner;
      if (inner == 1) {
        dst[0] = U(lane_sum(n, [src](long i) { return double(src[i]); }));
        continue;
      }
      for (long j0 = 0; j0 < inner; j0 += kTile) {
        const long w = inner - j0 < kTile ? inner - j0 : kTile;
        double acc[kTile];
        for (long j = 0; j < w; ++j) acc[j] = 0.0;
        for (long i = 0; i < n; ++i) {
          const T* row = src + i * inner + j0;
          for (long j = 0; j < w; ++j) acc[j] += double(row[j]);
        }
        for (long j = 0; j < w; ++j) dst[j0 + j] = U(acc[j]);
      }
    }
  } else {
    for (long o = 0; o < outer; ++o) {
      U* dst = out + o * inner;
      const T* src = x + o * n * inner;
      for (long j = 0; j < inner; ++j) dst[j] = U(0);
      for (long i = 0; i < n; ++i)
        for (long j = 0; j < inner; ++j) dst[j] += src[i * inner + j];
    }
  }
}

// The maximum (kMax) or minimum along the middle axis.  n >= 1 (the shape
// rules reject an empty axis); NaN wins, as in numpy.
template <bool kMax, class T, class U>
inline void reduce_extreme(const T* x, U* out, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o) {
    U* dst = out + o * inner;
    const T* src = x + o * n * inner;
    for (long j = 0; j < inner; ++j) dst[j] = src[j];
    for (long i = 1; i < n; ++i)
      for (long j = 0; j < inner; ++j) {
        U v = src[i * inner + j];
        if ((kMax ? v > dst[j] : v < dst[j]) || v != v) dst[j] = v;
      }
  }
}

template <class T, class U>
inline void reduce_max(const T* x, U* out, long outer, long n, long inner) {
  reduce_extreme<true>(x, out, outer, n, inner);
}

template <class T, class U>
inline void reduce_min(const T* x, U* out, long outer, long n, long inner) {
  reduce_extreme<false>(x, out, outer, n, inner);
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

// y = softmax(x) or log_softmax(x) along the middle axis.  The sums are in
// double (see reduce_sum); log_softmax is (x - max) - log(sum), so rounding
// max + log(sum) first cannot swamp the result (at logits of 1e4 that lost
// 4 digits).  The kernels of this section are never inlined: inlined into a
// long step body, g++ stopped inlining exp_f into them and called it once per
// element instead of vectorising it (seen in the LSTM's profile).
template <bool Log>
__attribute__((noinline)) void softmax_any(const float* x, float* y, long outer, long n, long inner) {
  for (long o = 0; o < outer; ++o)
    for (long j = 0; j < inner; ++j) {
      const float* src = x + o * n * inner + j;
      float* dst = y + o * n * inner + j;
      float m = src[0];
      for (long i = 1; i < n; ++i) m = max_f(m, src[i * inner]);
      double s = lane_sum(n, [src, inner, m](long i) { return double(exp_f(src[i * inner] - m)); });
      if (Log) {
        float log_s = float(std::log(s));
        for (long i = 0; i < n; ++i) dst[i * inner] = (src[i * inner] - m) - log_s;
      } else {
        float inv = float(1.0 / s);
        for (long i = 0; i < n; ++i) dst[i * inner] = exp_f(src[i * inner] - m) * inv;
      }
    }
}

inline void softmax(const float* x, float* y, long outer, long n, long inner) { softmax_any<false>(x, y, outer, n, inner); }
inline void log_softmax(const float* x, float* y, long outer, long n, long inner) { softmax_any<true>(x, y, outer, n, inner); }

// dx += y * (dy - sum(dy * y)) (softmax) or dy - exp(y) * sum(dy) (log_softmax,
// y its output); dx = ... when not `accumulate` (dx's first write).
template <bool Log>
__attribute__((noinline)) void softmax_backward_any(const float* y, const float* dy, float* dx, long outer, long n,
                                                    long inner, bool accumulate) {
  for (long o = 0; o < outer; ++o)
    for (long j = 0; j < inner; ++j) {
      const long base = o * n * inner + j;
      const float* yb = y + base;
      const float* db = dy + base;
      float* xb = dx + base;
      float s = Log ? float(lane_sum(n, [db, inner](long i) { return double(db[i * inner]); }))
                    : float(lane_sum(n, [yb, db, inner](long i) { return double(db[i * inner]) * yb[i * inner]; }));
      auto grad = [yb, db, inner, s](long i) {
        return Log ? db[i * inner] - exp_f(yb[i * inner]) * s : yb[i * inner] * (db[i * inner] - s);
      };
      if (accumulate)
        for (long i = 0; i < n; ++i) xb[i * inner] += grad(i);
      else
        for (long i = 0; i < n; ++i) xb[i * inner] = grad(i);
    }
}

inline void softmax_backward(const float* y, const float* dy, float* dx, long outer, long n, long inner,
                             bool accumulate = true) {
  softmax_backward_any<false>(y, dy, dx, outer, n, inner, accumulate);
}

inline void log_softmax_backward(const float* y, const float* dy, float* dx, long outer, long n, long inner,
                                 bool accumulate = true) {
  softmax_backward_any<true>(y, dy, dx, outer, n, inner, accumulate);
}

// out = -scale * sum_n logp[n, target[n]]
inline void nll(const float* logp, const int32_t* target, float* out, long N, long C, float scale) {
  double s = 0.0;
  for (long i = 0; i < N; ++i) s += logp[i * C + check_index(target[i], C, "nll_loss target")];
  *out = float(-s * scale);
}

inline void nll_backward(const float* dout, const int32_t* target, float* dlogp, long N, long C, float scale) {
  float g = -dout[0] * scale;
  for (long i = 0; i < N; ++i) dlogp[i * C + check_index(target[i], C, "nll_loss target")] += g;
}

// out[:] = x[i, :] with a bounds check (negative i counts from the end); and its gradient.
template <class T>
inline void take_row(const T* x, int32_t i, T* out, long rows, long width) {
  std::memcpy(out, x + wrap_index(i, rows, "row index") * width, sizeof(T) * width);
}

inline void take_row_backward(const float* dout, int32_t i, float* dx, long rows, long width) {
  float* dst = dx + wrap_index(i, rows, "row index") * width;
  for (long j = 0; j < width; ++j) dst[j] += dout[j];
}

}  // namespace lt
