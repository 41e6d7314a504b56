// The native gradient all-reduce: built by lantern_stage.distributed against
// the mpi.h and libmpi that mpi4py runs on (cached like a module), loaded once
// per process, and handed to every data-parallel module as
// lt::Collective::allreduce_sum (collective.h).  `ctx` points at the MPI_Comm
// handle of mpi4py's communicator (MPI._addressof), which stays alive for the
// whole process.
#include <mpi.h>

#include <climits>
#include <cstdint>

extern "C" int lantern_mpi_allreduce_sum_f32(float* data, int64_t n, void* ctx) {
  MPI_Comm comm = *static_cast<MPI_Comm*>(ctx);
  while (n > 0) {  // MPI counts are int
    const int chunk = n > INT_MAX ? INT_MAX : static_cast<int>(n);
    const int err = MPI_Allreduce(MPI_IN_PLACE, data, chunk, MPI_FLOAT, MPI_SUM, comm);
    if (err != MPI_SUCCESS) return err;
    data += chunk;
    n -= chunk;
  }
  return 0;
}
