// Times the conv / pool / dropout kernels on the paper's MNIST CNN shapes
// (batch 100; conv1 1->10 k5 28x28 -> 24x24, pool 2; conv2 10->20 k5 12x12 ->
// 8x8, pool 2).  Usage: bench_conv [rounds]; run on one core with
// OPENBLAS_NUM_THREADS=1 (check_runtime.py does).
//
// The machine is shared and noisy, so the variants of one group run
// round-robin (A B C A B C ...), each round timing every variant once: a
// burst of load from elsewhere then hits all of them alike.  Printed: median
// ms, fastest run in brackets, GFLOP/s of the median.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../conv.h"
#include "../pool.h"
#include "../random.h"

namespace {

int g_rounds = 15;

struct Variant {
  std::string name;
  std::function<void()> run;
  double mflop = 0;
};

void group(const char* title, const std::vector<Variant>& vs) {
  std::printf("%s\n", title);
  std::vector<std::vector<double>> t(vs.size());
  for (const Variant& v : vs) v.run();  // warm up
  for (int r = 0; r < g_rounds; ++r)
    for (std::size_t i = 0; i < vs.size(); ++i) {
      auto a = std::chrono::steady_clock::now();
      vs[i].run();
      auto b = std::chrono::steady_clock::now();
      t[i].push_back(std::chrono::duration<double, std::milli>(b - a).count());
    }
  for (std::size_t i = 0; i < vs.size(); ++i) {
    std::sort(t[i].begin(), t[i].end());
    const double med = t[i][t[i].size() / 2];
    std::printf("  %-44s %8.3f ms (%.3f)", vs[i].name.c_str(), med, t[i][0]);
    if (vs[i].mflop > 0) std::printf("  %6.1f GFLOP/s", vs[i].mflop / med);
    std::printf("\n");
  }
}

std::vector<float> randn(lt::Rng& r, std::size_t n) {
  std::vector<float> v(n);
  r.fill_normal(v.data(), n);
  return v;
}

struct Layer {
  lt::Conv2dShape s;
  std::vector<float> x, w, b, y, dy, dx, dw, db;
  Layer(lt::Rng& r, int N, int C, int H, int F, int K, int pad = 0)
      : s(lt::conv2d_shape(N, C, H, H, F, K, K, 1, 1, pad, pad)) {
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
  if (argc > 1) g_rounds = std::max(3, std::atoi(argv[1]));
  scipy_openblas_set_num_threads(1);
  lt::Arena arena;
  arena.reserve(std::size_t(1) << 28);
  lt::Rng rng(1);
  Layer c1(rng, 100, 1, 28, 10, 5), c2(rng, 100, 10, 12, 20, 5);
  using namespace lt::conv_detail;
  std::printf("MNIST CNN shapes, batch 100, %d rounds; median ms (fastest)\n", g_rounds);

  for (Layer* L : {&c1, &c2}) {
    const lt::Conv2dShape& s = L->s;
    const float *x = L->x.data(), *w = L->w.data(), *b = L->b.data(), *dy = L->dy.data();
    float *y = L->y.data(), *dx = L->dx.data(), *dw = L->dw.data(), *db = L->db.data();
    const double fl = L->mflop();
    char title[128];
    std::snprintf(title, sizeof title, "conv %d->%d k%d on %dx%d (out %dx%d), %.1f MFLOP per product",
                  s.C, s.F, s.KH, s.H, s.W, s.OH, s.OW, fl);
    std::printf("%s\n", title);
    group(" forward", {
        {"gemm (im2col + sgemm per image)", [&] { gemm_forward(x, w, b, y, s, arena); }, fl},
        {"direct <FB=5,RB=4>", [&] { direct_forward<5, 4>(x, w, b, y, s, arena); }, fl},
        {"direct <FB=10,RB=2>", [&] { direct_forward<10, 2>(x, w, b, y, s, arena); }, fl},
        {"direct <FB=4,RB=6>", [&] { direct_forward<4, 6>(x, w, b, y, s, arena); }, fl},
        {"direct <FB=3,RB=8>", [&] { direct_forward<3, 8>(x, w, b, y, s, arena); }, fl},
    });
    group(" weight gradient", {
        {"gemm", [&] { gemm_backward(x, w, dy, nullptr, dw, s, arena); }, fl},
        {"direct <FB=5,KB=5>, 16K-float image groups", [&] { direct_dw<5, 5>(x, dy, dw, s, arena); }, fl},
        {"direct <FB=4,KB=5>", [&] { direct_dw<4, 5>(x, dy, dw, s, arena); }, fl},
        {"direct <FB=4,KB=6>", [&] { direct_dw<4, 6>(x, dy, dw, s, arena); }, fl},
        {"direct <FB=3,KB=8>", [&] { direct_dw<3, 8>(x, dy, dw, s, arena); }, fl},
        {"direct <FB=5,KB=5>, one image per group", [&] { direct_dw<5, 5>(x, dy, dw, s, arena, 1); }, fl},
        {"direct <FB=5,KB=5>, 6K-float groups", [&] { direct_dw<5, 5>(x, dy, dw, s, arena, 6144); }, fl},
        {"direct <FB=5,KB=5>, 64K-float groups", [&] { direct_dw<5, 5>(x, dy, dw, s, arena, 65536); }, fl},
        {"bias gradient", [&] { bias_backward(dy, db, s); }},
    });
    if (s.C > 1)
      group(" input gradient", {
          {"gemm (sgemm + col2im)", [&] { gemm_backward(x, w, dy, dx, nullptr, s, arena); }, fl},
          {"direct <KB=6,RB=4>", [&] { direct_dx<6, 4>(w, dy, dx, s, arena); }, fl},
          {"direct <KB=5,RB=4>", [&] { direct_dx<5, 4>(w, dy, dx, s, arena); }, fl},
          {"direct <KB=3,RB=8>", [&] { direct_dx<3, 8>(w, dy, dx, s, arena); }, fl},
          {"direct <KB=10,RB=2>", [&] { direct_dx<10, 2>(w, dy, dx, s, arena); }, fl},
      });
  }

  std::printf("other stride-1 shapes: which path should the dispatch take?\n");
  {
    struct Case { int N, C, H, F, K, pad; };
    for (Case c : {Case{8, 64, 32, 64, 3, 1}, Case{16, 32, 16, 64, 3, 1}, Case{8, 3, 32, 32, 5, 2},
                   Case{4, 128, 8, 128, 3, 1}, Case{32, 16, 28, 16, 3, 1}}) {
      Layer L(rng, c.N, c.C, c.H, c.F, c.K, c.pad);
      const lt::Conv2dShape& s = L.s;
      const float *x = L.x.data(), *w = L.w.data(), *b = L.b.data(), *dy = L.dy.data();
      float *y = L.y.data(), *dx = L.dx.data(), *dw = L.dw.data();
      const double fl = L.mflop();
      char title[128];
      std::snprintf(title, sizeof title, " N=%d C=%d %dx%d F=%d k%d pad %d: %.0f MFLOP per product",
                    c.N, c.C, c.H, c.H, c.F, c.K, c.pad, fl);
      group(title, {
          {"fwd gemm", [&] { gemm_forward(x, w, b, y, s, arena); }, fl},
          {"fwd direct", [&] { direct_forward<5, 4>(x, w, b, y, s, arena); }, fl},
          {"dx  gemm", [&] { gemm_backward(x, w, dy, dx, nullptr, s, arena); }, fl},
          {"dx  direct", [&] { direct_dx<6, 4>(w, dy, dx, s, arena); }, fl},
          {"dw  gemm", [&] { gemm_backward(x, w, dy, nullptr, dw, s, arena); }, fl},
          {"dw  direct", [&] { direct_dw<5, 5>(x, dy, dw, s, arena); }, fl},
      });
    }
  }

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
  group("public entry points (dispatch)", {
      {"conv1 forward", [&] { fwd(c1); }},
      {"conv1 backward (dw, db; no dx)", [&] { bwd(c1, false); }},
      {"conv2 forward", [&] { fwd(c2); }},
      {"conv2 backward (dx, dw, db)", [&] { bwd(c2, true); }},
      {"both convs fwd + bwd, one call each", [&] { fwd(c1); fwd(c2); bwd(c2, true); bwd(c1, false); }},
  });

  std::vector<int32_t> am(c1.y.size());
  std::vector<float> p1(c1.y.size() / 4), g1(c1.y.size()), mask(100 * 50);
  lt::Rng dr(3);
  uint64_t seed = 0;
  group("pooling and dropout", {
      {"max_pool2d fwd 100x10x24x24 k2 s2", [&] {
         lt::max_pool2d_forward(c1.y.data(), p1.data(), am.data(), 100, 10, 24, 24, 2, 2); }},
      {"max_pool2d bwd 100x10x24x24 k2 s2", [&] {
         lt::max_pool2d_backward(p1.data(), am.data(), g1.data(), 100, 10, 24, 24, 2, 2); }},
      {"max_pool2d fwd 100x20x8x8 k2 s2", [&] {
         lt::max_pool2d_forward(c2.y.data(), p1.data(), am.data(), 100, 20, 8, 8, 2, 2); }},
      {"max_pool2d fwd 100x10x24x24 k3 s2 (generic)", [&] {
         lt::max_pool2d_forward(c1.y.data(), p1.data(), am.data(), 100, 10, 24, 24, 3, 2); }},
      {"avg_pool2d fwd 100x10x24x24 k2 s2", [&] {
         lt::avg_pool2d_forward(c1.y.data(), p1.data(), 100, 10, 24, 24, 2, 2); }},
      {"avg_pool2d bwd 100x10x24x24 k2 s2", [&] {
         lt::avg_pool2d_backward(p1.data(), g1.data(), 100, 10, 24, 24, 2, 2); }},
      {"dropout_mask 100x50", [&] { lt::dropout_mask(dr, mask.data(), mask.size(), 0.5f); }},
      {"Rng construction + 8-float mask, x1000", [&] {
         for (int i = 0; i < 1000; ++i) {
           lt::Rng r(++seed);
           lt::dropout_mask(r, mask.data(), 8, 0.5f);
         } }},
  });
  return 0;
}
