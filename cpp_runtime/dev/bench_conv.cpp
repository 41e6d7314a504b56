// Times the conv / pool / dropout kernels on the paper's MNIST CNN shapes
// (batch 100; conv1 1->10 k5 28x28 -> 24x24, pool 2; conv2 10->20 k5 12x12 ->
// 8x8, pool 2).  Usage: bench_conv [reps]; run on one core with
// OPENBLAS_NUM_THREADS=1 (check_runtime.py does).  Prints the median ms.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "../conv.h"
#include "../pool.h"
#include "../random.h"

extern "C" void scipy_openblas_set_num_threads(int);

namespace {

int g_reps = 15;

double g_min = 0;  // fastest run of the last median_ms call

double median_ms(const std::function<void()>& f) {
  for (int i = 0; i < 2; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < g_reps; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    auto b = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(b - a).count());
  }
  std::sort(t.begin(), t.end());
  g_min = t[0];
  return t[t.size() / 2];
}

// median ms (fastest run in brackets), and GFLOP/s of the median
void row(const char* name, double ms, double mflop = 0) {
  if (mflop > 0) std::printf("  %-44s %8.3f ms (%.3f)  %6.1f GFLOP/s\n", name, ms, g_min, mflop / ms);
  else std::printf("  %-44s %8.3f ms (%.3f)\n", name, ms, g_min);
}

std::vector<float> randn(lt::Rng& r, std::size_t n) {
  std::vector<float> v(n);
  r.fill_normal(v.data(), n);
  return v;
}

struct Layer {
  lt::Conv2dShape s;
  std::vector<float> x, w, b, y, dy, dx, dw, db;
  Layer(lt::Rng& r, int N, int C, int H, int F, int K)
      : s(lt::conv2d_shape(N, C, H, H, F, K, K, 1, 1, 0, 0)) {
    x = randn(r, std::size_t(N) * C * H * H);
    w = randn(r, std::size_t(F) * C * K * K);
    b = randn(r, F);
    y.resize(std::size_t(N) * F * s.OH * s.OW);
    dy = randn(r, y.size());
    dx.resize(x.size());
    dw.resize(w.size());
    db.resize(F);
  }
  double mflop() const { return 2e-6 * s.N * s.F * s.out_plane() * s.ckk(); }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_reps = std::max(3, std::atoi(argv[1]));
  scipy_openblas_set_num_threads(1);
  lt::Arena arena;
  arena.reserve(std::size_t(1) << 28);
  lt::Rng rng(1);
  Layer c1(rng, 100, 1, 28, 10, 5), c2(rng, 100, 10, 12, 20, 5);
  using namespace lt::conv_detail;
  std::printf("MNIST CNN shapes, batch 100, median of %d runs\n", g_reps);

