"""Check cpp_runtime/{conv,pool,random}.h against torch, and time the convs.

    .venv/bin/python cpp_runtime/dev/check_runtime.py            # checks + benchmark
    .venv/bin/python cpp_runtime/dev/check_runtime.py --no-bench
    .venv/bin/python cpp_runtime/dev/check_runtime.py --bench-only [--reps 15]
    .venv/bin/python cpp_runtime/dev/check_runtime.py --no-bench --march x86-64-v3  # AVX2 paths
    .venv/bin/python cpp_runtime/dev/check_runtime.py --no-bench \
        --extra-flags="-fno-math-errno -fno-trapping-math"  # as lantern_stage/build.py

Builds check_lib.cpp into a ctypes-loadable .so and bench_conv.cpp into an
executable (g++ -O3 -march=native -std=c++17, linked with scipy-openblas32),
in a temporary folder.  Values and gradients are compared with torch float64
results at 1e-4 relative (max error over the max magnitude of the reference).
The benchmark runs single-threaded on core 0 (taskset, OPENBLAS_NUM_THREADS=1).
"""

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy_openblas32
import torch
import torch.nn.functional as tF

HERE = Path(__file__).resolve().parent
RUNTIME = HERE.parent
RTOL = 1e-4
CXXFLAGS = ["-O3", "-march=native", "-std=c++17", "-fPIC", "-Wall", "-Wextra", "-Wno-psabi"]


def blas_flags():
    lib_dir = scipy_openblas32.get_lib_dir()
    return [f"-I{scipy_openblas32.get_include_dir()}", f"-L{lib_dir}",
            f"-l{scipy_openblas32.get_library()}", f"-Wl,-rpath,{lib_dir}"]


def build(src, out, shared):
    cmd = ["g++", *CXXFLAGS, f"-I{RUNTIME}", str(src), "-o", str(out)]
    if shared:
        cmd.insert(1, "-shared")
    cmd += blas_flags()
    subprocess.run(cmd, check=True)
    return out


# ----------------------------------------------------------------- the library

def load(path):
    lib = ctypes.CDLL(str(path))
    lib.lt_check_error.restype = ctypes.c_char_p
    lib.lt_arena_peak.restype = ctypes.c_longlong
    lib.lt_conv_workspace.restype = ctypes.c_longlong
    lib.lt_rng.argtypes = [ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_float, ctypes.c_float]
    lib.lt_dropout.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                               ctypes.c_float]
    return lib


def ptr(a):
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


def call(lib, name, *args):
    conv = [ptr(a) if isinstance(a, np.ndarray) or a is None else a for a in args]
    if getattr(lib, name)(*conv) != 0:
        raise RuntimeError(lib.lt_check_error().decode())


def rel_err(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    scale = max(np.abs(ref).max(initial=0.0), 1e-30)
    return float(np.abs(got.astype(np.float64) - ref).max(initial=0.0) / scale)


class Report:
    def __init__(self):
        self.failures = []
        self.worst = {}

    def check(self, what, err, tol=RTOL):
        key = what.split(" ")[0]
        self.worst[key] = max(self.worst.get(key, 0.0), err)
        if not err <= tol:
            self.failures.append(f"{what}: error {err:.3g} > {tol:g}")

    def exact(self, what, ok):
        if not ok:
            self.failures.append(what)


# ---------------------------------------------------------------------- conv

# N, C, H, W, F, KH, KW, stride (sh, sw), pad (ph, pw), bias
CONV_CASES = [
    (3, 1, 28, 28, 10, 5, 5, (1, 1), (0, 0), True),    # MNIST conv1, small batch
    (3, 10, 12, 12, 20, 5, 5, (1, 1), (0, 0), True),   # MNIST conv2
    (1, 1, 7, 9, 1, 3, 3, (1, 1), (0, 0), False),
    (3, 3, 9, 13, 4, 3, 3, (1, 1), (1, 1), True),      # non-square, pad 1, OW = 13
    (3, 2, 10, 11, 3, 5, 5, (1, 1), (2, 2), True),     # pad 2
    (1, 4, 11, 8, 6, 3, 2, (1, 1), (0, 1), True),      # rectangular kernel, uneven pad
    (3, 3, 11, 10, 5, 3, 3, (2, 2), (1, 1), True),     # stride 2
    (1, 2, 9, 12, 3, 4, 4, (2, 2), (0, 0), False),     # stride 2, no pad
    (3, 2, 13, 9, 7, 5, 3, (2, 1), (2, 1), True),      # mixed stride / pad
    (3, 5, 6, 6, 7, 1, 1, (1, 1), (0, 0), True),       # pointwise
    (1, 6, 20, 37, 9, 3, 3, (1, 1), (1, 1), True),     # wide rows: several vectors + tail
    (2, 3, 5, 5, 2, 5, 5, (1, 1), (0, 0), True),       # output 1x1
    (3, 7, 16, 16, 11, 3, 3, (1, 1), (1, 1), True),    # F, C not multiples of the tiles
    (1, 40, 6, 6, 30, 3, 3, (1, 1), (1, 1), True),     # dispatch: direct dx, gemm dw
    (1, 128, 8, 8, 130, 3, 3, (1, 1), (0, 0), False),  # dw partial sums > 4 MB: gemm dw
]


def conv_reference(x, w, b, dy, stride, pad):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True) if b is not None else None
    y = tF.conv2d(xt, wt, bt, stride=stride, padding=pad)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return (y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
            bt.grad.numpy() if bt is not None else None)


