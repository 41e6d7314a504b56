"""What the benchmark ran on: the CPU, its vector extensions, the OpenBLAS kernel
lantern_stage links, and one core's measured sgemm peak (for the `floor` column).

    python -m benchmarks.machine [--cpu N]   # prints the JSON of describe() + the peak

`benchmarks.run` runs the peak measurement as its own worker process, with the
same single-thread environment and CPU pinning as the frameworks, at the start
and at the end of a run, and keeps the higher of the two.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import time

# The vector extensions that decide which kernels a compiler or BLAS can use.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "avx_vnni")

PEAK_SIZE = 1024     # square sgemm: 2 GFLOP a call, well into the compute-bound regime
PEAK_CALLS = 5


def cpu() -> dict:
    """{"model": ..., "vector": [...]}: /proc/cpuinfo's model name and the
    flags lantern_stage chooses its OpenBLAS kernels by."""
    from lantern_stage.runtime import cpu_flags

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    flags = cpu_flags()
    return {"model": model, "vector": [f for f in VECTOR_FLAGS if f in flags]}


def _openblas_lib():
    from lantern_stage.runtime import openblas_loading

    with openblas_loading():   # the kernels lantern_stage's modules load it with
        import scipy_openblas32 as ob
        return ob, ctypes.CDLL(os.path.join(ob.get_lib_dir(), f"lib{ob.get_library()}.so"))


def openblas() -> dict:
    """The scipy-openblas32 build lantern_stage links: its config and the kernel
    (core) it picked for this CPU at load time (DYNAMIC_ARCH)."""
    try:
        ob, lib = _openblas_lib()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    out = {"config": ob.get_openblas_config()}
    core = getattr(lib, "scipy_openblas_get_corename", None)
    if core is not None:
        core.restype = ctypes.c_char_p
        out["core"] = core().decode()
    return out


def sgemm_peak_gflops(n: int = PEAK_SIZE, calls: int = PEAK_CALLS) -> float:
    """Best GFLOP/s of `calls` n x n x n sgemms through the linked OpenBLAS, on
    whatever threads OPENBLAS_NUM_THREADS allows (the harness sets 1)."""
    import numpy as np
    _, lib = _openblas_lib()
    sgemm = lib.scipy_cblas_sgemm
    f32p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    sgemm.argtypes = [i, i, i, i, i, i, f, f32p, i, f32p, i, f, f32p, i]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    c = np.zeros((n, n), np.float32)
    row_major, no_trans = 101, 111
    best = float("inf")
    for _ in range(calls + 1):   # the first call warms up (page faults, OpenBLAS buffers)
        t0 = time.perf_counter()
        sgemm(row_major, no_trans, no_trans, n, n, n, 1.0, a.ctypes.data, n, b.ctypes.data, n, 0.0, c.ctypes.data, n)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def describe() -> dict:
    return {"cpu": cpu(), "openblas": openblas(), "platform": platform.platform()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.machine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", type=int, help="pin to this CPU first")
    args = ap.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    out = describe()
    out["sgemm_peak_gflops"] = sgemm_peak_gflops()
    out["sgemm_peak_threads"] = os.environ.get("OPENBLAS_NUM_THREADS")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
