"""The benchmark harness: the paper's Figure 6, lantern_stage side by side with its peers.

    python -m benchmarks.run [--only rnn,lstm,cnn,treelstm,treelstm_mb25,transformer,pinn]
                             [--frameworks torch,tf,...]
                             [--iters N] [--repeat R] [--quick] [--smoke]
                             [--data PATH] [--out DIR] [--probe-recompile]
    python -m benchmarks.run --scaling [--rounds R]     data-parallel scaling (benchmarks/scaling.py)

Every framework runs in its own subprocess (`benchmarks.worker`), single-threaded:
the harness sets OMP/OPENBLAS/MKL/TF/XLA thread variables to 1 before the process
starts, the worker pins itself to one CPU (sched_setaffinity) and sets the
framework's own pools (torch.set_num_threads(1), TF intra/inter-op 1). Rounds
alternate the frameworks (A B C A B C ...); each round times every model. One-off
costs (build / lantern compile, tf.function trace, torch.compile, XLA compile,
warm-up steps) are excluded from the training time and reported apart. Times are
given in the paper's units (seconds per 5000 iterations for RNN/LSTM, per epoch
for CNN and TreeLSTM; per 1000 steps for the PINN), extrapolated from the timed iterations, as median, min and
max over the rounds, with each framework's time divided by lantern_stage's in
the same round (or by the fastest peer's when lantern_stage is unavailable).

Output in --out (default benchmarks/results/): results.json, results.md,
figure6.png and loss_<model>.png. `--smoke` runs a few iterations of everything
(two workers at a time on different CPUs, torch.compile with its aot_eager
backend) to check the pipeline in a few minutes (the PINN adds XLA compiles of nested derivatives); its times mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.frameworks import LABELS, REGISTRY
from benchmarks.spec import MODELS, TREE_MODELS, TREES_PER_UPDATE, UNITS

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_ORDER = ["lantern", "torch", "torch_compile", "torch_func", "tf", "tf_xla", "jax", "dynet", "dynet_autobatch"]

THREAD_ENV = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "TORCHINDUCTOR_COMPILE_THREADS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}

# Correctness: relative difference to the reference framework's loss.
FIRST_LOSS_TOL = 1e-4     # loss of the first step: same weights, same data
FINAL_LOSS_TOL = 2e-2     # mean loss of the last FINAL_WINDOW timed steps
FINAL_WINDOW = 100

# Loss curves spanning decades are drawn on a log axis.
LOG_LOSS_MODELS = {"pinn"}

PRESETS = {
    # timed iterations per model, rounds, warm-up training steps
    # (treelstm_mb25: one step is one update over 25 trees; 44 steps are the epoch's 1100)
    "full": ({m: int(UNITS[m][0]) for m in MODELS}, 3, 3),
    "quick": ({"rnn": 300, "lstm": 300, "cnn": 30, "treelstm": 100, "treelstm_mb25": 8, "transformer": 100,
               "pinn": 300}, 2, 3),
    "smoke": ({"rnn": 3, "lstm": 3, "cnn": 2, "treelstm": 1, "treelstm_mb25": 1, "transformer": 2, "pinn": 3}, 1, 1),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(MODELS), help="models, comma-separated (default: all)")
    ap.add_argument("--frameworks", default=",".join(DEFAULT_ORDER),
                    help=f"frameworks in run order (default: all): {', '.join(REGISTRY)}")
    ap.add_argument("--iters", type=int, help="timed iterations per model (default: the paper's unit)")
    ap.add_argument("--repeat", type=int, help="rounds R (default 3; --quick 2; --smoke 1)")
    ap.add_argument("--warmup", type=int, help="untimed warm-up training steps per model (default 3)")
    ap.add_argument("--quick", action="store_true", help="a few hundred iterations, 2 rounds")
    ap.add_argument("--smoke", action="store_true", help="a few iterations of everything, < 3 min")
    ap.add_argument("--data", help="data directory holding text/graham.txt and sst/array_tree.txt "
                                   "(default <repo>/../shared/data; generated data when absent)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory")
    ap.add_argument("--cpu", type=int, help="CPU to pin every worker to (default: the last one allowed)")
    ap.add_argument("--jobs", type=int, help="workers at once (default 1; --smoke 2, each on its own CPU)")
    ap.add_argument("--dropout", action="store_true",
                    help="CNN with dropout (off by default so that losses are comparable)")
    ap.add_argument("--probe-recompile", action="store_true",
                    help="also measure whole-tree torch.compile / jax.jit recompilation on 2 trees")
    ap.add_argument("--timeout", type=float, help="seconds per worker (default: 3600; --smoke 300)")
    return ap.parse_args(argv)


def cpu_model() -> str:
    from benchmarks.machine import cpu
    return cpu()["model"]


def measure_machine(args, tmp: Path) -> dict:
    """`benchmarks.machine` in a worker-like process (thread variables, pinned to
    the workers' CPU): the CPU, OpenBLAS's kernel and one core's sgemm peak."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cmd = [sys.executable, "-m", "benchmarks.machine"]
    if args.cpu is not None or cpus:
        cmd += ["--cpu", str(args.cpu if args.cpu is not None else cpus[-1])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(False, tmp),
                              cwd=str(HERE.parent), timeout=120)
        return json.loads(proc.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def floors(models, iters, warmup, data_dir, peak_gflops) -> dict:
    """model -> {"step_mflop", "floor_ms"}: `benchmarks.flops` at the measured peak."""
    from benchmarks import data
    from benchmarks.flops import step_flops
    from benchmarks.spec import make_config
    vocab = len(data.load_text(Path(data_dir) / "text" / "graham.txt" if data_dir else None).vocab)
    out = {}
    for m in models:
        try:
            cfg = make_config(m, vocab=vocab, embedding=data.embedding_table() if m in TREE_MODELS else None)
        except ValueError:    # a model make_config does not know yet
            continue
        batches = ()
        if m in TREE_MODELS:   # the trees (minibatches) the run timed, in the worker's order
            trees = data.model_data(cfg, Path(data_dir) / "sst" / "array_tree.txt" if data_dir else None)
            batches = [trees.batch_at(k) for k in itertools.islice(trees.keys(), warmup, warmup + iters[m])]
        flops = step_flops(m, cfg, batches)
        if flops is None:
            continue
        out[m] = {"step_mflop": flops / 1e6,
                  "floor_ms": flops / (peak_gflops * 1e9) * 1e3 if peak_gflops else None}
    return out


def _bar(total, desc):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="model", dynamic_ncols=True, file=sys.stderr)
    except ImportError:   # pragma: no cover
        class Plain:
            n = 0
            def update(self, k=1): self.n += k; print(f"{desc}: {self.n}/{total}", file=sys.stderr)
            def set_postfix_str(self, s): pass
            def close(self): pass
        return Plain()


def _worker_env(smoke: bool, tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(THREAD_ENV)
    # a fresh inductor cache per worker: torch.compile's cold compile time is what a user sees
    env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_", dir=tmp)
    if smoke:
        env["LANTERN_BENCH_TORCH_BACKEND"] = "aot_eager"
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_workers(jobs_list, args, tmp: Path, bar, log_dir: Path):
    """Run worker specs, `args.jobs` at a time, updating the bar from their progress lines."""
    results, running, pending = [], [], list(jobs_list)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    free_cpus = list(reversed(cpus)) if args.cpu is None else [args.cpu]
    while pending or running:
        while pending and len(running) < args.jobs and free_cpus:
            spec = pending.pop(0)
            spec["cpu"] = free_cpus.pop(0)
            spec_path = tmp / f"spec_{spec['round']}_{spec['framework']}.json"
            out_path = tmp / f"out_{spec['round']}_{spec['framework']}.json"
            spec_path.write_text(json.dumps(spec))
            log = open(log_dir / f"{spec['framework']}_r{spec['round']}.log", "w")
            proc = subprocess.Popen([sys.executable, "-u", "-m", "benchmarks.worker", str(spec_path), str(out_path)],
                                    stdout=subprocess.PIPE, stderr=log, text=True,
                                    env=_worker_env(args.smoke, tmp), cwd=str(HERE.parent))
            lines: "queue.Queue[str]" = queue.Queue()
            threading.Thread(target=lambda p=proc, q=lines: [q.put(ln) for ln in p.stdout], daemon=True).start()
            running.append(dict(proc=proc, spec=spec, out=out_path, log=log, start=time.time(), done=0, lines=lines))
            bar.set_postfix_str(f"{spec['framework']} round {spec['round'] + 1}")
        time.sleep(0.2)
        for r in list(running):
            while not r["lines"].empty():
                line = r["lines"].get()
                if line.startswith("@@ unavailable"):
                    bar.update(len(r["spec"]["models"]) - r["done"])
                    r["done"] = len(r["spec"]["models"])
                elif line.startswith("@@ "):
                    bar.update(1)
                    r["done"] += 1
            timed_out = time.time() - r["start"] > args.timeout
            if r["proc"].poll() is None and not timed_out:
                continue
            if timed_out and r["proc"].poll() is None:
                r["proc"].kill()
                r["proc"].wait()
            r["log"].close()
            running.remove(r)
            free_cpus.insert(0, r["spec"]["cpu"])   # back in front: one job at a time keeps one CPU
            bar.update(len(r["spec"]["models"]) - r["done"])
            res = json.loads(r["out"].read_text()) if r["out"].exists() else {
                "framework": r["spec"]["framework"], "round": r["spec"]["round"], "available": True, "models": {}}
            for m in r["spec"]["models"]:
                if m not in res["models"]:
                    why = "timed out" if timed_out else f"worker exited with {r['proc'].returncode}"
                    res["models"][m] = {"model": m, "status": "error",
                                        "reason": f"{why}; see {log_dir.name}/{r['spec']['framework']}_r{r['spec']['round']}.log"}
            res["wall_s"] = time.time() - r["start"]
            results.append(res)
    return results


# ----------------------------------------------------------------------------- summary

def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def summarise(runs, models, frameworks, floor=None):
    """Per model and framework: medians/min/max over rounds, ratios to the reference
    measured in the same round, compile times, memory, the correctness check and
    the fraction of the FLOP floor (`floor`: model -> floors() entry) reached."""
    floor = floor or {}
    by = {}   # (model, fw) -> list of per-round results
    for run in runs:
        for m, res in run.get("models", {}).items():
            by.setdefault((m, run["framework"]), []).append(dict(res, round=run["round"]))
    summary = {}
    for m in models:
        ok = {fw: [r for r in by.get((m, fw), []) if r["status"] == "ok"] for fw in frameworks}
        ok = {fw: rs for fw, rs in ok.items() if rs}
        med = {fw: statistics.median(r["per_unit_s"] for r in rs) for fw, rs in ok.items()}
        if "lantern" in ok:
            ref, ref_note = "lantern", "lantern_stage"
        elif med:
            ref = min(med, key=med.get)
            ref_note = f"fastest peer ({LABELS[ref]}); lantern_stage unavailable"
        else:
            ref, ref_note = None, "nothing ran"
        loss_ref = "lantern" if "lantern" in ok else ("torch" if "torch" in ok else ref)
        rows = {}
        for fw in frameworks:
            rs = by.get((m, fw), [])
            if not rs:
                continue
            good = ok.get(fw)
            if not good:
                rows[fw] = {"status": rs[0]["status"], "reason": rs[0].get("reason", "")}
                continue
            times = [r["per_unit_s"] for r in good]
            ref_by_round = {r["round"]: r["per_unit_s"] for r in ok.get(ref, [])}
            ratios = [r["per_unit_s"] / ref_by_round[r["round"]] for r in good if r["round"] in ref_by_round]
            row = {
                "status": "ok", "rounds": len(good), "iters": good[0]["iters"],
                "ms_per_step": statistics.median(r["ms_per_step"] for r in good),
                "per_unit_median": statistics.median(times), "per_unit_min": min(times), "per_unit_max": max(times),
                "ratio_median": statistics.median(ratios) if ratios else None,
                "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                "compile_s_median": statistics.median(r["compile_s"] for r in good),
                "build_s_median": statistics.median(r["build_s"] for r in good),
                "precompile_s_median": statistics.median(r["precompile_s"] for r in good),
                "warmup_s_median": statistics.median(r["warmup_s"] for r in good),
                "peak_rss_mb_max": max(r["peak_rss_mb"] for r in good),
                "first_loss": good[0]["first_loss"], "final_loss": good[0]["final_loss"],
                "final_loss_mean": _final_mean(good[0]),
            }
            if good[0].get("formulation"):
                row["formulation"] = good[0]["formulation"]
                row["variants"] = {k: statistics.median(r["variants"][k]["ms_per_step"] for r in good)
                                   for k, v in good[0]["variants"].items()
                                   if all(r["variants"].get(k, {}).get("status") == "ok" for r in good)}
            if m in TREES_PER_UPDATE:   # a step is one update over several trees
                row["ms_per_tree"] = row["ms_per_step"] / TREES_PER_UPDATE[m]
            floor_ms = floor.get(m, {}).get("floor_ms")
            if floor_ms:
                row["floor_fraction"] = floor_ms / row["ms_per_step"]
            if loss_ref and fw != loss_ref and loss_ref in ok:
                ref0 = ok[loss_ref][0]
                row["first_loss_rel_diff"] = _rel(row["first_loss"], ref0["first_loss"])
                row["final_loss_rel_diff"] = _rel(row["final_loss_mean"], _final_mean(ref0))
                row["loss_flag"] = (row["first_loss_rel_diff"] > FIRST_LOSS_TOL
                                    or row["final_loss_rel_diff"] > FINAL_LOSS_TOL)
                if len(ref0["losses"]) != len(good[0]["losses"]):
                    row["loss_flag"] = True
            rows[fw] = row
        summary[m] = {"reference": ref, "reference_note": ref_note, "loss_reference": loss_ref,
                      "unit": UNITS[m][1], "frameworks": rows, **floor.get(m, {})}
    return summary


def _final_mean(res):
    timed = res["losses"][res["warmup_steps"]:] or res["losses"]
    window = timed[-FINAL_WINDOW:]
    return sum(window) / len(window)


# ----------------------------------------------------------------------------- reports

def _fmt(x, digits=3):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits}g}".rstrip(".")


