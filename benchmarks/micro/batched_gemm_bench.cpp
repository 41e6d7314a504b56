// The per-head products of the char transformer (64 matrices per product):
// OpenBLAS one call per matrix (lt::batched_gemm today), scipy_cblas_sgemm_batch_strided
// (OpenBLAS >= 0.3.30), and the register-blocked small_gemm.h. benchmarks/NOTES.md has the
// results and the build line:
//   g++ -O3 -march=native -std=c++17 -Icpp_runtime -Ibenchmarks/micro -I$OB/include \
//       benchmarks/micro/batched_gemm_bench.cpp -L$OB/lib -lscipy_openblas -Wl,-rpath,$OB/lib
//   OPENBLAS_NUM_THREADS=1 taskset -c 1 ./a.out      (OPENBLAS_CORETYPE=Haswell: AMD's kernels)
#include <chrono>
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cmath>
#include "blas.h"
#include "small_gemm.h"
using clk = std::chrono::steady_clock;
struct Case { bool ta, tb; int M, N, K; long sa, sb, sc; };
int main() {
  // from the generated step: {16,4} batch flattened to 64 with uniform strides
  Case cases[] = {
    {false, false, 32, 32, 16, 512, 512, 1024},  // q @ kT (kT copied)
    {false, true, 32, 32, 16, 512, 512, 1024},   // q @ k^T via tb
    {false, false, 32, 16, 32, 1024, 512, 512},  // P @ v
    {false, true, 32, 32, 16, 512, 512, 1024},   // dP = dO v^T
    {true, false, 32, 16, 32, 1024, 512, 512},   // dV = P^T dO
    {false, true, 32, 16, 32, 1024, 512, 512},   // dQ = dS K  (tb on kT)
    {true, false, 16, 32, 32, 512, 1024, 512},   // dKT = Q^T dS
  };
  std::vector<float> A(64 * 1024 + 4096), B(64 * 1024 + 4096), C(64 * 1024 + 4096), C2(C.size());
  for (size_t i = 0; i < A.size(); ++i) { A[i] = std::sin(i * 0.37f); B[i] = std::cos(i * 0.11f); }
  for (auto& c : cases) {
    int lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
    double best[3] = {1e9, 1e9, 1e9};
    for (int rep = 0; rep < 7; ++rep) {
      for (int v = 0; v < 3; ++v) {
        auto t0 = clk::now();
        for (int it = 0; it < 200; ++it) {
          if (v == 0) for (int t = 0; t < 64; ++t) lt::gemm(c.ta, c.tb, c.M, c.N, c.K, A.data() + t * c.sa, B.data() + t * c.sb, C.data() + t * c.sc, 0.0f);
          else if (v == 1) scipy_cblas_sgemm_batch_strided(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, c.M, c.N, c.K, 1.0f, A.data(), lda, c.sa, B.data(), ldb, c.sb, 0.0f, C2.data(), c.N, c.sc, 64);
          else for (int t = 0; t < 64; ++t) lt::small_gemm(c.ta, c.tb, c.M, c.N, c.K, A.data() + t * c.sa, B.data() + t * c.sb, C2.data() + t * c.sc, false);
        }
        double us = std::chrono::duration<double, std::micro>(clk::now() - t0).count() / 200;
        best[v] = std::min(best[v], us);
      }
    }
    float err = 0; for (size_t i = 0; i < 64 * 1024; ++i) err = std::max(err, std::fabs(C[i] - C2[i]));
    std::printf("ta=%d tb=%d M=%d N=%d K=%d: loop %.2f us  batch_strided %.2f us  small %.2f us  (per 64: %.2f / %.2f / %.2f us per matrix) maxdiff %.2g\n",
                c.ta, c.tb, c.M, c.N, c.K, best[0], best[1], best[2], best[0]/64, best[1]/64, best[2]/64, err);
  }
}
