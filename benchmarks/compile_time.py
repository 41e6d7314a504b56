"""Compile time of a first call on a cold cache (issue 14, item 4).

    python -m benchmarks.compile_time [--cpu C] [--data DIR]

Each harness model, and the benchmark RNN unrolled 10 / 100 / 200 time steps
(a present-stage Python loop), is built and run for one training step under a
fresh, empty LANTERN_CACHE_DIR, so the step includes staging, the passes, C++
rendering, g++ and loading.  Reports wall seconds and g++'s CPU seconds
(`getrusage(RUSAGE_CHILDREN)`, which a shared machine inflates much less).
"""
import argparse
import dataclasses
import importlib
import os
import resource
import tempfile
import time


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def first_call(build, weights, cfg, batch) -> tuple[float, float]:
    """(wall s, g++ CPU s) of building a trainer and its first step."""
    c0, t0 = _children_cpu(), time.perf_counter()
    trainer = build(weights, cfg)
    prepare = getattr(trainer, "prepare", None) or (lambda b: b)
    trainer.step(prepare(batch))
    return time.perf_counter() - t0, _children_cpu() - c0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: no pinning)")
    ap.add_argument("--data", default=None, help="data directory (default <repo>/../shared/data)")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    # An empty cache for this process, set before lantern_stage reads it.
    os.environ["LANTERN_CACHE_DIR"] = tempfile.mkdtemp(prefix="lantern_compile_time_")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    if args.data:
        os.environ["LANTERN_BENCH_DATA"] = args.data
    from benchmarks import spec
    from benchmarks.data import load_text
    from benchmarks.models import config_and_data, rnn
    from benchmarks.weights import init_weights

    print("model         first call (s)   g++ CPU (s)")
    for model in spec.MODELS:
        cfg, batches, _ = config_and_data(model)
        module = importlib.import_module(f"benchmarks.models.{model}")
        wall, gxx = first_call(module.build, init_weights(cfg), cfg, next(batches()))
        print(f"{model:<13} {wall:>14.2f} {gxx:>13.2f}", flush=True)
    for seq in (10, 100, 200):
        # batch 5: the shared text holds 200 x 5 characters; the batch does not change the code's size
        cfg, _, _ = config_and_data("rnn")
        cfg = dataclasses.replace(cfg, seq=seq, batch=5)
        text = load_text()
        batch = text.batch_at(next(text.offsets(seq, 5)), seq, 5)
        wall, gxx = first_call(rnn.build, init_weights(cfg), cfg, batch)
        print(f"rnn x{seq:<9} {wall:>14.2f} {gxx:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