  for (Layer* L : {&c1, &c2}) {
    const lt::Conv2dShape& s = L->s;
    const float *x = L->x.data(), *w = L->w.data(), *b = L->b.data(), *dy = L->dy.data();
    float *y = L->y.data(), *dx = L->dx.data(), *dw = L->dw.data(), *db = L->db.data();
    const double fl = L->mflop();
    std::printf("conv %d->%d k%d on %dx%d (out %dx%d), %.1f MFLOP per product\n", s.C, s.F, s.KH,
                s.H, s.W, s.OH, s.OW, fl);
    row("fwd   gemm (im2col + sgemm per image)", median_ms([&] { gemm_forward(x, w, b, y, s, arena); }), fl);
    row("fwd   direct <FB=5,RB=4>", median_ms([&] { direct_forward<5, 4>(x, w, b, y, s, arena); }), fl);
    row("fwd   direct <FB=4,RB=6>", median_ms([&] { direct_forward<4, 6>(x, w, b, y, s, arena); }), fl);
    row("fwd   direct <FB=5,RB=3>", median_ms([&] { direct_forward<5, 3>(x, w, b, y, s, arena); }), fl);
    row("fwd   direct <FB=2,RB=8>", median_ms([&] { direct_forward<2, 8>(x, w, b, y, s, arena); }), fl);
    row("fwd   direct <FB=10,RB=2>", median_ms([&] { direct_forward<10, 2>(x, w, b, y, s, arena); }), fl);
    row("fwd   direct <FB=3,RB=8>", median_ms([&] { direct_forward<3, 8>(x, w, b, y, s, arena); }), fl);
    row("dw    gemm", median_ms([&] { gemm_backward(x, w, dy, nullptr, dw, s, arena); }), fl);
    row("dw    direct <FB=5,KB=5>", median_ms([&] { direct_dw<5, 5>(x, dy, dw, s, arena); }), fl);
    row("dw    direct <FB=4,KB=5>", median_ms([&] { direct_dw<4, 5>(x, dy, dw, s, arena); }), fl);
    row("dw    direct <FB=4,KB=6>", median_ms([&] { direct_dw<4, 6>(x, dy, dw, s, arena); }), fl);
    row("dw    direct <FB=6,KB=4>", median_ms([&] { direct_dw<6, 4>(x, dy, dw, s, arena); }), fl);
    row("dw    direct <FB=3,KB=8>", median_ms([&] { direct_dw<3, 8>(x, dy, dw, s, arena); }), fl);
    row("dw    direct <FB=5,KB=5> group 1 image", median_ms([&] { direct_dw<5, 5>(x, dy, dw, s, arena, 1); }), fl);
    row("dw    direct <FB=5,KB=5> group 6K floats", median_ms([&] { direct_dw<5, 5>(x, dy, dw, s, arena, 6144); }), fl);
    row("dw    direct <FB=5,KB=5> group 64K floats", median_ms([&] { direct_dw<5, 5>(x, dy, dw, s, arena, 65536); }), fl);
    row("db", median_ms([&] { bias_backward(dy, db, s); }));
    if (s.C > 1) {
      row("dx    gemm (sgemm + col2im)", median_ms([&] { gemm_backward(x, w, dy, dx, nullptr, s, arena); }), fl);
      row("dx    direct <KB=5,RB=4>", median_ms([&] { direct_dx<5, 4>(w, dy, dx, s, arena); }), fl);
      row("dx    direct <KB=4,RB=6>", median_ms([&] { direct_dx<4, 6>(w, dy, dx, s, arena); }), fl);
      row("dx    direct <KB=3,RB=8>", median_ms([&] { direct_dx<3, 8>(w, dy, dx, s, arena); }), fl);
      row("dx    direct <KB=6,RB=4>", median_ms([&] { direct_dx<6, 4>(w, dy, dx, s, arena); }), fl);
      row("dx    direct <KB=10,RB=2>", median_ms([&] { direct_dx<10, 2>(w, dy, dx, s, arena); }), fl);
    }
  }

  std::printf("other stride-1 shapes (which path should the dispatch take?)\n");
  {
    struct Case { int N, C, H, F, K, pad; };
    for (Case c : {Case{8, 64, 32, 64, 3, 1}, Case{16, 32, 16, 64, 3, 1}, Case{8, 3, 32, 32, 5, 2},
                   Case{4, 128, 8, 128, 3, 1}, Case{32, 16, 28, 16, 3, 1}}) {
      const lt::Conv2dShape s = lt::conv2d_shape(c.N, c.C, c.H, c.H, c.F, c.K, c.K, 1, 1, c.pad, c.pad);
      std::vector<float> x = randn(rng, std::size_t(c.N) * c.C * c.H * c.H);
      std::vector<float> w = randn(rng, std::size_t(c.F) * s.ckk()), b = randn(rng, c.F);
      std::vector<float> y(std::size_t(c.N) * c.F * s.out_plane()), dy = randn(rng, y.size());
      std::vector<float> dx(x.size()), dw(w.size());
      const double fl = 2e-6 * s.N * s.F * s.out_plane() * s.ckk();
      char name[96];
      std::printf(" N=%d C=%d %dx%d F=%d k%d pad %d: %.0f MFLOP per product\n", c.N, c.C, c.H, c.H,
                  c.F, c.K, c.pad, fl);
      std::snprintf(name, sizeof name, "fwd gemm");
      row(name, median_ms([&] { gemm_forward(x.data(), w.data(), b.data(), y.data(), s, arena); }), fl);
      std::snprintf(name, sizeof name, "fwd direct");
      row(name, median_ms([&] { direct_forward<5, 4>(x.data(), w.data(), b.data(), y.data(), s, arena); }), fl);
      std::snprintf(name, sizeof name, "dx  gemm");
      row(name, median_ms([&] { gemm_backward(x.data(), w.data(), dy.data(), dx.data(), nullptr, s, arena); }), fl);
      std::snprintf(name, sizeof name, "dx  direct");
      row(name, median_ms([&] { direct_dx<6, 4>(w.data(), dy.data(), dx.data(), s, arena); }), fl);
      std::snprintf(name, sizeof name, "dw  gemm");
      row(name, median_ms([&] { gemm_backward(x.data(), w.data(), dy.data(), nullptr, dw.data(), s, arena); }), fl);
      std::snprintf(name, sizeof name, "dw  direct");
      row(name, median_ms([&] { direct_dw<5, 5>(x.data(), dy.data(), dw.data(), s, arena); }), fl);
    }
  }

