// Seeded, reproducible random numbers for dropout and initialisation.
//
// Generator: xoshiro128++ (Blackman & Vigna), 128-bit state, seeded from a
// 64-bit seed through splitmix64.  The same seed gives the same numbers on
// every machine (integer arithmetic only; floats are derived exactly).
//
// Scalar calls (next_u32, uniform, normal) use one stream.  Bulk calls
// (fill_u32, fill_uniform, dropout_mask) use 8 further streams side by side,
// stream i being the scalar seed state advanced by (i+1) * 2^64 steps (the
// published jump polynomial), so they never overlap the scalar stream or each
// other; written as a loop over lanes that the compiler vectorises (one ymm
// per state word).  Bulk output i comes from stream i % 8.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "error.h"

namespace lt {

class Rng {
 public:
  static constexpr int kLanes = 8;

  explicit Rng(uint64_t seed) {
    uint64_t z = seed;
    uint64_t a = splitmix64(z), b = splitmix64(z);
    s_[0] = uint32_t(a);
    s_[1] = uint32_t(a >> 32);
    s_[2] = uint32_t(b);
    s_[3] = uint32_t(b >> 32);
    if ((s_[0] | s_[1] | s_[2] | s_[3]) == 0) s_[0] = 1;  // the one forbidden state
    uint32_t t[4] = {s_[0], s_[1], s_[2], s_[3]};
    for (int l = 0; l < kLanes; ++l) {
      jump(t);
      for (int w = 0; w < 4; ++w) lanes_[w][l] = t[w];
    }
  }

  uint32_t next_u32() { return step(s_[0], s_[1], s_[2], s_[3]); }

  // Uniform in [0, 1): the top 24 bits, exactly representable.
  float uniform() { return to_unit(next_u32()); }

  // Standard normal (Box-Muller; the second value of each pair is kept).
  float normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const float u1 = 1.f - uniform();  // (0, 1]: log is finite
    const float u2 = uniform();
    const float r = std::sqrt(-2.f * std::log(u1));
    const float t = 6.28318530717958647692f * u2;
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return r * std::cos(t);
  }

  // Bulk generation from the 8 parallel streams: fn(i, r) gets outputs i..i+7
  // (the last block may be cut short by n; its unused numbers are dropped).
  // The streams live in local arrays while generating, so the lane loop
  // vectorises (the member arrays could alias the caller's output).
  template <class Fn>
  void for_each_block(std::size_t n, Fn&& fn) {
    // One vector per state word (GCC vector extension; one ymm with AVX2).
    typedef uint32_t vu8 __attribute__((vector_size(4 * kLanes)));
    vu8 s0, s1, s2, s3;
    std::memcpy(&s0, lanes_[0], sizeof s0);
    std::memcpy(&s1, lanes_[1], sizeof s1);
    std::memcpy(&s2, lanes_[2], sizeof s2);
    std::memcpy(&s3, lanes_[3], sizeof s3);
    for (std::size_t i = 0; i < n; i += kLanes) {
      const vu8 x = s0 + s3;
      const vu8 result = ((x << 7) | (x >> 25)) + s0;
      const vu8 t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >> 21);
      uint32_t r[kLanes];
      std::memcpy(r, &result, sizeof r);
      fn(i, r);
    }
    std::memcpy(lanes_[0], &s0, sizeof s0);
    std::memcpy(lanes_[1], &s1, sizeof s1);
    std::memcpy(lanes_[2], &s2, sizeof s2);
    std::memcpy(lanes_[3], &s3, sizeof s3);
  }

  void fill_u32(uint32_t* out, std::size_t n) {
    for_each_block(n, [&](std::size_t i, const uint32_t* r) {
      if (i + kLanes <= n)
        for (int l = 0; l < kLanes; ++l) out[i + l] = r[l];
      else
        for (std::size_t l = 0; i + l < n; ++l) out[i + l] = r[l];
    });
  }

  // out[i] uniform in [lo, hi).
  void fill_uniform(float* out, std::size_t n, float lo = 0.f, float hi = 1.f) {
    const float scale = hi - lo;
    for_each_block(n, [&](std::size_t i, const uint32_t* r) {
      if (i + kLanes <= n)
        for (int l = 0; l < kLanes; ++l) out[i + l] = lo + scale * to_unit(r[l]);
      else
        for (std::size_t l = 0; i + l < n; ++l) out[i + l] = lo + scale * to_unit(r[l]);
    });
  }

  // out[i] normal with the given mean and standard deviation (scalar stream).
  void fill_normal(float* out, std::size_t n, float mean = 0.f, float stddev = 1.f) {
    for (std::size_t i = 0; i < n; ++i) out[i] = mean + stddev * normal();
  }

  static float to_unit(uint32_t r) { return float(r >> 8) * 0x1.0p-24f; }

 private:
  static uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

  static uint32_t step(uint32_t& s0, uint32_t& s1, uint32_t& s2, uint32_t& s3) {
    const uint32_t result = rotl(s0 + s3, 7) + s0;
    const uint32_t t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return result;
  }

  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  // Advance a state by 2^64 steps.
  static void jump(uint32_t* s) {
    static const uint32_t kJump[4] = {0x8764000b, 0xf542d2d3, 0x6fa035c3, 0x77f2db5b};
    uint32_t j[4] = {0, 0, 0, 0};
    for (uint32_t word : kJump)
      for (int b = 0; b < 32; ++b) {
        if (word & (uint32_t(1) << b))
          for (int w = 0; w < 4; ++w) j[w] ^= s[w];
        step(s[0], s[1], s[2], s[3]);
      }
    for (int w = 0; w < 4; ++w) s[w] = j[w];
  }

  uint32_t s_[4];
  alignas(32) uint32_t lanes_[4][kLanes];
  float spare_ = 0.f;
  bool has_spare_ = false;
};

// Inverted dropout, as torch.nn.functional.dropout in training mode: each
// mask[i] is 0 with probability p and 1/(1-p) otherwise (keep when a uniform
// in [0,1) is >= p).  p = 1 gives all zeros.
inline void dropout_mask(Rng& rng, float* mask, std::size_t n, float p) {
  if (!(p >= 0.f && p <= 1.f)) fail("dropout: probability %g not in [0, 1]", double(p));
  const float keep = p < 1.f ? float(1.0 / (1.0 - double(p))) : 0.f;
  rng.for_each_block(n, [&](std::size_t i, const uint32_t* r) {
    if (i + Rng::kLanes <= n)
      for (int l = 0; l < Rng::kLanes; ++l) mask[i + l] = Rng::to_unit(r[l]) >= p ? keep : 0.f;
    else
      for (std::size_t l = 0; i + l < n; ++l) mask[i + l] = Rng::to_unit(r[l]) >= p ? keep : 0.f;
  });
}

}  // namespace lt
