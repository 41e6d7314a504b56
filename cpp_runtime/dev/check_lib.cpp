// ctypes-loadable shim over the runtime headers, for check_runtime.py.
// Every entry point returns 0, or 1 with the message in lt_check_error().
#include <cstdio>
#include <exception>

#include "../conv.h"
#include "../pool.h"
#include "../random.h"

namespace {
char g_error[512];
lt::Arena& arena() {
  static lt::Arena a;
  if (a.capacity() == 0) a.reserve(std::size_t(1) << 28);
  return a;
}
template <class F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(g_error, sizeof g_error, "%s", e.what());
    return 1;
  }
}
}  // namespace

extern "C" {

const char* lt_check_error() { return g_error; }

// variant: 0 = public entry point (dispatch), 1 = im2col + sgemm, 2 = direct.
int lt_conv_forward(int variant, const float* x, const float* w, const float* b, float* y, int N,
                    int C, int H, int W, int F, int KH, int KW, int sh, int sw, int ph, int pw) {
  return guarded([&] {
    lt::Arena& a = arena();
    if (variant == 0) {
      if (sh == sw && ph == pw) lt::conv2d_forward(x, w, b, y, N, C, H, W, F, KH, KW, sh, ph, a);
      else lt::conv2d_forward(x, w, b, y, N, C, H, W, F, KH, KW, sh, sw, ph, pw, a);
      return;
    }
    const lt::Conv2dShape s = lt::conv2d_shape(N, C, H, W, F, KH, KW, sh, sw, ph, pw);
    if (variant == 1) lt::conv_detail::gemm_forward(x, w, b, y, s, a);
    else lt::conv_detail::direct_forward<5, 4>(x, w, b, y, s, a);
  });
}

int lt_conv_backward(int variant, const float* x, const float* w, const float* dy, float* dx,
                     float* dw, float* db, int N, int C, int H, int W, int F, int KH, int KW,
                     int sh, int sw, int ph, int pw) {
  return guarded([&] {
    lt::Arena& a = arena();
    if (variant == 0) {
      if (sh == sw && ph == pw)
        lt::conv2d_backward(x, w, dy, dx, dw, db, N, C, H, W, F, KH, KW, sh, ph, a);
      else lt::conv2d_backward(x, w, dy, dx, dw, db, N, C, H, W, F, KH, KW, sh, sw, ph, pw, a);
      return;
    }
    const lt::Conv2dShape s = lt::conv2d_shape(N, C, H, W, F, KH, KW, sh, sw, ph, pw);
    if (db) lt::conv_detail::bias_backward(dy, db, s);
    if (variant == 1) {
      lt::conv_detail::gemm_backward(x, w, dy, dx, dw, s, a);
    } else {
      if (dx) lt::conv_detail::direct_dx<6, 4>(w, dy, dx, s, a);
      if (dw) lt::conv_detail::direct_dw<5, 5>(x, dy, dw, s, a);
    }
  });
}

int lt_arena_in_use() { return int(arena().mark()); }
void lt_arena_reset_peak() { arena().reset_peak(); }
long long lt_arena_peak() { return (long long)arena().peak(); }
long long lt_conv_workspace(int N, int C, int H, int W, int F, int KH, int KW, int sh, int sw,
                            int ph, int pw) {
  return (long long)lt::conv2d_workspace_bytes(N, C, H, W, F, KH, KW, sh, sw, ph, pw);
}

int lt_max_pool_forward(const float* x, float* y, int32_t* am, int N, int C, int H, int W, int k,
                        int s) {
  return guarded([&] { lt::max_pool2d_forward(x, y, am, N, C, H, W, k, s); });
}
int lt_max_pool_backward(const float* dy, const int32_t* am, float* dx, int N, int C, int H, int W,
                         int k, int s) {
  return guarded([&] { lt::max_pool2d_backward(dy, am, dx, N, C, H, W, k, s); });
}
int lt_avg_pool_forward(const float* x, float* y, int N, int C, int H, int W, int k, int s) {
  return guarded([&] { lt::avg_pool2d_forward(x, y, N, C, H, W, k, s); });
}
int lt_avg_pool_backward(const float* dy, float* dx, int N, int C, int H, int W, int k, int s) {
  return guarded([&] { lt::avg_pool2d_backward(dy, dx, N, C, H, W, k, s); });
}

// kind: 0 next_u32 (as float bits), 1 uniform, 2 normal, 3 fill_u32, 4 fill_uniform(lo, hi),
// 5 fill_normal(lo = mean, hi = std).
int lt_rng(uint64_t seed, int kind, void* out, std::size_t n, float lo, float hi) {
  return guarded([&] {
    lt::Rng r(seed);
    uint32_t* u = static_cast<uint32_t*>(out);
    float* f = static_cast<float*>(out);
    switch (kind) {
      case 0: for (std::size_t i = 0; i < n; ++i) u[i] = r.next_u32(); break;
      case 1: for (std::size_t i = 0; i < n; ++i) f[i] = r.uniform(); break;
      case 2: for (std::size_t i = 0; i < n; ++i) f[i] = r.normal(); break;
      case 3: r.fill_u32(u, n); break;
      case 4: r.fill_uniform(f, n, lo, hi); break;
      default: r.fill_normal(f, n, lo, hi); break;
    }
  });
}

// `reps` consecutive masks of n from one generator, written one after another.
int lt_dropout(uint64_t seed, float* mask, std::size_t n, int reps, float p) {
  return guarded([&] {
    lt::Rng r(seed);
    for (int i = 0; i < reps; ++i) lt::dropout_mask(r, mask + i * n, n, p);
  });
}

}  // extern "C"
