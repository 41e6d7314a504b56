"""One rank of the data-parallel tests, run by tests/test_distributed.py as
`mpirun -n 2 python tests/mpi_worker.py OUT`.  Each rank trains the three
models of dp_models.py data-parallel on its shard and writes OUT/rank<r>.npz
(losses and final weights); the CNN is checkpointed after CHECKPOINT_AT steps
with TrainStep.save(OUT/cnn_ckpt_r<r>.npz): only rank 0 may write its file."""
from __future__ import annotations

import os
import sys

import numpy as np

import lantern_stage as lt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dp_models as M  # noqa: E402


def main(out: str) -> None:
    rank, world = lt.distributed.rank(), lt.distributed.world_size()
    assert world == 2, world
    result = {}
    part = M.BATCH // world
    rows = slice(rank * part, (rank + 1) * part)

    model, step = M.cnn(part, data_parallel=True)
    x, y = M.cnn_data()
    losses = []
    for t in range(M.STEPS):
        losses.append(step(np.ascontiguousarray(x[t, rows]), np.ascontiguousarray(y[t, rows])))
        if t + 1 == M.CHECKPOINT_AT:
            step.save(os.path.join(out, f"cnn_ckpt_r{rank}.npz"))
    result["cnn.losses"] = np.array(losses)
    result.update({f"cnn.w.{k}": v for k, v in M.weights(model).items()})

    model, step = M.lstm(part, data_parallel=True)
    xs, ys = M.lstm_data()
    losses = [step(np.ascontiguousarray(xs[t][:, rows]), np.ascontiguousarray(ys[t][:, rows])) for t in range(M.STEPS)]
    result["lstm.losses"] = np.array(losses)
    result.update({f"lstm.w.{k}": v for k, v in M.weights(model).items()})

    model, step = M.treelstm(M.TREES_PER_UPDATE // world, data_parallel=True)
    losses = [step(*tree) for tree in lt.distributed.shard(M.trees())]
    result["tree.losses"] = np.array(losses)
    result.update({f"tree.w.{k}": v for k, v in M.weights(model).items()})
    result["allreduce_mode"] = np.array(lt.distributed.allreduce_mode())

    # The same CNN run through the other all-reduce: a cffi callback into mpi4py.
    os.environ["LANTERN_ALLREDUCE"] = "mpi4py"
    lt.distributed._world()._collective = None
    model, step = M.cnn(part, data_parallel=True)
    for t in range(M.STEPS):
        step(np.ascontiguousarray(x[t, rows]), np.ascontiguousarray(y[t, rows]))
    result.update({f"mpi4py.w.{k}": v for k, v in M.weights(model).items()})
    result["mpi4py.mode"] = np.array(lt.distributed.allreduce_mode())
    np.savez(os.path.join(out, f"rank{rank}.npz"), **result)


if __name__ == "__main__":
    main(sys.argv[1])
