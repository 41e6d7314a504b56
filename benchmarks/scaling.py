"""Data-parallel scaling: lantern_stage over MPI against PyTorch DDP and PyTorch threads.

    python -m benchmarks.run --scaling [--rounds R] [--out DIR]     (or python -m benchmarks.scaling)

The work of one update: the CNN on a batch of 100 images, the TreeLSTM on 20
trees (Adagrad, one update per 20 trees).  Every configuration runs in its
own process(es), in alternating rounds, and reports samples (images, trees)
per second, the median over the rounds:

  lantern  1 proc on CPU 0, 1 proc on CPU 1    the ideal: the sum of the two
  lantern  2 procs (mpirun -n 2, a rank per CPU), batch 50 / 10 trees per rank,
           the all-reduce called from C++ (native) and through mpi4py
  torch    1 proc on CPU 0 and on CPU 1 (torch's own ideal), 1 intra-op thread
  torch    DistributedDataParallel, gloo, 2 procs (a rank per CPU), no_sync()
           over the first 9 of each rank's 10 trees
  torch    1 proc, 2 intra-op threads on both CPUs

Parallel efficiency = 2-process throughput / ideal.  The two CPUs of a shared
machine differ from moment to moment and a synchronous step waits for the
slower rank, which is why the ideal is measured per CPU in every round.
Writes DIR/results.json and DIR/results.md (default benchmarks/results/scaling/).
"""
# No `from __future__ import annotations`: the staged inputs are annotated with local sizes.

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "scaling"
BATCH, TREES = 100, 20  # per update, over all ranks
THREADS_1 = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
# Updates timed per configuration (after 2 warm-up updates): ~1-3 s each.
UPDATES = {"lantern": {"cnn": 150, "treelstm": 30}, "torch": {"cnn": 40, "treelstm": 2}}
if os.environ.get("LANTERN_SCALING_QUICK"):  # a check of the pipeline; its numbers mean nothing
    UPDATES = {"lantern": {"cnn": 5, "treelstm": 2}, "torch": {"cnn": 3, "treelstm": 1}}


# ------------------------------------------------------------------ workers
def _pin(cpus) -> None:
    os.sched_setaffinity(0, set(cpus))


def _time_updates(update, n: int, barrier) -> float:
    for i in range(2):
        update(i)
    barrier()
    start = time.perf_counter()
    for i in range(2, 2 + n):
        update(i)
    barrier()
    return time.perf_counter() - start