def _rounded(x):
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def write_markdown(path, meta, summary, unavailable, probes):
    mach = meta.get("machine", {})
    L = [f"# lantern_stage benchmarks (Figure 6)", "",
         f"{meta['date']} · {meta['cpu']} · {meta['mode']} run: {meta['repeat']} round(s), "
         f"warm-up {meta['warmup']} step(s) · single thread: {meta['threads_summary']}", "",
         f"Machine: {meta['cpu']}; vector extensions: {', '.join(mach.get('cpu', {}).get('vector', [])) or '–'}; "
         f"OpenBLAS kernel: {mach.get('openblas', {}).get('core', '–')} "
         f"({mach.get('openblas', {}).get('config', mach.get('openblas', {}).get('error', '–'))}); "
         f"one core's sgemm peak, measured in this run: {_fmt(mach.get('sgemm_peak_gflops'))} GFLOP/s "
         f"(best of {mach.get('sgemm_peak_runs', '–')}: {', '.join(_fmt(g) for g in mach.get('sgemm_peak_each', []))}).", "",
         "*floor* = the step's matrix-product FLOPs (`benchmarks/flops.py`) / that peak: a bound no framework "
         "reaches; *of floor* = floor / ms per step.", "",
         "Times are seconds per paper unit (extrapolated from the timed iterations): median over rounds "
         "[min – max]. *ratio* = this framework's time / the reference's, measured in the same round "
         "(median [min – max]); > 1 means slower than the reference. *one-off* = build (lantern: staging + "
         "C++ compile) + precompile (tf.function trace / XLA / jit compile of every shape) + warm-up steps "
         "(torch.compile compiles here), excluded from the time. "
         f"*loss check*: first-step loss within {FIRST_LOSS_TOL:g} and mean of the last "
         f"{FINAL_WINDOW} timed losses within {FINAL_LOSS_TOL:g} (relative) of the loss reference's; "
         "⚠ flags a miss. The vanilla RNN's training is chaotic under the paper's Adagrad (lr 0.1, eps 1e-10: "
         "the first update is lr·sign(g) for every weight), so round-off differences grow ~10x per step there "
         "and its final losses agree only statistically. So do the minibatched TreeLSTM's (lr 0.05, eps 1e-10, "
         "an update per 25 trees): two chunkings of lantern_stage's levels give losses 2e-5 apart at the 3rd update, 2e-3 at "
         "the 6th and 9% at the 7th; its first updates are checked against float64 and PyTorch by "
         "tests/test_benchmarks_smoke.py.", ""]
    if meta.get("dropout") is False:
        L += ["CNN dropout is off so that losses can be compared (`--dropout` turns it on).", ""]
    for m, s in summary.items():
        floor_note = (f" Step: {s['step_mflop']:.1f} MFLOP of matrix products; floor {_fmt(s.get('floor_ms'))} ms."
                      if "step_mflop" in s else "")
        per = TREES_PER_UPDATE.get(m)
        if per:
            floor_note += (f" A step is one update over {per} trees (the mean of their gradients); "
                           f"*ms/step* gives the time per tree in parentheses.")
        L += [f"## {m} — {s['unit']}", "",
              f"Time reference: {s['reference_note']}. Loss reference: {LABELS.get(s['loss_reference'], '–')}."
              + floor_note, "",
              "| framework | time | ratio | ms/step | of floor | one-off (s) | peak RSS (MB) | first loss | final loss | loss check |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        notes = []
        for fw, r in s["frameworks"].items():
            if r["status"] != "ok":
                L.append(f"| {LABELS[fw]} | {r['status']}: {r['reason'][:120]} | | | | | | | | |")
                continue
            if r.get("variants"):
                notes.append(f"- {LABELS[fw]}, each formulation (ms/step, median; the fastest is the row): "
                             + ", ".join(f"{k} {v:.2f}" for k, v in r["variants"].items()))
            ratio = (f"{r['ratio_median']:.2f} [{r['ratio_min']:.2f} – {r['ratio_max']:.2f}]"
                     if r["ratio_median"] is not None else "–")
            if "loss_flag" in r:
                check = (("⚠ " if r["loss_flag"] else "ok ")
                         + f"({r['first_loss_rel_diff']:.1e} / {r['final_loss_rel_diff']:.1e})")
            else:
                check = "reference"
            frac = f"{100 * r['floor_fraction']:.0f}%" if r.get("floor_fraction") else "–"
            ms = f"{r['ms_per_step']:.2f}" + (f" ({r['ms_per_tree']:.3f})" if "ms_per_tree" in r else "")
            L.append(f"| {_label(fw, r)} | {r['per_unit_median']:.2f} [{r['per_unit_min']:.2f} – {r['per_unit_max']:.2f}] "
                     f"| {ratio} | {ms} | {frac} | {r['compile_s_median']:.1f} | {r['peak_rss_mb_max']:.0f} "
                     f"| {r['first_loss']:.5g} | {r['final_loss_mean']:.5g} | {check} |")
        L += [""] + (notes + [""] if notes else [])
    if unavailable:
        L += ["## Not run", ""] + [f"- {LABELS[fw]}: {why}" for fw, why in unavailable.items()] + [""]
    L += ["## Whole-tree compilation of the recursive TreeLSTM", "",
          "`torch.compile` and `jax.jit` of the recursive TreeLSTM specialise the compiled program to the "
          "tree's structure, so every new tree shape compiles again (the 1101 SST dev trees have 1101 "
          "distinct shapes). That variant is therefore reported, not timed for an epoch; the timed twins "
          "compile only the cells (torch.compile) or are level-batched (TF, JAX)."]
    if probes:
        for fw, items in probes.items():
            if isinstance(items, dict):
                L.append(f"- {LABELS[fw]}: probe failed: {items.get('error')}")
            else:
                L.append(f"- {LABELS[fw]}: " + "; ".join(f"{p['nodes']}-node tree: {p['compile_s']:.1f} s"
                                                          for p in items))
    else:
        L.append("- (not measured in this run; `--probe-recompile` measures it on two small trees)")
    L += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in sorted(meta["versions"].items())]
    L += [f"- data: " + "; ".join(f"{k}: {v}" for k, v in meta["data_sources"].items()), ""]
    Path(path).write_text("\n".join(L))


