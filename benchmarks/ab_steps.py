"""Interleaved A/B of the benchmark models' training-step times between source trees.

    python -m benchmarks.ab_steps A=/path/to/main B=/path/to/branch [--rounds 5] [--cpu 1]

Each round runs one worker process per tree, in turn (A B A B ...), pinned to
one CPU with one BLAS/OpenMP thread; a worker imports lantern_stage and the
benchmark harness from its tree (PYTHONPATH), builds each model's step (or finds
it in the compile cache) and trains it with the harness's loop
(`benchmarks.worker.train_timed`, so a tree must have it): the model's batches
in the benchmark's order, `--warmup` untimed steps, then `STEPS` steps timed
one by one (a treelstm_mb25 step is one update over 25 trees).  Printed per
model and tree: the median over rounds of each round's median step and of its
10th percentile (on a shared machine the 10th percentile is the steadier of the
two), and B / A of both.  Alternating the trees within one session spreads slow
phases of a loaded machine over both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

STEPS = {"rnn": 400, "lstm": 400, "cnn": 40, "treelstm": 300, "treelstm_mb25": 12,   # mb25: 12 updates of 25 trees
         "transformer": 40, "pinn": 60}

WORKER = r"""
import importlib, json, os, sys
import lantern_stage
assert lantern_stage.__file__.startswith(os.getcwd()), f"lantern_stage from {lantern_stage.__file__}, not this tree"
from benchmarks.data import model_data
from benchmarks.models import config_and_data
from benchmarks.weights import init_weights
from benchmarks.worker import Stream, train_timed
out = {}
for model, steps, warmup in json.loads(sys.argv[1]):
    cfg, _, _ = config_and_data(model)
    trainer = importlib.import_module(f"benchmarks.models.{model}").build(init_weights(cfg), cfg)
    _, times, _ = train_timed(trainer, Stream(model_data(cfg), trainer), warmup + steps)
    out[model] = times[warmup:]
print(json.dumps(out))
"""


def run_worker(tree: str, plan, cpu: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-c", WORKER, json.dumps(plan)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker for {tree} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab_steps", description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", help="NAME=PATH of each source tree (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cpu", type=int, help="CPU to pin the workers to (taskset -c)")
    ap.add_argument("--only", default=",".join(STEPS), help="models, comma-separated")
    args = ap.parse_args(argv)
    trees = [t.split("=", 1) for t in args.trees]
    if any(len(t) != 2 for t in trees):
        raise SystemExit("each tree is NAME=PATH")
    models = args.only.split(",")
    unknown = [m for m in models if m not in STEPS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {list(STEPS)}")
    plan = [(m, STEPS[m], args.warmup) for m in models]
    medians = {(n, m): [] for n, _ in trees for m in models}
    p10s = {(n, m): [] for n, _ in trees for m in models}
    for r in range(args.rounds):
        for name, path in trees:
            times = run_worker(os.path.abspath(path), plan, args.cpu)
            for m in models:
                medians[name, m].append(float(np.median(times[m])))
                p10s[name, m].append(float(np.percentile(times[m], 10)))
            print(f"round {r + 1} {name}: " + "  ".join(f"{m} {1e3 * medians[name, m][-1]:.3f} ms" for m in models),
                  flush=True)
    base = trees[0][0]
    print("\nmedian over rounds (ms): per-round median | per-round 10th percentile")
    for m in models:
        cells = []
        for name, _ in trees:
            med, p10 = np.median(medians[name, m]), np.median(p10s[name, m])
            ratio = ""
            if name != base:
                ratio = (f" ({med / np.median(medians[base, m]):.3f} | "
                         f"{p10 / np.median(p10s[base, m]):.3f} of {base})")
            cells.append(f"{name} {1e3 * med:.3f} | {1e3 * p10:.3f}{ratio}")
        print(f"{m:9s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
