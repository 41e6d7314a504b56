// The gradient all-reduce of a data-parallel training step (lt.train_step(...,
// data_parallel=True)): called once per update, between the backward pass and
// clipping + the optimizer update, on one flat buffer holding every gradient.
// The module itself does not link MPI: lantern_stage.distributed installs a
// C function (collective_mpi.cpp, built against the MPI in use, or a callback
// into mpi4py) with `lantern_set_collective`.  Until then the world has one
// rank and the all-reduce is the identity, so the same compiled step runs
// with or without MPI.
#pragma once
#include <cstdint>

#include "error.h"

namespace lt {

struct Collective {
  // Sums `n` floats in place across all ranks; returns 0 or an MPI error code.
  using AllreduceSum = int (*)(float* data, int64_t n, void* ctx);
  AllreduceSum allreduce_sum = nullptr;
  void* ctx = nullptr;
  int64_t world = 1;
};

// data <- mean over ranks of data.
inline void allreduce_mean(Collective& c, float* data, int64_t n) {
  if (c.world <= 1 || c.allreduce_sum == nullptr) return;
  const int err = c.allreduce_sum(data, n, c.ctx);
  if (err != 0) fail("gradient all-reduce of %lld floats failed (MPI error %d)", static_cast<long long>(n), err);
  const float inv = 1.0f / static_cast<float>(c.world);
  for (int64_t i = 0; i < n; ++i) data[i] *= inv;
}

}  // namespace lt