def lantern_worker(args) -> dict:
    import numpy as np

    import lantern_stage as lt
    from benchmarks.data import MnistLike, load_trees
    from benchmarks.models.cnn import MnistCNN
    from benchmarks.models.treelstm import TreeLSTM
    from benchmarks.spec import make_config
    from benchmarks.weights import init_weights

    rank, world = lt.distributed.rank(), lt.distributed.world_size()
    _pin([rank] if world > 1 else [args.cpu])
    out = {}
    if "cnn" in args.models:
        cfg = make_config("cnn")
        model = MnistCNN()
        model.load_state_dict(init_weights(cfg))
        part = BATCH // world

        def loss_fn(model, x: lt.Tensor[part, 1, 28, 28], y: lt.Tensor[part, "int32"]):
            return model(x, y)

        step = lt.train_step(model, loss_fn, lt.optim.SGD(model.parameters(), lr=cfg.lr), data_parallel=world > 1)
        images = MnistLike(batch=BATCH, n_batches=8)
        batches = [images.batch_at(i) for i in range(8)]
        shards = [(np.ascontiguousarray(b.x[rank * part:(rank + 1) * part]),
                   np.ascontiguousarray(b.y[rank * part:(rank + 1) * part])) for b in batches]
        n = UPDATES["lantern"]["cnn"]
        seconds = _time_updates(lambda i: step(*shards[i % len(shards)]), n, lt.distributed.barrier)
        out["cnn"] = dict(samples_per_s=BATCH * n / seconds, updates=n, seconds=seconds)
    if "treelstm" in args.models:
        cfg = make_config("treelstm")
        model = TreeLSTM(cfg.embedding, cfg.hidden, cfg.classes)
        model.load_state_dict(init_weights(cfg))

        def tree_loss(model, labels: lt.IntArray, words: lt.IntArray, lch: lt.IntArray, rch: lt.IntArray):
            return model(labels, words, lch, rch)

        per_rank = TREES // world
        step = lt.train_step(model, tree_loss, lt.optim.Adagrad(model.parameters(), lr=cfg.lr, eps=cfg.eps),
                             accumulate=per_rank, data_parallel=world > 1)
        trees = [tuple(t) for t in load_trees()]

        def update(i):  # trees of update i: 20 consecutive ones, this rank's balanced share
            for tree in shares[i % len(shares)]:
                step(*tree)

        shares = [lt.distributed.balance(_update_trees(trees, i), _nodes) for i in range(len(trees) // TREES)]

        n = UPDATES["lantern"]["treelstm"]
        seconds = _time_updates(update, n, lt.distributed.barrier)
        out["treelstm"] = dict(samples_per_s=TREES * n / seconds, updates=n, seconds=seconds)
    out["allreduce"] = lt.distributed.allreduce_mode()
    return out if rank == 0 else {}


def torch_worker(args) -> dict:
    import numpy as np
    import torch

    from benchmarks.data import MnistLike, load_trees
    from benchmarks.frameworks.torch_models import from_weights, prepare_tree
    from benchmarks.spec import make_config
    from benchmarks.weights import init_weights

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(args.threads)
    _pin(range(args.threads) if args.threads > 1 else [rank if world > 1 else args.cpu])
    barrier = lambda: None  # noqa: E731
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world)
        barrier = dist.barrier
    out = {}
    for name in args.models:
        cfg = make_config(name)
        net = from_weights(name, init_weights(cfg), cfg)
        ddp = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
        if name == "cnn":
            opt = torch.optim.SGD(net.parameters(), lr=cfg.lr)
            part = BATCH // world
            images = MnistLike(batch=BATCH, n_batches=8)
            shards = []
            for i in range(8):
                b = images.batch_at(i)
                shards.append((torch.from_numpy(np.ascontiguousarray(b.x[rank * part:(rank + 1) * part])),
                               torch.from_numpy(b.y[rank * part:(rank + 1) * part].astype(np.int64))))

            def update(i):
                opt.zero_grad(set_to_none=True)
                ddp(*shards[i % len(shards)]).backward()
                opt.step()

            n, count = UPDATES["torch"]["cnn"], BATCH
        else:
            opt = torch.optim.Adagrad(net.parameters(), lr=cfg.lr, eps=cfg.eps)
            trees = [prepare_tree(t) for t in load_trees()]

            def update(i):
                opt.zero_grad(set_to_none=True)
                mine = shares[i % len(shares)]
                for k, j in enumerate(mine):
                    last = k == len(mine) - 1
                    # DDP's gradient accumulation: all-reduce only on the last backward
                    ctx = ddp.no_sync() if world > 1 and not last else _nothing()
                    with ctx:
                        (ddp(trees[j]) / TREES * world).backward()
                opt.step()

            raw = load_trees()  # the same balanced shares as lantern_stage's
            shares = [_balanced_indices(raw, i, rank, world) for i in range(len(raw) // TREES)]

            n, count = UPDATES["torch"]["treelstm"], TREES
        seconds = _time_updates(update, n, barrier)
        out[name] = dict(samples_per_s=count * n / seconds, updates=n, seconds=seconds)
    if world > 1:
        torch.distributed.destroy_process_group()
    return out if rank == 0 else {}


def _update_trees(trees, i):
    """The 20 consecutive trees of update i."""
    return trees[i * TREES:(i + 1) * TREES]


def _nodes(tree) -> int:
    return len(tree[0])  # labels: one per node


def _balanced_indices(trees, i, rank, world):
    """lt.distributed.balance's share of update i for the PyTorch workers
    (outside MPI): the same split, by index."""
    import lantern_stage as lt

    return lt.distributed.balance(range(i * TREES, (i + 1) * TREES), lambda j: len(trees[j].labels),
                                  rank=rank, size=world)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------ the harness
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mpirun() -> str:
    here = Path(sys.executable).parent / "mpirun"
    return str(here) if here.exists() else "mpirun"


def run_config(config: str, models: list[str], log) -> dict:
    """Run one configuration; returns {model: result} from rank 0."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, **THREADS_1, "PYTHONPATH": str(HERE.parent)}
        worker = [sys.executable, "-m", "benchmarks.scaling", "--models", ",".join(models), "--result", str(result)]
        kind, _, variant = config.partition(":")
        if kind == "lantern" and variant.startswith("cpu"):
            procs = [subprocess.Popen(worker + ["--worker", "lantern", "--cpu", variant[3:]], env=env)]
        elif kind == "lantern":  # "2procs" or "2procs-mpi4py"
            flags = ["--oversubscribe", "--bind-to", "none"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
            mode = "mpi4py" if variant.endswith("mpi4py") else "native"
            procs = [subprocess.Popen([_mpirun(), "-n", "2", *flags, "-x", f"LANTERN_ALLREDUCE={mode}",
                                       *worker, "--worker", "lantern"], env=env)]
        elif variant.startswith("cpu"):
            procs = [subprocess.Popen(worker + ["--worker", "torch", "--cpu", variant[3:]], env=env)]
        elif variant == "2threads":
            procs = [subprocess.Popen(worker + ["--worker", "torch", "--threads", "2"],
                                      env={**env, "OMP_NUM_THREADS": "2"})]
        else:  # ddp
            ddp = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
            procs = [subprocess.Popen(worker + ["--worker", "torch"], env={**env, **ddp, "RANK": str(r)})
                     for r in range(2)]
        codes = [p.wait(timeout=900) for p in procs]
        if any(codes) or not result.exists():
            log(f"  {config}: failed (exit {codes})")
            return {}
        return json.loads(result.read_text())


CONFIGS = ["lantern:cpu0", "lantern:cpu1", "lantern:2procs", "lantern:2procs-mpi4py",
           "torch:cpu0", "torch:cpu1", "torch:ddp", "torch:2threads"]


def harness(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run --scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3); each runs every configuration once")
    ap.add_argument("--only", default="cnn,treelstm", help="models (default cnn,treelstm)")
    ap.add_argument("--frameworks", default="lantern,torch", help="lantern,torch (default both)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    models = args.only.split(",")
    configs = [c for c in CONFIGS if c.split(":")[0] in args.frameworks.split(",")]
    runs: dict = {c: [] for c in configs}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for c in configs:
            res = run_config(c, models, print)
            runs[c].append(res)
            print(f"  {c:24s} " + "  ".join(f"{m} {res[m]['samples_per_s']:8.1f}/s" for m in models if m in res),
                  flush=True)
    table = summarise(runs, models)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                cpu=_cpu_name(), cores=os.cpu_count(), python=platform.python_version(),
                load_average=os.getloadavg(), rounds=args.rounds, updates=UPDATES)
    (out / "results.json").write_text(json.dumps(dict(meta=meta, runs=runs, summary=table), indent=1))
    md = render(table, models, meta)
    (out / "results.md").write_text(md)
    print(md)
    return 0


def summarise(runs: dict, models: list[str]) -> dict:
    """Per model: each configuration's median samples/s, and the ratios."""
    def med(c, m):
        vals = [r[m]["samples_per_s"] for r in runs.get(c, []) if m in r]
        return statistics.median(vals) if vals else None

    def per_round_sum(a, b, m):
        vals = [x[m]["samples_per_s"] + y[m]["samples_per_s"] for x, y in zip(runs.get(a, []), runs.get(b, []))
                if m in x and m in y]
        return statistics.median(vals) if vals else None

    table = {}
    for m in models:
        row = {c: med(c, m) for c in runs}
        row["lantern:ideal"] = per_round_sum("lantern:cpu0", "lantern:cpu1", m)
        row["torch:ideal"] = per_round_sum("torch:cpu0", "torch:cpu1", m)
        table[m] = row
    return table


LABELS = {
    "lantern:cpu0": "lantern_stage, 1 process, CPU 0", "lantern:cpu1": "lantern_stage, 1 process, CPU 1",
    "lantern:ideal": "lantern_stage ideal (CPU 0 + CPU 1)",
    "lantern:2procs": "**lantern_stage, 2 processes (MPI, all-reduce from C++)**",
    "lantern:2procs-mpi4py": "lantern_stage, 2 processes (MPI, all-reduce through mpi4py)",
    "torch:cpu0": "PyTorch, 1 process, CPU 0", "torch:cpu1": "PyTorch, 1 process, CPU 1",
    "torch:ideal": "PyTorch ideal (CPU 0 + CPU 1)",
    "torch:ddp": "PyTorch DistributedDataParallel (gloo), 2 processes",
    "torch:2threads": "PyTorch, 1 process, 2 intra-op threads",
}
ORDER = ["lantern:cpu0", "lantern:cpu1", "lantern:ideal", "lantern:2procs", "lantern:2procs-mpi4py",
         "torch:cpu0", "torch:cpu1", "torch:ideal", "torch:ddp", "torch:2threads"]
IDEAL_OF = {"lantern": "lantern:ideal", "torch": "torch:ideal"}


def render(table: dict, models: list[str], meta: dict) -> str:
    lines = [f"# Data-parallel scaling ({meta['date']})", "",
             f"CPU: {meta['cpu']}, {meta['cores']} cores (load average at the end "
             f"{', '.join(f'{x:.1f}' for x in meta['load_average'])}); {meta['rounds']} rounds, medians. "
             "Work per update: CNN batch 100 (50 per rank), TreeLSTM 20 trees (10 per rank). "
             "Efficiency: throughput / the ideal of the same framework (its two CPUs' single-process "
             "throughputs, summed per round).", "",
             "| configuration | " + " | ".join(f"{m} samples/s | {m} efficiency" for m in models) + " |",
             "|---|" + "---|---|" * len(models)]
    for c in ORDER:
        if not any(table[m].get(c) for m in models):
            continue
        cells = []
        for m in models:
            v = table[m].get(c)
            ideal = table[m].get(IDEAL_OF[c.split(":")[0]])
            eff = f"{v / ideal:.0%}" if v and ideal and c.split(":")[1] not in ("ideal", "cpu0", "cpu1") else ""
            cells += [f"{v:.1f}" if v else "-", eff]
        lines.append(f"| {LABELS[c]} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in models:
        row = table[m]
        lt2, best_torch = row.get("lantern:2procs"), max(filter(None, [row.get("torch:ddp"), row.get("torch:2threads")]),
                                                         default=None)
        if lt2 and best_torch:
            lines.append(f"- {m}: lantern_stage on 2 processes is {lt2 / best_torch:.1f}x the faster 2-CPU PyTorch "
                         "variant.")
        nat, py = row.get("lantern:2procs"), row.get("lantern:2procs-mpi4py")
        if nat and py:
            lines.append(f"- {m}: all-reduce from C++ vs through mpi4py: {nat:.1f} vs {py:.1f} samples/s "
                         f"({nat / py - 1:+.1%}).")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" not in argv:
        return harness(argv)
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["lantern", "torch"])
    ap.add_argument("--models", default="cnn,treelstm")
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--result")
    args = ap.parse_args(argv)
    args.models = args.models.split(",")
    out = lantern_worker(args) if args.worker == "lantern" else torch_worker(args)
    if out:
        Path(args.result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