  std::printf("public entry points (dispatch)\n");
  auto fwd = [&](Layer& L) {
    const lt::Conv2dShape& s = L.s;
    lt::conv2d_forward(L.x.data(), L.w.data(), L.b.data(), L.y.data(), s.N, s.C, s.H, s.W, s.F,
                       s.KH, s.KW, 1, 0, arena);
  };
  auto bwd = [&](Layer& L, bool need_dx) {
    const lt::Conv2dShape& s = L.s;
    lt::conv2d_backward(L.x.data(), L.w.data(), L.dy.data(), need_dx ? L.dx.data() : nullptr,
                        L.dw.data(), L.db.data(), s.N, s.C, s.H, s.W, s.F, s.KH, s.KW, 1, 0, arena);
  };
  row("conv1 forward", median_ms([&] { fwd(c1); }));
  row("conv1 backward (dw, db; no dx)", median_ms([&] { bwd(c1, false); }));
  row("conv2 forward", median_ms([&] { fwd(c2); }));
  row("conv2 backward (dx, dw, db)", median_ms([&] { bwd(c2, true); }));
  row("both convs fwd + bwd, one call each", median_ms([&] { fwd(c1); fwd(c2); bwd(c2, true); bwd(c1, false); }));

  std::printf("pooling and dropout\n");
  std::vector<int32_t> am(c1.y.size());
  std::vector<float> p1(c1.y.size() / 4), g1(c1.y.size());
  row("max_pool2d fwd 100x10x24x24 k2 s2", median_ms([&] {
        lt::max_pool2d_forward(c1.y.data(), p1.data(), am.data(), 100, 10, 24, 24, 2, 2); }));
  row("max_pool2d bwd 100x10x24x24 k2 s2", median_ms([&] {
        lt::max_pool2d_backward(p1.data(), am.data(), g1.data(), 100, 10, 24, 24, 2, 2); }));
  row("max_pool2d fwd 100x20x8x8 k2 s2", median_ms([&] {
        lt::max_pool2d_forward(c2.y.data(), p1.data(), am.data(), 100, 20, 8, 8, 2, 2); }));
  row("avg_pool2d fwd 100x10x24x24 k2 s2", median_ms([&] {
        lt::avg_pool2d_forward(c1.y.data(), p1.data(), 100, 10, 24, 24, 2, 2); }));
  std::vector<float> mask(100 * 50);
  lt::Rng dr(3);
  row("dropout_mask 100x50", median_ms([&] { lt::dropout_mask(dr, mask.data(), mask.size(), 0.5f); }));
  uint64_t seed = 0;
  row("Rng construction x1000 (8 jumped streams)", median_ms([&] {
        for (int i = 0; i < 1000; ++i) {
          lt::Rng r(++seed);
          lt::dropout_mask(r, mask.data(), 8, 0.5f);
        } }));
  return 0;
}
