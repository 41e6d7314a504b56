/* The per-head products of the char transformer (64 matrices per product), packed, three
   ways: lt::gemm once per matrix (what lt::batched_gemm does), scipy_cblas_sgemm_batch_strided
   (OpenBLAS >= 0.3.30), and the register-blocked small_gemm.h. Every variant's output is
   checked against a float64 reference; the exit status is 1 if one is off. benchmarks/NOTES.md
   has the results. Build and run ($OB: the scipy_openblas32 package's directory; the
   argument: timed calls per repetition, default 200):
     g++ -O3 -march=native -std=c++17 -Icpp_runtime -Ibenchmarks/micro -I$OB/include \
         benchmarks/micro/batched_gemm_bench.cpp -L$OB/lib -lscipy_openblas -Wl,-rpath,$OB/lib
     OPENBLAS_NUM_THREADS=1 taskset -c 1 ./a.out      (OPENBLAS_CORETYPE=Haswell: AMD's kernels)
*/
#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "blas.h"
#include "small_gemm.h"
using clk = std::chrono::steady_clock;
struct Case { bool ta, tb; int M, N, K; long sa, sb, sc; };
int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 200;
  // the step's {16,4} batch flattened to 64 with uniform strides
  Case cases[] = {
    {false, false, 32, 32, 16, 512, 512, 1024},  // 32x32x16 with B as is (q @ k^T from a copy of k^T)
    {false, true, 32, 32, 16, 512, 512, 1024},   // q @ k^T via tb; dP = dO v^T
    {false, false, 32, 16, 32, 1024, 512, 512},  // P @ v
    {true, false, 32, 16, 32, 1024, 512, 512},   // dV = P^T dO
    {false, true, 32, 16, 32, 1024, 512, 512},   // dQ = dS K  (tb on kT)
    {true, false, 16, 32, 32, 512, 1024, 512},   // dKT = Q^T dS
  };
  const char* names[3] = {"loop", "batch_strided", "small"};
  std::vector<float> A(64 * 1024), B(64 * 1024);
  for (size_t i = 0; i < A.size(); ++i) { A[i] = std::sin(i * 0.37f); B[i] = std::cos(i * 0.11f); }
  bool ok = true;
  for (auto& c : cases) {
    int lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
    // The reference and the bound on float32 round-off of any summation order, K eps sum|a b|.
    std::vector<double> ref(64 * c.sc), bound(64 * c.sc);
    for (int t = 0; t < 64; ++t)
      for (int i = 0; i < c.M; ++i)
        for (int j = 0; j < c.N; ++j) {
          double s = 0, s_abs = 0;
          for (int k = 0; k < c.K; ++k) {
            double p = double(A[t * c.sa + (c.ta ? k * c.M + i : i * c.K + k)]) *
                       B[t * c.sb + (c.tb ? j * c.K + k : k * c.N + j)];
            s += p;
            s_abs += std::fabs(p);
          }
          ref[t * c.sc + i * c.N + j] = s;
          bound[t * c.sc + i * c.N + j] = c.K * FLT_EPSILON * s_abs;
        }
    std::vector<float> C[3] = {std::vector<float>(ref.size()), std::vector<float>(ref.size()),
                               std::vector<float>(ref.size())};
    auto run = [&](int v) {
      float* out = C[v].data();
      if (v == 0) for (int t = 0; t < 64; ++t) lt::gemm(c.ta, c.tb, c.M, c.N, c.K, A.data() + t * c.sa, B.data() + t * c.sb, out + t * c.sc, 0.0f);
      else if (v == 1) scipy_cblas_sgemm_batch_strided(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, c.M, c.N, c.K, 1.0f, A.data(), lda, c.sa, B.data(), ldb, c.sb, 0.0f, out, c.N, c.sc, 64);
      else for (int t = 0; t < 64; ++t) lt::small_gemm(c.ta, c.tb, c.M, c.N, c.K, A.data() + t * c.sa, B.data() + t * c.sb, out + t * c.sc, false);
    };
    double best[3] = {1e9, 1e9, 1e9};
    for (int rep = 0; rep < 7; ++rep) {
      for (int v = 0; v < 3; ++v) {
        auto t0 = clk::now();
        for (int it = 0; it < iters; ++it) run(v);
        double us = std::chrono::duration<double, std::micro>(clk::now() - t0).count() / std::max(iters, 1);
        best[v] = std::min(best[v], us);
      }
    }
    std::printf("ta=%d tb=%d M=%d N=%d K=%d: loop %.2f us  batch_strided %.2f us  small %.2f us  (per 64: %.2f / %.2f / %.2f us per matrix)\n",
                c.ta, c.tb, c.M, c.N, c.K, best[0], best[1], best[2], best[0]/64, best[1]/64, best[2]/64);
    for (int v = 0; v < 3; ++v) {
      run(v);
      double worst = 0;   // the largest error as a fraction of its bound
      for (int t = 0; t < 64; ++t)
        for (int e = 0; e < c.M * c.N; ++e) {
          long i = t * c.sc + e;
          double err = std::fabs(C[v][i] - ref[i]);
          worst = std::max(worst, err == 0 ? 0.0 : err / bound[i]);
        }
      if (worst > 1) ok = false;
      std::printf("  %-13s error %.2g of the bound%s\n", names[v], worst, worst > 1 ? "  WRONG" : "");
    }
  }
  return ok ? 0 : 1;
}
