"""One framework, one process: build, warm up and time each requested model.

Started by `benchmarks.run` (never needed by hand) as
``python -m benchmarks.worker SPEC.json OUT.json``. The parent sets the thread
environment variables before this process starts; here the process pins itself
to one CPU, lets the framework set its own pools to one thread, and reports what
it set. Progress lines ``@@ <model> <status>`` go to stdout for the parent's bar.

Per model: build (lantern: staging + C++ compile), prepare the batches (numpy ->
framework form, untimed), `precompile` (every shape variant the run needs) and
`warmup` training steps are the one-off costs, reported apart; then `iters`
training steps are timed one by one with perf_counter around `step()` alone.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback


def _set_affinity(cpu):
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass
    return sorted(os.sched_getaffinity(0))


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0) so that each model's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


class Stream:
    """A model's batches (`benchmarks.data.model_data`) prepared for its trainer, the
    preparation summed in `prepare_s`; prepared batches of a cacheable stream are kept."""

    def __init__(self, model_data, trainer):
        self.data = model_data
        self.cache = model_data.cacheable
        self._prep = getattr(trainer, "prepare", None) or (lambda b: b)
        self.prepare_s = 0.0
        self._cached = {}

    def keys(self, n):
        return list(itertools.islice(self.data.keys(), n))

    def get(self, key):
        if key in self._cached:
            return self._cached[key]
        t0 = time.perf_counter()
        b = self._prep(self.data.batch_at(key))
        self.prepare_s += time.perf_counter() - t0
        if self.cache:
            self._cached[key] = b
        return b


def train_timed(trainer, stream, steps):
    """`trainer.precompile` for the batches of the first `steps` keys of `stream`, then
    those steps in order, each timed alone (the batch prepared before the clock starts):
    (precompile seconds, seconds of each step, losses)."""
    keys = stream.keys(steps)
    precompile_s = 0.0
    if hasattr(trainer, "precompile"):
        distinct = list(dict.fromkeys(keys)) if stream.cache else keys[:1]
        batches = [stream.get(k) for k in distinct]
        t0 = time.perf_counter()
        trainer.precompile(batches)
        precompile_s = time.perf_counter() - t0
        del batches
    losses, times = [], []
    for k in keys:
        b = stream.get(k)
        t0 = time.perf_counter()
        loss = trainer.step(b)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    return precompile_s, times, losses


def run_model(fw, model, spec, text_vocab, build=None):
    """Build (with `fw.build`, or a variant's `build`), warm up and time one model."""
    from benchmarks import spec as S
    from benchmarks.data import embedding_table, model_data
    from benchmarks.frameworks import Unsupported
    from benchmarks.weights import init_weights

    cfg = S.make_config(model, vocab=text_vocab, dropout=spec["dropout"],
                        embedding=embedding_table() if model in S.TREE_MODELS else None)
    weights = init_weights(cfg)
    out = {"model": model, "status": "ok"}
    _reset_peak_rss()
    t0 = time.perf_counter()
    try:
        trainer = build(model, weights, cfg) if build else fw.build(model, weights, cfg)
    except Unsupported as e:
        return {**out, "status": "unsupported", "reason": str(e)}
    out["build_s"] = time.perf_counter() - t0
    warm, iters = spec["warmup"], spec["iters"][model]
    stream = Stream(model_data(cfg), trainer)
    out["precompile_s"], times, losses = train_timed(trainer, stream, warm + iters)
    timed = times[warm:]
    out.update(
        warmup_steps=warm, iters=iters, warmup_s=sum(times[:warm]),
        compile_s=out["build_s"] + out["precompile_s"] + sum(times[:warm]),
        prepare_s=stream.prepare_s, train_s=sum(timed),
        ms_per_step=1000.0 * sum(timed) / max(1, len(timed)),
        ms_per_step_median=1000.0 * sorted(timed)[len(timed) // 2] if timed else None,
        per_unit_s=sum(timed) / max(1, len(timed)) * S.UNITS[model][0],
        losses=losses, first_loss=losses[0] if losses else None,
        final_loss=losses[-1] if losses else None,
        peak_rss_mb=_peak_rss_mb(), os_threads=_os_threads(),
    )
    return out


def main(spec_path, out_path):
    with open(spec_path) as f:
        spec = json.load(f)
    if spec["data"]:   # the run's data directory, where every `benchmarks.data` loader looks
        os.environ["LANTERN_BENCH_DATA"] = spec["data"]
    affinity = _set_affinity(spec.get("cpu"))
    result = {"framework": spec["framework"], "round": spec["round"], "affinity": affinity,
              "env": {k: os.environ.get(k) for k in spec.get("thread_env", [])}, "models": {}}

    def save():
        with open(out_path, "w") as f:
            json.dump(result, f)

    from benchmarks.frameworks import Framework
    fw = Framework(spec["framework"])
    ok, info = fw.available()
    result.update(available=ok, version=info)
    if not ok:
        save()
        print("@@ unavailable", flush=True)
        return 0
    try:
        result["threads"] = fw.configure_threads()
        result["versions"] = fw.versions()
    except Exception as e:
        result.update(available=False, version=f"thread setup failed: {type(e).__name__}: {e}")
        save()
        print("@@ unavailable", flush=True)
        return 0
    from benchmarks.data import load_text
    vocab = len(load_text().vocab)
    for model in spec["models"]:
        variants = fw.variants(model)
        if variants:
            res = _fastest_variant(fw, model, spec, vocab, variants)
        else:
            res = _run_or_error(fw, model, spec, vocab)
        result["models"][model] = res
        save()
        print(f"@@ {model} {res['status']}", flush=True)
    for probe in spec.get("probes", []):
        result.setdefault("probes", {})[probe] = _probe(probe)
        save()
    save()
    return 0


def _run_or_error(fw, model, spec, vocab, build=None):
    try:
        return run_model(fw, model, spec, vocab, build)
    except Exception as e:
        return {"model": model, "status": "error", "reason": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=6)}


def _fastest_variant(fw, model, spec, vocab, variants):
    """Time every formulation; the fastest one that ran is the model's result,
    with `formulation` naming it and `variants` the ms/step of each."""
    runs = {label: _run_or_error(fw, model, spec, vocab, build) for label, build in variants.items()}
    ok = {label: r for label, r in runs.items() if r["status"] == "ok"}
    label = min(ok, key=lambda k: ok[k]["per_unit_s"]) if ok else next(iter(runs))
    summary = {k: ({"status": "ok", "ms_per_step": r["ms_per_step"], "per_unit_s": r["per_unit_s"]}
                   if r["status"] == "ok" else {"status": r["status"], "reason": r.get("reason", "")})
               for k, r in runs.items()}
    return {**runs[label], "formulation": label, "variants": summary}


def _probe(name):
    """Recompile probes: compile time of whole-tree compilation per distinct tree."""
    from benchmarks import spec as S
    from benchmarks.data import load_trees
    from benchmarks.weights import init_weights
    trees = sorted(load_trees()[:50], key=lambda t: len(t.labels))[:10]   # small trees: a lower bound
    cfg = S.make_config("treelstm")
    try:
        if name == "torch_compile":
            from benchmarks.frameworks.torch_compile import probe_whole_tree_recompile as probe
        else:
            from benchmarks.frameworks.jax_jit import probe_recursive_recompile as probe
        return probe(trees, init_weights(cfg), cfg, n=2)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
