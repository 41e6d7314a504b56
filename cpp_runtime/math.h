// Scalar math used by elementwise loops.  Every function is inline and free
// of errno and of calls g++ cannot vectorise, so fused loops vectorise.
#pragma once
#include <cmath>
#include <cstdint>

namespace lt {

inline float max_f(float a, float b) { return a > b ? a : b; }
inline float min_f(float a, float b) { return a < b ? a : b; }
inline int32_t max_f(int32_t a, int32_t b) { return a > b ? a : b; }
inline int32_t min_f(int32_t a, int32_t b) { return a < b ? a : b; }
inline float abs_f(float x) { return std::fabs(x); }
inline float sqrt_f(float x) { return std::sqrt(x); }
inline float pow_f(float x, float e) { return std::pow(x, e); }
inline float exp_f(float x) { return std::exp(x); }
inline float log_f(float x) { return std::log(x); }
inline float tanh_f(float x) { return std::tanh(x); }
inline float sigmoid_f(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Python's floor division and modulo (the sign follows the divisor).
inline int32_t floordiv(int32_t a, int32_t b) {
  int32_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
inline int32_t mod(int32_t a, int32_t b) {
  int32_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
inline float floordiv(float a, float b) { return std::floor(a / b); }
inline float mod(float a, float b) { return a - std::floor(a / b) * b; }

}  // namespace lt
