// Kernels of the neural-network ops (lantern_stage/ops/nn.py) that are not
// convolution or pooling themselves: the row gather of embeddings and its
// scatter-add, the plane gather of max pooling, and dropout masks drawn from
// a generator whose whole state is a captured int32[4] array.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "conv.h"
#include "error.h"
#include "pool.h"
#include "random.h"

namespace lt {

// out[i, :] = table[idx[i], :] for i < n (bounds-checked); and its gradient,
// dtable[idx[i], :] += dout[i, :] (repeated indices add up).
inline void gather_rows(const float* table, const int32_t* idx, float* out, long n, long rows, long width) {
  for (long i = 0; i < n; ++i)
    std::memcpy(out + i * width, table + long(check_index(idx[i], rows, "embedding index")) * width,
                sizeof(float) * width);
}

// out[i] = a[idx[i]] for i < n, an IntArray read at an int32 tensor of
// indices (numpy's a[idx]: a negative index counts from the end).
inline void gather_index(const int32_t* a, long a_len, const int32_t* idx, int32_t* out, long n) {
  for (long i = 0; i < n; ++i) out[i] = a[wrap_index(idx[i], a_len, "IntArray read")];
}

// dtable[idx[i], :] = rows[i, :] (lt.assign with an index; a repeated index
// keeps its last row, as numpy's).  `what` names the indices in errors.
inline void put_rows(const float* rows_in, const int32_t* idx, float* dtable, long n, long rows, long width,
                     const char* what) {
  for (long i = 0; i < n; ++i)
    std::memcpy(dtable + long(check_index(idx[i], rows, what)) * width, rows_in + i * width, sizeof(float) * width);
}

inline void scatter_add_rows(const float* dout, const int32_t* idx, float* dtable, long n, long rows, long width,
                             const char* what) {
  for (long i = 0; i < n; ++i) {
    float* dst = dtable + long(check_index(idx[i], rows, what)) * width;
    const float* src = dout + i * width;
    for (long j = 0; j < width; ++j) dst[j] += src[j];
  }
}

// Max pooling as a gather: y[p, o] = x[p, at[p, o]] over `planes` planes of
// `in_plane` inputs and `out_plane` outputs; the gradient goes back to the
// same element.  `at` comes from max_pool2d_forward's argmax.
inline void gather_plane(const float* x, const int32_t* at, float* y, long planes, long in_plane, long out_plane) {
  for (long p = 0; p < planes; ++p)
    for (long o = 0; o < out_plane; ++o) y[p * out_plane + o] = x[p * in_plane + at[p * out_plane + o]];
}

// Adds into dx; or, as dx's first write (`accumulate` false, passes/first_write.py),
// assigns it: each plane is zeroed right before its scatter, while it is in L1,
// instead of the whole buffer being zero-filled beforehand by a pass of its own.
inline void gather_plane_backward(const float* dy, const int32_t* at, float* dx, long planes, long in_plane,
                                  long out_plane, bool accumulate = true) {
  for (long p = 0; p < planes; ++p) {
    if (!accumulate) std::memset(dx + p * in_plane, 0, sizeof(float) * in_plane);
    for (long o = 0; o < out_plane; ++o) dx[p * in_plane + at[p * out_plane + o]] += dy[p * out_plane + o];
  }
}

// The argmax of every pooling window (the pooled values go to `scratch`).
inline void max_pool2d_argmax(const float* x, int32_t* at, float* scratch, int N, int C, int H, int W, int k, int s) {
  max_pool2d_forward(x, scratch, at, N, C, H, W, k, s);
}

// A generator's state is int32[4] = {seed lo, seed hi, draw lo, draw hi}.
// Every draw builds an Rng from (seed, draw number) and advances the draw
// number, so the state is four integers: saved in a checkpoint, it resumes
// the exact sequence of masks.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline Rng next_rng(int32_t* state) {
  uint32_t w[4];
  std::memcpy(w, state, sizeof w);
  const uint64_t seed = uint64_t(w[0]) | uint64_t(w[1]) << 32;
  uint64_t draw = uint64_t(w[2]) | uint64_t(w[3]) << 32;
  Rng rng(seed ^ mix64(draw + 0x632be59bd9b4e019ull));
  ++draw;
  w[2] = uint32_t(draw);
  w[3] = uint32_t(draw >> 32);
  std::memcpy(state, w, sizeof w);
  return rng;
}

// mask[i] = 0 with probability p, else 1 / (1 - p): y = x * mask is dropout.
inline void dropout_draw(int32_t* state, float* mask, std::size_t n, float p) {
  Rng rng = next_rng(state);
  dropout_mask(rng, mask, n, p);
}

}  // namespace lt
