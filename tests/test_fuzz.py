"""Robustness of a compiled package (`lantern compile`): random dtypes, shapes,
strides, out-of-range and negative indices, empty arrays, NaNs and non-arrays
thrown at its entry points give a Python exception (TypeError, ValueError,
IndexError) or the correct result -- never a crash, and a rejected call leaves
the state untouched.  Arithmetic on NaN, infinities, underflowing exponents and
integer divisors of 0 or INT32_MIN // -1 gives numpy's numbers or
ZeroDivisionError / OverflowError, never SIGFPE.

The property test runs in a subprocess (this file again, with
LANTERN_FUZZ_PACKAGE set), so a segfault or abort fails the outer test
instead of killing pytest.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ENV = "LANTERN_FUZZ_PACKAGE"
EXAMPLES = int(os.environ.get("LANTERN_FUZZ_EXAMPLES", "250"))


def lantern_command() -> list[str]:
    script = Path(sys.executable).parent / "lantern"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lantern_stage.cli"]


@pytest.fixture(scope="module")
def fuzz_package(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz")
    proc = subprocess.run(lantern_command() + ["compile", str(ROOT / "tests" / "fuzz_model.py"), "-o", str(out),
                                               "--name", "fuzzpkg"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def test_random_arguments_never_crash_a_compiled_package(fuzz_package):
    env = dict(os.environ, **{PACKAGE_ENV: str(fuzz_package)})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider", "-k", "inner"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    what = f"crashed with signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
    assert proc.returncode == 0, f"the fuzzing process {what}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert "5 passed" in proc.stdout, proc.stdout[-2000:]


# ====================================================================== inside the subprocess
inner = pytest.mark.skipif(PACKAGE_ENV not in os.environ, reason="runs in the subprocess of the test above")
fuzz_settings = settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REJECTED = (TypeError, ValueError, IndexError)
TABLE = (np.arange(24, dtype=np.float32).reshape(6, 4) - 12) / 10  # as in fuzz_model.py


def package():
    if os.environ[PACKAGE_ENV] not in sys.path:
        sys.path.insert(0, os.environ[PACKAGE_ENV])
    import fuzzpkg

    return fuzzpkg


FLOATS = st.floats(-100, 100, width=32) | st.just(float("nan"))
DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.uint8, np.uint32, np.bool_,
          np.complex64]


def valid_array(shape, dtype, bound=None):
    if dtype == "float32":
        return hnp.arrays(np.float32, shape, elements=FLOATS)
    if dtype == "bool":
        return hnp.arrays(np.bool_, shape)
    return hnp.arrays(np.int32, shape, elements=st.integers(0, (bound or 101) - 1))


@st.composite
def argument(draw, shape, dtype, bound=None):
    """A valid argument of this shape/dtype (index values in [0, bound)), or a
    perturbation of one."""
    a = draw(valid_array(shape, dtype, bound))
    kind = draw(st.sampled_from(["valid"] * 4 + ["range", "dtype", "shape", "strided", "object", "readonly",
                                                 "scalar", "masked", "bytes", "unreal", "huge"]))
    if kind == "range" and dtype == "int32" and a.size:
        a = a.copy()
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(
            st.sampled_from([-1, -2**31, 2**31 - 1, (bound or 101), (bound or 101) + 7]))
    elif kind == "dtype":
        with np.errstate(invalid="ignore"):  # NaN to int
            a = a.astype(draw(st.sampled_from(DTYPES)))
    elif kind == "shape":
        new = tuple(draw(st.lists(st.integers(0, 7), max_size=3)))
        a = draw(hnp.arrays(np.dtype(dtype if dtype != "bool" else np.bool_), new))
    elif kind == "strided" and a.ndim:
        wide = np.repeat(a[..., None], 2, axis=-1)
        a = wide[..., 0] if draw(st.booleans()) or a.ndim < 2 else np.asfortranarray(a)
    elif kind == "object":
        a = draw(st.sampled_from([None, "text", a.tolist(), 1.5, 2**40, object()]))
    elif kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
    elif kind == "scalar":
        a = draw(st.sampled_from([int, float, np.int64, np.float32, bool]))(
            draw(st.integers(-3, (bound or 5) + 3)))
    elif kind == "masked":
        a = np.ma.masked_array(a, mask=draw(hnp.arrays(np.bool_, a.shape)))
    elif kind == "bytes" and dtype == "bool":  # a uint8 buffer viewed as bool: bytes other than 0 and 1
        a = draw(hnp.arrays(np.uint8, shape)).view(np.bool_)
    elif kind == "unreal":  # numbers a scalar must not silently lose part of
        a = draw(st.sampled_from([np.str_("1.5"), "2", 1 + 2j, np.complex64(1 - 1j), b"1"]))
    elif kind == "huge":  # beyond float32 (inf if converted), int32, or float64
        a = draw(st.sampled_from([10**40, -10**40, 1e300, np.float64(-1e300), 10**400, 2**31, -2**31 - 1,
                                  float("inf"), 3.4e38]))
    return a


FLOAT32_MAX = float(np.finfo(np.float32).max)


def fits_float32(value) -> bool:
    try:
        v = abs(float(value))
    except OverflowError:
        return False
    return v <= FLOAT32_MAX or v == float("inf") or v != v


def acceptable(value, shape, dtype, bound=None, low=0) -> bool:
    """Whether the loader should accept it (indices in [low, bound) included;
    low = -bound for an index that counts from the end when negative)."""
    if isinstance(value, np.ma.MaskedArray):
        ok = False
    elif isinstance(value, np.ndarray):
        ok = value.dtype == np.dtype(dtype) and value.shape == tuple(shape) and value.flags.c_contiguous
    elif shape == () and dtype == "int32" and isinstance(value, (bool, int, np.integer)):
        ok = -2**31 <= int(value) < 2**31
    elif shape == () and dtype == "float32" and isinstance(value, (bool, int, float, np.floating, np.integer)):
        ok = fits_float32(value)
    else:
        ok = False
    if ok and bound is not None:
        v = np.asarray(value)
        ok = bool(((v >= low) & (v < bound)).all())
    return ok


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=2e-5, atol=1e-5, equal_nan=True)


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


@inner
@fuzz_settings
@given(x=argument((3, 4), "float32"), idx=argument((5,), "int32", 6), k=argument((), "int32", 3),
       labels=argument((3,), "int32", 4), mask=argument((4,), "bool"))
def test_inner_mix(x, idx, k, labels, mask):
    pkg = package()
    ok = (acceptable(x, (3, 4), "float32") and acceptable(idx, (5,), "int32", 6) and acceptable(k, (), "int32", 3, low=-3)
          and acceptable(labels, (3,), "int32", 4) and acceptable(mask, (4,), "bool"))
    try:
        out, colsum = pkg.mix(x, idx, k, labels, mask)
    except REJECTED as e:
        event(f"rejected: {type(e).__name__}")
        assert not ok, "a valid call was rejected"
        return
    event("accepted")
    assert ok, "an invalid call was accepted"
    x64 = np.asarray(x, np.float64)
    nll = -log_softmax(x64)[np.arange(3), labels].mean()
    r = np.where(mask.view(np.uint8) != 0, x64[int(k)], 0.0)  # any nonzero byte is True, as numpy reads it
    close(out, TABLE[idx] * r + nll)
    close(colsum, x64.sum(axis=0))


@inner
@fuzz_settings
@given(a=st.one_of(hnp.arrays(np.int32, st.integers(0, 6)), argument((3,), "int32")),
       i=st.one_of(st.integers(-3, 8), argument((), "int32")), v=argument((2, 3), "float32"))
def test_inner_pick(a, i, v):
    pkg = package()
    ok = (isinstance(a, np.ndarray) and not isinstance(a, np.ma.MaskedArray) and a.dtype == np.int32
          and a.ndim == 1 and a.flags.c_contiguous and acceptable(i, (), "int32") and acceptable(v, (2, 3), "float32"))
    in_range = ok and -len(a) <= int(i) < len(a)  # a negative index counts from the end
    try:
        out = pkg.pick(a, i, v)
    except REJECTED as e:
        event(f"rejected: {type(e).__name__}")
        assert not in_range, "a valid call was rejected"
        return
    event("accepted")
    assert in_range, "an invalid call was accepted"
    close(out, np.asarray(v, np.float64) * float(a[int(i)]))


@inner
@fuzz_settings
@given(x=argument((2, 4), "float32"), y=argument((2,), "int32", 3))
def test_inner_train_step_updates_state_only_when_it_runs(x, y):
    pkg = package()
    pkg.reset()
    before = {k: a.copy() for k, a in pkg.state_dict().items()}
    ok = acceptable(x, (2, 4), "float32") and acceptable(y, (2,), "int32", 3)
    try:
        loss = pkg.train(x, y)
    except REJECTED as e:
        event(f"rejected: {type(e).__name__}")
        assert not ok, "a valid call was rejected"
        for k, a in pkg.state_dict().items():
            np.testing.assert_array_equal(a, before[k], err_msg=f"{k} changed by a rejected call")
        return
    event("accepted")
    assert ok, "an invalid call was accepted"
    assert isinstance(loss, float)
    w, b = before["model.weight"].astype(np.float64), before["model.bias"].astype(np.float64)
    logits = np.asarray(x, np.float64) @ w.T + b
    close(loss, -log_softmax(logits)[np.arange(2), y].mean())


@inner
@fuzz_settings
@given(s=st.one_of(argument((), "float32"), st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                   st.complex_numbers()),
       x=argument((3,), "float32"))
def test_inner_scale(s, x):
    pkg = package()
    ok = acceptable(s, (), "float32") and acceptable(x, (3,), "float32")
    try:
        out = pkg.scale(s, x)
    except REJECTED as e:
        event(f"rejected: {type(e).__name__}")
        assert not ok, "a valid call was rejected"
        message = str(e)
        assert "argument 's'" in message or "argument 'x'" in message, message
        return
    event("accepted")
    assert ok, "an invalid call was accepted"
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.float32(s) * np.asarray(x, np.float32)  # float32 arithmetic, as compiled
    np.testing.assert_array_equal(out, expected)


EXTREME_FLOATS = st.sampled_from([float("nan"), float("inf"), -float("inf"), -100.0, -104.0, -87.5, 88.8, 0.0, -0.0,
                                  1e-40]) | st.floats(-120, 90, width=32)
EXTREME_INTS = st.sampled_from([0, -1, 1, -2**31, 2**31 - 1, 7, -7]) | st.integers(-2**31, 2**31 - 1)


@inner
@fuzz_settings
@given(x=hnp.arrays(np.float32, 4, elements=EXTREME_FLOATS), y=hnp.arrays(np.float32, 4, elements=EXTREME_FLOATS),
       a=hnp.arrays(np.int32, 4, elements=EXTREME_INTS), b=hnp.arrays(np.int32, 4, elements=EXTREME_INTS))
def test_inner_arith_matches_numpy_or_raises_arithmetic_errors(x, y, a, b):
    pkg = package()
    zero = bool((b == 0).any())
    overflow = bool(((a == -2**31) & (b == -1)).any())
    try:
        relu, mx, mn, e, q, r = pkg.arith(x, y, a, b)
    except (ZeroDivisionError, OverflowError) as err:
        event(f"raised {type(err).__name__}")
        allowed = ([ZeroDivisionError] if zero else []) + ([OverflowError] if overflow else [])
        assert type(err) in allowed, f"{type(err).__name__} for a={a}, b={b}: {err}"
        return
    assert not zero and not overflow, f"a={a} // b={b} did not raise"
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    for got, want in [(relu, np.maximum(x64, 0.0)), (mx, np.maximum(x64, y64)), (mn, np.minimum(x64, y64))]:
        np.testing.assert_array_equal(got, want)  # NaN where numpy has NaN
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(e, np.exp(x64).astype(np.float32), rtol=3e-7, atol=2.0**-149, equal_nan=True)
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    np.testing.assert_array_equal(q, a64 // b64)
    np.testing.assert_array_equal(r, a64 % b64)