def check_conv(lib, rep, rng):
    for case in CONV_CASES:
        N, C, H, W, F, KH, KW, (sh, sw), (ph, pw), has_b = case
        OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = rng.standard_normal((F, C, KH, KW)).astype(np.float32)
        b = rng.standard_normal(F).astype(np.float32) if has_b else None
        dy = rng.standard_normal((N, F, OH, OW)).astype(np.float32)
        y_ref, dx_ref, dw_ref, db_ref = conv_reference(x, w, b, dy, (sh, sw), (ph, pw))
        dims = (N, C, H, W, F, KH, KW, sh, sw, ph, pw)
        variants = [0, 1] + ([2] if sh == 1 and sw == 1 else [])
        # The public entry points stay inside conv2d_workspace_bytes.
        lib.lt_arena_reset_peak()
        y = np.empty((N, F, OH, OW), np.float32)
        call(lib, "lt_conv_forward", 0, x, w, b, y, *dims)
        bufs = [np.zeros(x.shape, np.float32), np.zeros(w.shape, np.float32), np.zeros(F, np.float32)]
        call(lib, "lt_conv_backward", 0, x, w, dy, *bufs, *dims)
        peak, bound = lib.lt_arena_peak(), lib.lt_conv_workspace(*dims)
        rep.exact(f"conv case={case}: arena peak {peak} > workspace bound {bound}", peak <= bound)
        rep.exact(f"conv case={case}: workspace bound {bound} loose (peak {peak})",
                  bound <= 2 * peak + 4096)
        for v in variants:
            tag = f"conv variant={v} case={case}"
            y = np.full((N, F, OH, OW), np.nan, np.float32)
            call(lib, "lt_conv_forward", v, x, w, b, y, *dims)
            rep.check(f"{tag} y", rel_err(y, y_ref))
            # Gradients accumulate: start from known values and subtract them.
            dx0 = rng.standard_normal(x.shape).astype(np.float32)
            dw0 = rng.standard_normal(w.shape).astype(np.float32)
            db0 = rng.standard_normal(F).astype(np.float32)
            dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
            call(lib, "lt_conv_backward", v, x, w, dy, dx, dw, db, *dims)
            rep.check(f"{tag} dx", rel_err(dx - dx0, dx_ref))
            rep.check(f"{tag} dw", rel_err(dw - dw0, dw_ref))
            if has_b:
                rep.check(f"{tag} db", rel_err(db - db0, db_ref))
            # Each gradient on its own (the others nullptr).
            for which in range(3):
                bufs = [None, None, None]
                bufs[which] = np.zeros([x.shape, w.shape, (F,)][which], np.float32)
                call(lib, "lt_conv_backward", v, x, w, dy, *bufs, *dims)
                ref = [dx_ref, dw_ref, db_ref][which]
                if ref is not None:
                    rep.check(f"{tag} alone-{'x w b'.split()[which]}", rel_err(bufs[which], ref))
    # Arena is left as found; bad shapes raise instead of crashing.
    rep.exact("conv: arena not released", lib.lt_arena_in_use() == 0)
    x = np.zeros((1, 1, 4, 4), np.float32)
    w = np.zeros((1, 1, 5, 5), np.float32)
    y = np.zeros((1, 1, 1, 1), np.float32)
    try:
        call(lib, "lt_conv_forward", 0, x, w, None, y, 1, 1, 4, 4, 1, 5, 5, 1, 1, 0, 0)
        rep.exact("conv: kernel larger than input was accepted", False)
    except RuntimeError as e:
        rep.exact(f"conv: unexpected message {e}", "larger than padded input" in str(e))


