"""Numbers a program or a data file can produce that used to crash the
process or come out silently wrong (issue 10, classes 1, 2, 8-11, 16):
integer division by zero, element counts that overflow, long float32
reductions, NaN through relu/maximum/minimum, exp underflow, log_softmax at
large logits, and numpy / Python asking a staged value for its value.

Every number is checked against numpy float64 (and PyTorch float64 where it
defines the behaviour).  Each compiled function is compiled once per session.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import lantern_stage as lt
from lantern_stage.paths import RUNTIME_DIR

try:
    import torch
except ImportError:
    torch = None

THIS_FILE = str(Path(__file__).resolve())
INT_MIN = -2**31


def line_of(marker: str) -> int:
    lines = Path(THIS_FILE).read_text().splitlines()
    hits = [i + 1 for i, ln in enumerate(lines) if ln.rstrip().endswith("# " + marker)]
    assert len(hits) == 1, marker
    return hits[0]


# ====================================================================== 1: integer // and %
@lt.compile
def int_division(a: lt.Tensor[4, "int32"], b: lt.Tensor[4, "int32"], c: lt.Tensor[4, "int32"],
                 d: lt.Tensor[4, "int32"], i: lt.Int, j: lt.Int):
    q = a // b  # tensor floordiv
    r = c % d  # tensor mod
    s = i // j  # scalar floordiv
    return q, r, s, i % j


def _ints(*v):
    return np.array(v, np.int32)


GOOD = dict(a=_ints(7, -7, 7, INT_MIN), b=_ints(2, 2, -2, 3), c=_ints(7, -7, INT_MIN, 5),
            d=_ints(3, 3, -1, -1), i=-9, j=4)


def test_integer_division_and_modulo_follow_python():
    q, r, s, t = int_division(**GOOD)
    a, b, c, d = (GOOD[k].astype(np.int64) for k in "abcd")
    np.testing.assert_array_equal(q, a // b)
    np.testing.assert_array_equal(r, c % d)  # INT_MIN % -1 is 0, as in Python
    assert (int(s), int(t)) == (-9 // 4, -9 % 4)


@pytest.mark.parametrize("which, op, marker", [
    ("b", "floordiv", "tensor floordiv"), ("d", "mod", "tensor mod"), ("j", "floordiv", "scalar floordiv"),
])
def test_integer_division_by_zero_is_zero_division_error_at_the_users_line(which, op, marker):
    args = dict(GOOD)
    args[which] = 0 if which == "j" else _ints(1, 0, 1, 1)
    with pytest.raises(ZeroDivisionError, match="division or modulo by zero") as e:
        int_division(**args)
    assert f"{op} at {THIS_FILE}:{line_of(marker)}" in str(e.value)
    q, *_ = int_division(**GOOD)  # the module is still usable
    np.testing.assert_array_equal(q, GOOD["a"].astype(np.int64) // GOOD["b"])


def test_int_min_floordiv_minus_one_is_overflow_error():
    args = dict(GOOD, a=_ints(INT_MIN, 1, 1, 1), b=_ints(-1, 1, 1, 1))
    with pytest.raises(OverflowError, match=r"-2147483648 // -1 = 2147483648 overflows int32"):
        int_division(**args)
    with pytest.raises(OverflowError, match=f"floordiv at {THIS_FILE}:{line_of('scalar floordiv')}"):
        int_division(**dict(GOOD, i=INT_MIN, j=-1))


# ====================================================================== 2: sizes that overflow
def _staging_error(fn, *args):
    with pytest.raises(lt.StagingError) as e:
        lt.compile(fn)(*args)
    return str(e.value)


def test_zeros_whose_byte_count_wraps_is_a_staging_error():
    def f():
        return lt.zeros(2**31, 2**31)  # 2**62 floats = 2**64 bytes, wrapped to 0

    msg = _staging_error(f)
    assert "full: float32[2147483648,2147483648] has 4611686018427387904 elements" in msg
    assert f"{THIS_FILE}:{f.__code__.co_firstlineno + 1}" in msg


def test_ones_whose_byte_count_wraps_is_a_staging_error():
    def f():
        return lt.ones(2**62 + 16)  # wrapped to 64 bytes, then filled far past them

    assert "more than a 64-bit byte count holds" in _staging_error(f)


def test_an_annotation_too_large_to_allocate_is_rejected():
    def f(x: lt.Tensor[2**40, 2**30]):
        return x

    with pytest.raises(TypeError, match=r"parameter 'x': float32\[1099511627776,1073741824\] has"):
        lt.compile(f)(np.zeros((1, 1), np.float32))


def test_int32_kernels_reject_operands_of_2_to_the_31_elements():
    def f():
        v = lt.zeros(2**31)  # 8 GiB: fine for the arena to refuse, but BLAS would wrap the length
        return v @ v

    assert "the dot kernel (BLAS / convolution) indexes with int32" in _staging_error(f)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_arena_alloc_of_a_wrapping_count_fails_instead_of_allocating(tmp_path):
    src = tmp_path / "arena_check.cpp"
    src.write_text(r"""