def _label(fw, row) -> str:
    """The framework's label, with the formulation that was fastest when it timed several."""
    return f"{LABELS[fw]} ({row['formulation']})" if row.get("formulation") else LABELS[fw]


def write_charts(out: Path, summary, runs, models):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"lantern": "#d62728", "torch": "#1f77b4", "torch_compile": "#aec7e8", "torch_func": "#17becf",
              "tf": "#ff7f0e",
              "tf_xla": "#ffbb78", "jax": "#2ca02c", "dynet": "#9467bd", "dynet_autobatch": "#c5b0d5"}
    names = {"rnn": "Vanilla RNN", "lstm": "LSTM", "cnn": "CNN", "treelstm": "TreeLSTM",
             "treelstm_mb25": "TreeLSTM, 25 trees / update",
             "transformer": "Char transformer", "pinn": "PINN (Poisson)"}
    names = {m: names.get(m, m) for m in models}
    # at least the title's width (one model alone would cut it off)
    fig, axes = plt.subplots(1, len(models), figsize=(max(4.2 * len(models), 7.5), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        rows = [(fw, r) for fw, r in summary[m]["frameworks"].items() if r["status"] == "ok"]
        xs = range(len(rows))
        med = [r["per_unit_median"] for _, r in rows]
        err = [[r["per_unit_median"] - r["per_unit_min"] for _, r in rows],
               [r["per_unit_max"] - r["per_unit_median"] for _, r in rows]]
        ax.bar(xs, med, yerr=err, capsize=3, color=[colors.get(fw, "grey") for fw, _ in rows],
               edgecolor="black", linewidth=0.6)
        for x, v in zip(xs, med):
            ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([_label(fw, r) for fw, r in rows], rotation=35, ha="right", fontsize=8)
        ax.set_title(names[m])
        ax.set_ylabel(UNITS[m][1].replace("s / ", "seconds / "))
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Training time, one CPU thread (lower is better; bars: median, whiskers: min–max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "figure6.png", dpi=120)
    plt.close(fig)
    for m in models:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for run in sorted(runs, key=lambda r: r["round"]):
            res = run.get("models", {}).get(m)
            if run["round"] != 0 or not res or res.get("status") != "ok":
                continue
            ax.plot(range(1, len(res["losses"]) + 1), res["losses"], label=LABELS[run["framework"]],
                    color=colors.get(run["framework"]), linewidth=1, alpha=0.85)
            if res["warmup_steps"]:
                ax.axvline(res["warmup_steps"] + 0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("training step (dotted line: end of warm-up)")
        ax.set_ylabel("loss")
        if m in LOG_LOSS_MODELS:
            ax.set_yscale("log")
        ax.set_title(f"{names[m]}: training loss, round 1")
        if ax.lines:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"loss_{m}.png", dpi=110)
        plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--scaling" in argv:  # data-parallel scaling: its own harness (benchmarks/scaling.py)
        from benchmarks.scaling import harness

        return harness([a for a in argv if a != "--scaling"])
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    iters_default, repeat_default, warm_default = PRESETS[mode]
    models = [m for m in args.only.split(",") if m]
    frameworks = [f for f in args.frameworks.split(",") if f]
    for m in models:
        if m not in MODELS:
            sys.exit(f"unknown model {m!r}; expected some of {','.join(MODELS)}")
    for f in frameworks:
        if f not in REGISTRY:
            sys.exit(f"unknown framework {f!r}; expected some of {','.join(REGISTRY)}")
    iters = {m: args.iters or iters_default[m] for m in models}
    args.repeat = args.repeat or repeat_default
    warmup = args.warmup if args.warmup is not None else warm_default
    args.jobs = args.jobs or (2 if args.smoke else 1)
    args.timeout = args.timeout or (300.0 if args.smoke else 3600.0)
    if args.jobs > 1 and not args.smoke:
        print("warning: --jobs > 1 runs workers concurrently; times are then not comparable", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "logs"
    log_dir.mkdir(exist_ok=True)

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = f"CPU {args.cpu}" if args.cpu is not None else (
        f"CPU {cpus[-1]}" if args.jobs == 1 and cpus else f"one CPU per worker of {cpus}")
    threads_summary = f"affinity {pin}; " + ", ".join(f"{k}={v}" for k, v in THREAD_ENV.items()
                                                      if k.endswith("THREADS") or k == "XLA_FLAGS")
    print(f"benchmarks: {mode} run, models {','.join(models)}, frameworks {','.join(frameworks)}, "
          f"{args.repeat} round(s), iters {iters}, warm-up {warmup}", file=sys.stderr)
    print(f"single thread: {threads_summary}; torch.set_num_threads(1), TF intra/inter-op 1", file=sys.stderr)

    t_start = time.time()
    runs, unavailable, active = [], {}, list(frameworks)
    with tempfile.TemporaryDirectory(prefix="lantern_bench_") as tmpd:
        tmp = Path(tmpd)
        machine = [measure_machine(args, tmp)]
        bar = _bar(len(frameworks) * len(models) * args.repeat, "benchmarks")
        probes = {}
        for rnd in range(args.repeat):
            specs = [dict(framework=fw, round=rnd, models=models, iters=iters, warmup=warmup, data=args.data,
                          dropout=args.dropout, thread_env=list(THREAD_ENV),
                          probes=[fw] if (args.probe_recompile and rnd == 0 and fw in ("torch_compile", "jax")
                                          and "treelstm" in models) else [])
                     for fw in active]
            results = run_workers(specs, args, tmp, bar, log_dir)
            results.sort(key=lambda r: active.index(r["framework"]))
            for res in results:
                if not res.get("available", True):
                    unavailable[res["framework"]] = res.get("version", "unavailable")
                    bar.update(len(models) * (args.repeat - rnd - 1))
                else:
                    runs.append(res)
                    if res.get("probes"):
                        probes.update(res["probes"])
            active = [fw for fw in active if fw not in unavailable]
        bar.close()
        machine.append(measure_machine(args, tmp))
    peaks = [m["sgemm_peak_gflops"] for m in machine if "sgemm_peak_gflops" in m]
    machine_meta = {**next((m for m in machine if "cpu" in m), {}), "sgemm_peak_each": peaks,
                    "sgemm_peak_runs": len(peaks), "sgemm_peak_gflops": max(peaks) if peaks else None}
    floor = floors(models, iters, warmup, args.data, machine_meta["sgemm_peak_gflops"])

    for fw, why in unavailable.items():
        print(f"not run: {LABELS[fw]}: {why}", file=sys.stderr)
    summary = summarise(runs, models, [fw for fw in frameworks if fw not in unavailable], floor)
    versions = {"python": platform.python_version()}
    for run in runs:
        versions.update(run.get("versions", {}))
    data_sources = _data_sources(args.data)
    meta = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), cpu=cpu_model(),
                machine=machine_meta,
                cpus=os.cpu_count(), platform=platform.platform(), mode=mode, repeat=args.repeat, warmup=warmup,
                iters=iters, models=models, frameworks=frameworks, jobs=args.jobs, dropout=args.dropout,
                thread_env=THREAD_ENV, threads_summary=threads_summary, versions=versions,
                data_sources=data_sources, wall_s=time.time() - t_start,
                tolerances=dict(first_loss=FIRST_LOSS_TOL, final_loss=FINAL_LOSS_TOL, final_window=FINAL_WINDOW),
                worker_threads={r["framework"]: dict(affinity=r.get("affinity"), threads=r.get("threads"))
                                for r in runs},
                argv=sys.argv[1:] if argv is None else list(argv))
    # Compact, 6 significant digits: per-step losses and times of every run
    # stay in, at under 2 MB for a full run.
    (out / "results.json").write_text(json.dumps(_rounded(dict(meta=meta, unavailable=unavailable, summary=summary,
                                                               probes=probes, runs=runs)), separators=(",", ":")))
    write_markdown(out / "results.md", meta, summary, unavailable, probes)
    write_charts(out, summary, runs, models)
    _print_table(summary)
    print(f"wrote {out / 'results.json'}, results.md, figure6.png, loss_*.png "
          f"({time.time() - t_start:.0f} s)", file=sys.stderr)
    return 0


def _data_sources(data_dir):
    from benchmarks import data
    text = data.load_text(Path(data_dir) / "text" / "graham.txt" if data_dir else None)
    trees = data.load_trees(Path(data_dir) / "sst" / "array_tree.txt" if data_dir else None)
    return {"text": text.source, "images": data.MnistLike.source, "trees": trees.source,
            "embedding": "generated uniform(-0.05, 0.05), [5267, 300]",
            "pinn": "generated: fresh uniform interior and boundary points every step, seeded by the step"}


def _print_table(summary):
    for m, s in summary.items():
        print(f"\n{m} ({s['unit']}; ratio vs {s['reference_note']})")
        for fw, r in s["frameworks"].items():
            if r["status"] != "ok":
                print(f"  {LABELS[fw]:22s} {r['status']}: {r['reason'][:100]}")
                continue
            ratio = f"x{r['ratio_median']:.2f}" if r["ratio_median"] is not None else ""
            flag = " LOSS MISMATCH" if r.get("loss_flag") else ""
            frac = f"{100 * r['floor_fraction']:5.1f}% of floor" if r.get("floor_fraction") else ""
            if "ms_per_tree" in r:
                frac = f"{r['ms_per_tree']:.3f} ms/tree  " + frac
            print(f"  {_label(fw, r):22s} {r['per_unit_median']:9.2f} s  {r['ms_per_step']:8.2f} ms/step  {ratio:>7s}  {frac} "
                  f"one-off {r['compile_s_median']:6.1f} s  rss {r['peak_rss_mb_max']:5.0f} MB  "
                  f"final loss {r['final_loss_mean']:.5g}{flag}")


if __name__ == "__main__":
    sys.exit(main())