# ---------------------------------------------------------------------- pool

POOL_CASES = [  # N, C, H, W, k, s
    (3, 2, 8, 8, 2, 2), (1, 3, 9, 7, 2, 2), (3, 2, 9, 11, 3, 2), (1, 1, 6, 5, 2, 1),
    (3, 4, 24, 24, 2, 2), (2, 3, 7, 7, 3, 3),
]


def check_pool(lib, rep, rng):
    for N, C, H, W, k, s in POOL_CASES:
        OH, OW = (H - k) // s + 1, (W - k) // s + 1
        for data in ("normal", "ties", "special"):
            if data == "normal":
                x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            elif data == "ties":
                x = rng.integers(-2, 3, (N, C, H, W)).astype(np.float32)
            else:
                x = rng.standard_normal((N, C, H, W)).astype(np.float32)
                flat = x.reshape(-1)
                flat[rng.integers(0, flat.size, max(1, flat.size // 20))] = np.nan
                flat[rng.integers(0, flat.size, max(1, flat.size // 20))] = -np.inf
                x[0, 0, :k, :k] = -np.inf  # an all -inf window
            tag = f"pool k={k} s={s} shape={(N, C, H, W)} data={data}"
            xt = torch.tensor(x, requires_grad=True)
            yt, it = tF.max_pool2d(xt, k, s, return_indices=True)
            dy = rng.standard_normal((N, C, OH, OW)).astype(np.float32)
            yt.backward(torch.tensor(dy))
            y = np.empty((N, C, OH, OW), np.float32)
            am = np.empty((N, C, OH, OW), np.int32)
            call(lib, "lt_max_pool_forward", x, y, am, N, C, H, W, k, s)
            rep.exact(f"max_{tag}: values differ",
                      np.array_equal(y, yt.detach().numpy(), equal_nan=True))
            rep.exact(f"max_{tag}: argmax differs", np.array_equal(am, it.numpy()))
            dx0 = rng.standard_normal(x.shape).astype(np.float32)
            dx = dx0.copy()
            call(lib, "lt_max_pool_backward", dy, am, dx, N, C, H, W, k, s)
            rep.check(f"max_pool {tag} dx", rel_err(dx - dx0, xt.grad.numpy()))
            if data == "special":
                continue
            xt = torch.tensor(x.astype(np.float64), requires_grad=True)
            yt = tF.avg_pool2d(xt, k, s)
            yt.backward(torch.tensor(dy.astype(np.float64)))
            call(lib, "lt_avg_pool_forward", x, y, N, C, H, W, k, s)
            rep.check(f"avg_pool {tag} y", rel_err(y, yt.detach().numpy()))
            dx = dx0.copy()
            call(lib, "lt_avg_pool_backward", dy, dx, N, C, H, W, k, s)
            rep.check(f"avg_pool {tag} dx", rel_err(dx - dx0, xt.grad.numpy()))


# -------------------------------------------------------------------- random

M32 = 0xFFFFFFFF


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (32 - k))) & M32


def xoshiro_step(s):
    result = (rotl((s[0] + s[3]) & M32, 7) + s[0]) & M32
    t = (s[1] << 9) & M32
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 11)
    return result


def xoshiro_jump(s):
    j = [0, 0, 0, 0]
    for word in (0x8764000B, 0xF542D2D3, 0x6FA035C3, 0x77F2DB5B):
        for b in range(32):
            if word & (1 << b):
                j = [a ^ c for a, c in zip(j, s)]
            xoshiro_step(s)
    s[:] = j


def reference_streams(seed):
    x, a = splitmix64(seed)
    _, b = splitmix64(x)
    s = [a & M32, a >> 32, b & M32, b >> 32]
    lanes, t = [], list(s)
    for _ in range(8):
        xoshiro_jump(t)
        lanes.append(list(t))
    return s, lanes


def check_random(lib, rep):
    n = 1000
    for seed in (0, 1, 12345, 2**63 + 7):
        s, lanes = reference_streams(seed)
        expect = np.array([xoshiro_step(s) for _ in range(n)], np.uint32)
        got = np.empty(n, np.uint32)
        call(lib, "lt_rng", seed, 0, got, n, 0.0, 0.0)
        rep.exact(f"rng seed={seed}: next_u32 differs from xoshiro128++", np.array_equal(got, expect))
        m = 8 * 7 + 3
        expect = np.array([xoshiro_step(lanes[i % 8]) for i in range(m)], np.uint32)
        got = np.empty(m, np.uint32)
        call(lib, "lt_rng", seed, 3, got, m, 0.0, 0.0)
        rep.exact(f"rng seed={seed}: fill_u32 differs from the jumped streams",
                  np.array_equal(got, expect))
    big = 1 << 20
    for kind, name in ((1, "uniform"), (4, "fill_uniform")):
        u = np.empty(big, np.float32)
        call(lib, "lt_rng", 7, kind, u, big, 0.0, 1.0)
        rep.exact(f"rng {name}: outside [0, 1)", u.min() >= 0.0 and u.max() < 1.0)
        rep.exact(f"rng {name}: mean {u.mean():.4f} / var {u.var():.4f}",
                  abs(u.mean() - 0.5) < 3e-3 and abs(u.var() - 1 / 12) < 3e-3)
    for kind, name in ((2, "normal"), (5, "fill_normal")):
        g = np.empty(big, np.float32)
        call(lib, "lt_rng", 7, kind, g, big, 0.0, 1.0)
        rep.exact(f"rng {name}: mean {g.mean():.4f} / std {g.std():.4f}",
                  np.isfinite(g).all() and abs(g.mean()) < 5e-3 and abs(g.std() - 1) < 5e-3)
        rep.exact(f"rng {name}: tails", abs((np.abs(g) > 2).mean() - 0.0455) < 2e-3)
    a, b = np.empty(big, np.float32), np.empty(big, np.float32)
    call(lib, "lt_rng", 99, 2, a, big, 0.0, 1.0)
    call(lib, "lt_rng", 99, 2, b, big, 0.0, 1.0)
    rep.exact("rng: same seed, different numbers", np.array_equal(a, b))
    for p in (0.0, 0.25, 0.5, 0.9, 1.0):
        n, reps = 100 * 50 + 3, 20
        mask = np.empty(n * reps, np.float32)
        call(lib, "lt_dropout", 5, mask, n, reps, p)
        keep = 1 / (1 - float(np.float32(p))) if p < 1 else 0.0  # p is a C float
        vals_ok = np.all((mask == 0) | (mask == np.float32(keep)))
        frac = float((mask == 0).mean()) if p < 1 else 1.0
        rep.exact(f"dropout p={p}: values not in {{0, {keep}}}", vals_ok)
        rep.exact(f"dropout p={p}: dropped fraction {frac:.4f}", abs(frac - p) < 0.01)
        if 0 < p < 1:
            rep.exact(f"dropout p={p}: masks repeat between calls",
                      not np.array_equal(mask[:n], mask[n:2 * n]))
    try:
        call(lib, "lt_dropout", 5, np.empty(8, np.float32), 8, 1, 1.5)
        rep.exact("dropout: p = 1.5 accepted", False)
    except RuntimeError:
        pass


# ----------------------------------------------------------------- benchmark

def run_bench(exe, reps):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [str(exe), str(reps)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    subprocess.run(cmd, check=True, env=env)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--bench-only", action="store_true")
    ap.add_argument("--reps", type=int, default=15, help="benchmark rounds")
    ap.add_argument("--march", default="native", help="g++ -march= (default native)")
    ap.add_argument("--extra-flags", default="", help="more g++ flags, e.g. the module build's")
    args = ap.parse_args()
    CXXFLAGS[1] = f"-march={args.march}"
    CXXFLAGS.extend(args.extra_flags.split())
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="lt_runtime_check_") as tmp:
        tmp = Path(tmp)
        if not args.bench_only:
            lib = load(build(HERE / "check_lib.cpp", tmp / "check_lib.so", shared=True))
            rep = Report()
            rng = np.random.default_rng(0)
            check_conv(lib, rep, rng)
            check_pool(lib, rep, rng)
            check_random(lib, rep)
            for k, v in sorted(rep.worst.items()):
                print(f"worst relative error {k:10s} {v:.2e}")
            if rep.failures:
                print(f"{len(rep.failures)} FAILURES:")
                for f in rep.failures[:50]:
                    print("  " + f)
                sys.exit(1)
            print("all checks passed")
        if not args.no_bench:
            run_bench(build(HERE / "bench_conv.cpp", tmp / "bench_conv", shared=False), args.reps)


if __name__ == "__main__":
    main()