#include <cstdint>
#include <cstdio>
#include "arena.h"
int main() {
  lt::Arena arena;
  arena.reserve(1 << 20);
  const std::size_t counts[] = {SIZE_MAX / 4 + 1, SIZE_MAX / 2, SIZE_MAX - 3, (std::size_t(1) << 62) + 16};
  for (std::size_t count : counts) {
    try {
      float* p = arena.alloc<float>(count);
      std::printf("allocated %p for %zu floats\n", static_cast<void*>(p), count);
      return 1;
    } catch (const lt::Error& e) {
      std::printf("%s\n", e.what());
    }
  }
  return 0;
}
""")
    exe = tmp_path / "arena_check"
    subprocess.run(["g++", "-std=c++17", "-O1", f"-I{RUNTIME_DIR}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert out.stdout.count("arena exhausted") == 4, out.stdout


# ====================================================================== 8: long reductions
N_ONES, N_TENTHS, N_MSE, ROWS = 2**25, 10**7, 10**6, 2**20


@lt.compile
def long_reductions(ones: lt.Tensor[N_ONES], tenths: lt.Tensor[N_TENTHS], a: lt.Tensor[N_MSE],
                    b: lt.Tensor[N_MSE], m: lt.Tensor[ROWS, 4], w: lt.Tensor[()], v: lt.Tensor[4],
                    k: lt.Tensor[2**14, 3, 16], u: lt.Tensor[3, 1], g: lt.Tensor[50, 7, 50, 129],
                    r: lt.Tensor[129], c: lt.Tensor[7, 1, 129]):
    # reduction-shaped backward: a broadcast scalar, row, and middle axis; and
    # two sums of different shapes in one fused loop (r a row, c a block)
    def loss(w, v, u, r, c):
        return lt.sum(a * w) + lt.sum(m * v) + lt.sum(k * u) + lt.sum(g * r * c)

    value, (dw, dv, du, dr, dc) = lt.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))(w, v, u, r, c)
    logits = lt.reshape(a, (1, N_MSE))
    return (lt.sum(ones), lt.mean(ones), lt.sum(tenths), lt.mse_loss(a, b), lt.sum(m, axis=0),
            value, dw, dv, du, a @ a, lt.log_softmax(logits)[0, :8], lt.cross_entropy(lt.reshape(a, (N_MSE // 2, 2)),
                                                                         lt.zeros(N_MSE // 2, dtype="int32")),
            dr, dc)


@pytest.fixture(scope="module")
def reductions():
    rng = np.random.default_rng(8)
    ins = dict(ones=np.ones(N_ONES, np.float32), tenths=np.full(N_TENTHS, 0.1, np.float32),
               a=rng.standard_normal(N_MSE).astype(np.float32) + 0.5, b=rng.standard_normal(N_MSE).astype(np.float32),
               m=(rng.random((ROWS, 4)) + 0.1).astype(np.float32), w=np.float32(0.75),
               v=np.array([1, -1, 0.5, 2], np.float32), k=rng.random((2**14, 3, 16)).astype(np.float32),
               u=np.array([[1], [2], [-1]], np.float32), g=rng.random((50, 7, 50, 129)).astype(np.float32),
               r=(rng.random(129) + 0.5).astype(np.float32), c=(rng.random((7, 1, 129)) + 0.5).astype(np.float32))
    return ins, long_reductions(**ins)


def close64(actual, desired, what):
    np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol=1e-6, atol=0, err_msg=what)


def test_sums_and_means_of_millions_of_elements_match_float64(reductions):
    ins, out = reductions
    f64 = {k: np.asarray(x, np.float64) for k, x in ins.items()}
    close64(out[0], 2.0**25, "sum of 2**25 ones")
    close64(out[1], 1.0, "mean of 2**25 ones")
    close64(out[2], f64["tenths"].sum(), "sum of 1e7 x 0.1")
    close64(out[3], np.mean((f64["a"] - f64["b"]) ** 2), "mse_loss over 1e6 elements")
    close64(out[4], f64["m"].sum(axis=0), "column sums over 2**20 rows")
    close64(out[9], f64["a"] @ f64["a"], "1-D @ 1-D over 1e6 elements")


def test_reduction_shaped_gradients_match_float64(reductions):
    ins, out = reductions
    f64 = {k: np.asarray(x, np.float64) for k, x in ins.items()}
    value, dw, dv, du = out[5:9]
    dr, dc = out[12:14]
    grc = f64["g"] * f64["r"] * f64["c"]
    close64(value, (f64["a"] * f64["w"]).sum() + (f64["m"] * f64["v"]).sum() + (f64["k"] * f64["u"]).sum() + grc.sum(),
            "loss")
    close64(dw, f64["a"].sum(), "gradient of a scalar broadcast over 1e6 elements")
    close64(dv, f64["m"].sum(axis=0), "gradient of a row broadcast over 2**20 rows")
    close64(du, f64["k"].sum(axis=(0, 2))[:, None], "gradient of a column broadcast over axes 0 and 2")
    close64(dr, (f64["g"] * f64["c"]).sum(axis=(0, 1, 2)), "row gradient beside a block gradient in one loop")
    close64(dc, (f64["g"] * f64["r"]).sum(axis=(0, 2))[:, None, :], "block gradient over axes 0 and 2 beside a row")


def test_a_sum_read_in_its_own_loop_stays_a_running_sum():
    """Codegen: a float sum is held in doubles only when nothing else in its
    loop touches its destination; a loop that reads it (fusion never makes
    one) keeps its meaning, the running sum in memory."""
    from lantern_stage import ir
    from lantern_stage.codegen.cpp import LoopKernels, render_body
    from lantern_stage.types import TensorType

    x, s, y = (ir.Var(n, TensorType(shape)) for n, shape in (("x", (100, 4)), ("s", (4,)), ("y", (100, 4))))
    column_sum = ir.Assign(ir.View(s, 0, (0, 1)), True, ("load", ir.View(x, 0, (4, 1))))
    read_of_the_sum = ir.Assign(ir.View(y, 0, (4, 1)), False, ("load", ir.View(s, 0, (0, 1))))
    for assigns, doubles in (([column_sum], True), ([column_sum, read_of_the_sum], False)):
        kernels = LoopKernels()
        render_body(ir.Block([ir.Map((100, 4), assigns)]), kernels)
        assert ("double acc0[4]" in kernels.definitions[0]) == doubles, kernels.definitions[0]


def test_softmax_family_over_a_million_classes_matches_float64(reductions):
    ins, out = reductions
    a = np.asarray(ins["a"], np.float64)
    m = a.max()
    logp = a - m - np.log(np.exp(a - m).sum())
    close64(out[10], logp[:8], "log_softmax over 1e6 logits")
    pairs = a.reshape(-1, 2)
    pm = pairs.max(axis=1, keepdims=True)
    lp = pairs - pm - np.log(np.exp(pairs - pm).sum(axis=1, keepdims=True))
    close64(out[11], -lp[:, 0].mean(), "cross_entropy mean over 5e5 rows")


# ====================================================================== 9: NaN through relu, maximum, minimum
NAN = float("nan")
X9 = np.array([NAN, 1.0, -1.0, 0.0, NAN, 2.0], np.float32)
Y9 = np.array([0.0, NAN, 0.5, 0.0, NAN, 2.0], np.float32)


@lt.compile
def nan_ops(x: lt.Tensor[6], y: lt.Tensor[6]):
    def loss(x, y):
        return lt.sum(lt.relu(x) + lt.maximum(x, y) * 2.0 + lt.minimum(x, y) * 3.0)

    (value), grads = lt.value_and_grad(loss, argnums=(0, 1))(x, y)
    return lt.relu(x), lt.maximum(x, y), lt.minimum(x, y), lt.maximum(x, 0.5), lt.relu(x * 2.0) + 1.0, grads


def test_relu_maximum_minimum_propagate_nan_like_numpy():
    relu, mx, mn, mx_c, fused, _ = nan_ops(X9, Y9)
    x, y = X9.astype(np.float64), Y9.astype(np.float64)
    for got, want, what in [(relu, np.maximum(x, 0.0), "relu"), (mx, np.maximum(x, y), "maximum"),
                            (mn, np.minimum(x, y), "minimum"), (mx_c, np.maximum(x, 0.5), "maximum with a constant"),
                            (fused, np.maximum(x * 2, 0) + 1, "relu in a fused loop")]:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
        np.testing.assert_array_equal(got[~np.isnan(want)], want[~np.isnan(want)], err_msg=what)


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_gradients_at_nan_match_torch():
    *_, (dx, dy) = nan_ops(X9, Y9)
    x = torch.tensor(X9, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(Y9, dtype=torch.float64, requires_grad=True)
    torch.sum(torch.relu(x) + torch.maximum(x, y) * 2.0 + torch.minimum(x, y) * 3.0).backward()
    np.testing.assert_array_equal(dx, x.grad.numpy())
    np.testing.assert_array_equal(dy, y.grad.numpy())


# ====================================================================== 10: exp underflow
X10 = np.concatenate([np.linspace(-110, 89, 4001), [-100, -87.5, -103.2, -104, -np.inf, np.inf, NAN]]).astype(np.float32)
SMALLEST_DENORMAL = 2.0**-149


@lt.compile
def exp_ops(x: lt.Tensor[X10.size], z: lt.Tensor[4]):
    return lt.exp(x), lt.log(lt.exp(x)), lt.softmax(z), lt.log_softmax(z), lt.sigmoid(x)


Z10 = np.array([0.0, -np.inf, 1.0, -200.0], np.float32)


def test_exp_underflows_to_denormals_and_zero_like_std_exp():
    e, loge, *_ = exp_ops(X10, Z10)
    x = X10.astype(np.float64)
    with np.errstate(over="ignore"):
        want = np.exp(x).astype(np.float32).astype(np.float64)  # what float32 can hold: inf past 88.72
    np.testing.assert_allclose(e, want, rtol=3e-7, atol=SMALLEST_DENORMAL, equal_nan=True)
    at = {float(v): k for k, v in enumerate(X10)}
    assert e[at[-100.0]] > 0 and abs(e[at[-100.0]] - math.exp(-100)) <= SMALLEST_DENORMAL
    assert e[at[-104.0]] == 0.0 and e[at[-np.inf]] == 0.0 and e[at[np.inf]] == np.inf
    # log(exp(-100)) is log of the denormal float32 nearest exp(-100), not -87.3
    np.testing.assert_allclose(loge[at[-100.0]], np.log(np.float64(np.float32(math.exp(-100)))), rtol=1e-6)
    normal = (e > 2.0**-126) & np.isfinite(e)
    np.testing.assert_allclose(loge[normal], x[normal], rtol=1e-6, atol=1e-6)


def test_softmax_of_minus_inf_is_exactly_zero():
    *_, sm, lsm, sig = exp_ops(X10, Z10)
    z = Z10.astype(np.float64)
    with np.errstate(over="ignore"):
        want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert sm[1] == 0.0 and lsm[1] == -np.inf
    np.testing.assert_allclose(sm, want, rtol=1e-6, atol=SMALLEST_DENORMAL)
    np.testing.assert_allclose(lsm[[0, 2, 3]], (z - z.max() - np.log(np.exp(z - z.max()).sum()))[[0, 2, 3]], rtol=1e-6)
    assert np.all(np.isfinite(sig[np.isfinite(X10)]))


# ====================================================================== 11: log_softmax at large logits
@lt.compile
def big_logits(x: lt.Tensor[4, 5], t: lt.Tensor[4, "int32"], pair: lt.Tensor[1, 2], zero: lt.Tensor[1, "int32"]):
    return lt.value_and_grad(lambda x: lt.cross_entropy(x, t))(x), lt.log_softmax(x), lt.cross_entropy(pair, zero)


def test_log_softmax_at_logits_of_1e4_matches_torch():
    rng = np.random.default_rng(11)
    x = (1e4 + rng.standard_normal((4, 5))).astype(np.float32)
    t = np.array([0, 3, 1, 4], np.int32)
    (loss, grad), logp, pair_loss = big_logits(x, t, np.array([[1e4, 1e4]], np.float32), np.zeros(1, np.int32))
    assert abs(float(pair_loss) - math.log(2)) < 1e-6
    x64 = x.astype(np.float64)
    want = x64 - x64.max(1, keepdims=True) - np.log(np.exp(x64 - x64.max(1, keepdims=True)).sum(1, keepdims=True))
    np.testing.assert_allclose(logp, want, atol=1e-6, rtol=0)
    if torch is None:
        return
    xt = torch.tensor(x64, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(xt, torch.tensor(t, dtype=torch.long))
    tl.backward()
    assert abs(float(loss) - tl.item()) < 1e-6
    np.testing.assert_allclose(grad, xt.grad.numpy(), atol=1e-6, rtol=0)


# ====================================================================== 16: numpy and Python on staged values
F3 = lt.Tensor[3]
NO_VALUE_CASES = [
    ("np.dot", lambda x: np.dot(x, x), "use lt.matmul"),
    ("np.concatenate", lambda x: np.concatenate([x, x]), "use lt.concat"),
    ("np.sum", lambda x: np.sum(x), "use lt.sum"),
    ("np.mean", lambda x: np.mean(x), "use lt.mean"),
    ("np.asarray", lambda x: np.asarray(x), "lt.stack / lt.concat"),
    ("np.sin", lambda x: np.sin(x), "lantern_stage has no such op"),
    ("np.add.reduce", lambda x: np.add.reduce(x), "use lt.sum"),
    ("np.exp out=", lambda x: np.exp(x, out=np.zeros(3, np.float32)), "call it without them"),
    ("float", lambda x: float(lt.sum(x)), "compute with lt ops"),
    ("int", lambda x: int(lt.sum(x)), "index tensors with it directly"),
    ("range", lambda x: range(lt.sum(x > 0.0)), "lt.fori_loop"),
    ("math.exp", lambda x: math.exp(x[0]), "lt.exp"),
    ("format spec", lambda x: f"{lt.sum(x):.3f}", "return it from the compiled function"),
    ("numpy()", lambda x: x.numpy(), "return it from the compiled function"),
    ("item()", lambda x: x[0].item(), "return it from the compiled function"),
    ("tolist()", lambda x: x.tolist(), "return it from the compiled function"),
    ("list index", lambda x: [1, 2, 3][lt.sum(x > 0.0)], "lt.fori_loop"),
]


@pytest.mark.parametrize("what, fn, hint", NO_VALUE_CASES, ids=[c[0] for c in NO_VALUE_CASES])
def test_numpy_and_python_on_a_staged_value_name_the_alternative_at_the_users_line(what, fn, hint):
    def model(x: F3):
        return fn(x)

    with pytest.raises(lt.StagingError) as e:
        lt.compile(model)(np.ones(3, np.float32))
    msg = str(e.value)
    assert "staged value" in msg and hint in msg, msg
    assert f"{THIS_FILE}:{fn.__code__.co_firstlineno}" in msg, msg


@lt.compile
def ufuncs(x: F3, y: lt.Tensor[3, 3]):
    c = np.arange(3, dtype=np.float32)
    assert f"{x}" == str(x) == repr(x)  # an empty format spec still prints (debugging)
    return (np.tanh(x), np.exp(x), np.sqrt(np.abs(x)), np.maximum(x, 0.0), c + x, c * x - 1.0, np.square(x),
            c @ y, np.negative(x) < c)


def test_numpy_ufuncs_on_staged_values_stage_the_lt_op():
    x = np.array([-0.5, 0.25, 2.0], np.float32)
    y = np.arange(9, dtype=np.float32).reshape(3, 3) / 10
    out = ufuncs(x, y)
    x64, c = x.astype(np.float64), np.arange(3.0)
    want = [np.tanh(x64), np.exp(x64), np.sqrt(np.abs(x64)), np.maximum(x64, 0), c + x64, c * x64 - 1, x64 ** 2,
            c @ y.astype(np.float64)]
    for k, w in enumerate(want):
        np.testing.assert_allclose(out[k], w, rtol=1e-6, atol=1e-7, err_msg=f"output {k}")
    np.testing.assert_array_equal(out[8], -x64 < c)
