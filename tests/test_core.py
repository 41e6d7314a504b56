"""The pipeline end to end: training an MLP, the grad API, what users see when
they get something wrong (bad arguments, shape errors while staging, a missing
or failing compiler), the compile cache across processes, and the generated
IR and C++."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lantern_stage as lt
from lantern_stage.paths import RUNTIME_DIR

THIS_FILE = str(Path(__file__).resolve())


def line_of(marker: str) -> int:
    """The line of this file carrying `marker` (a comment at a staged op)."""
    lines = Path(THIS_FILE).read_text().splitlines()
    hits = [i + 1 for i, ln in enumerate(lines) if ln.rstrip().endswith("# " + marker)]
    assert len(hits) == 1, marker
    return hits[0]


# ---------------------------------------------------------------- the MLP
N, D, H, C = 64, 5, 16, 3
LR, STEPS = 0.5, 40


@lt.compile
def mlp_step(x: lt.Tensor[N, D], y: lt.Tensor[N, "int32"], w1: lt.Tensor[D, H], b1: lt.Tensor[H],
             w2: lt.Tensor[H, C], b2: lt.Tensor[C]):
    def loss(p):
        h = lt.relu(x @ p["w1"] + p["b1"])
        return lt.cross_entropy(h @ p["w2"] + p["b2"], y)

    return lt.value_and_grad(loss)(dict(w1=w1, b1=b1, w2=w2, b2=b2))


def mlp_reference(x, y, p):
    """Loss and gradients of the same MLP, by hand, in float64."""
    pre = x @ p["w1"] + p["b1"]
    h = np.maximum(pre, 0.0)
    logits = h @ p["w2"] + p["b2"]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = x.shape[0]
    loss = -logp[np.arange(n), y].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    dh = dlogits @ p["w2"].T
    dpre = dh * (pre > 0)
    grads = dict(w1=x.T @ dpre, b1=dpre.sum(0), w2=h.T @ dlogits, b2=dlogits.sum(0))
    return loss, grads


def mlp_data():
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((C, D)) * 1.5
    y = rng.integers(0, C, N).astype(np.int32)
    x = (centers[y] + rng.standard_normal((N, D))).astype(np.float32)
    params = dict(
        w1=(rng.standard_normal((D, H)) * 0.5).astype(np.float32),
        b1=np.zeros(H, np.float32),
        w2=(rng.standard_normal((H, C)) * 0.5).astype(np.float32),
        b2=np.zeros(C, np.float32),
    )
    return x, y, params


def test_mlp_training_matches_numpy_float64_step_by_step():
    x, y, params = mlp_data()
    ref = {k: v.astype(np.float64) for k, v in params.items()}
    losses = []
    for step in range(STEPS):
        loss, grads = mlp_step(x, y, **params)
        ref_loss, ref_grads = mlp_reference(x.astype(np.float64), y, ref)
        assert isinstance(grads, dict) and set(grads) == set(params)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, err_msg=f"loss at step {step}")
        for k in params:
            assert grads[k].dtype == np.float32 and grads[k].shape == params[k].shape
            scale = np.abs(ref_grads[k]).max()
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-4 * scale,
                                       err_msg=f"gradient of {k} at step {step}")
        # a Python loop over the compiled step: plain SGD, float32 here, float64 there
        for k in params:
            params[k] = params[k] - np.float32(LR) * grads[k]
            ref[k] = ref[k] - LR * ref_grads[k]
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(np.isfinite(losses))


def test_ir_and_cpp_source_are_printable_and_use_blas_and_the_arena():
    ir = mlp_step.ir
    assert ir.startswith("def mlp_step(")
    assert "gemm(" in ir and "scope value_and_grad" in ir
    src = mlp_step.cpp_source
    assert isinstance(src, str) and 'extern "C"' in src
    # matrix products go through lt::gemm, which calls OpenBLAS's scipy_cblas_sgemm
    # (products of few rows, on AVX2 CPUs without AVX-512, the small_rows kernel)
    assert src.count("lt::gemm(") >= 4  # two forward products, three backward (dx is not needed)
    assert re.search(r"inline void gemm\(bool ta, bool tb,[^)]*\)\s*\{(?:(?!\n\}).)*scipy_cblas_sgemm\(",
                     (RUNTIME_DIR / "blas.h").read_text(), re.DOTALL)
    # every buffer comes from the arena: no allocation per op in the generated code
    code = re.sub(r"//[^\n]*", "", src)
    assert "arena.alloc" in code
    for forbidden in (r"\bmalloc\b", r"\bcalloc\b", r"\brealloc\b", r"\bnew\b", r"\bfree\b",
                      r"std::vector", r"std::function", r"make_unique", r"make_shared"):
        assert not re.search(forbidden, code), f"generated C++ allocates: {forbidden}"


# ---------------------------------------------------------------- grad API
def nested_loss(p, s):
    w, (b, [c]) = p["w"], p["pair"]
    return lt.sum(lt.tanh(w * (b @ c))) * s


def nested_loss_np(p, s):
    w, (b, [c]) = p["w"], p["pair"]
    return float(np.sum(np.tanh(w * (b @ c))) * s)


@lt.compile
def grad_forms(w: lt.Tensor[3], b: lt.Tensor[3, 2], c: lt.Tensor[2], s: lt.Tensor[()]):
    p = {"w": w, "pair": (b, [c])}
    return {
        "grad": lt.grad(nested_loss)(p, s),
        "grad_argnums_1": lt.grad(nested_loss, argnums=1)(p, s),
        "grad_tuple_1": lt.grad(nested_loss, argnums=(1,))(p, s),
        "value_and_grad": lt.value_and_grad(nested_loss, argnums=(0, 1))(p, s),
    }


def _fd(fn, x, eps=1e-6):
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = fn(x)
        x[idx] = old - eps
        down = fn(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


def test_grad_and_value_and_grad_follow_jax_on_nested_arguments():
    rng = np.random.default_rng(3)
    w, b, c = (rng.standard_normal(s).astype(np.float32) for s in [(3,), (3, 2), (2,)])
    s = 0.75  # a Python float for a 0-d input
    out = grad_forms(w, b, c, s)

    p64 = {"w": w.astype(np.float64), "pair": (b.astype(np.float64), [c.astype(np.float64)])}
    want = {
        "w": _fd(lambda v: nested_loss_np({**p64, "w": v}, s), p64["w"]),
        "b": _fd(lambda v: nested_loss_np({**p64, "pair": (v, p64["pair"][1])}, s), p64["pair"][0]),
        "c": _fd(lambda v: nested_loss_np({**p64, "pair": (p64["pair"][0], [v])}, s), p64["pair"][1][0]),
        "s": _fd(lambda v: nested_loss_np(p64, v), np.float64(s)),
    }

    def check_tree(g):
        assert isinstance(g, dict) and set(g) == {"w", "pair"}
        assert isinstance(g["pair"], tuple) and isinstance(g["pair"][1], list)
        for got, key in [(g["w"], "w"), (g["pair"][0], "b"), (g["pair"][1][0], "c")]:
            np.testing.assert_allclose(got, want[key], rtol=1e-4, atol=1e-5, err_msg=key)

    check_tree(out["grad"])
    assert out["grad_argnums_1"].shape == ()
    np.testing.assert_allclose(out["grad_argnums_1"], want["s"], rtol=1e-4, atol=1e-5)
    assert isinstance(out["grad_tuple_1"], tuple) and len(out["grad_tuple_1"]) == 1
    np.testing.assert_allclose(out["grad_tuple_1"][0], want["s"], rtol=1e-4, atol=1e-5)
    value, (gp, gs) = out["value_and_grad"]
    np.testing.assert_allclose(value, nested_loss_np(p64, s), rtol=1e-4, atol=1e-5)
    check_tree(gp)
    np.testing.assert_allclose(gs, want["s"], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- bad arguments
@lt.compile
def checked(x: lt.Tensor[2, 3], t: lt.Tensor[2, "int32"], s: lt.Tensor[()], k: lt.Tensor["int32"]):
    return {"scaled": x * s + k, "loss": lt.cross_entropy(x, t)}


def good_args():
    return dict(x=np.ones((2, 3), np.float32), t=np.array([0, 2], np.int32), s=2.0, k=1)


def test_good_arguments_positional_and_keyword():
    a = good_args()
    out = checked(a["x"], a["t"], a["s"], a["k"])
    assert set(out) == {"scaled", "loss"}
    np.testing.assert_allclose(out["scaled"], np.full((2, 3), 3.0))
    np.testing.assert_allclose(out["loss"], np.log(3.0), rtol=1e-6)
    out2 = checked(**a)
    np.testing.assert_array_equal(out2["scaled"], out["scaled"])
    np.testing.assert_array_equal(checked(a["x"], a["t"], np.float32(2.0), np.int32(1))["scaled"], out["scaled"])


@pytest.mark.parametrize(
    "change, exc, words",
    [
        (dict(x=np.ones((2, 3), np.float64)), TypeError, ["'x'", "float32", "float64"]),
        (dict(x=np.ones((2, 3), np.int32)), TypeError, ["'x'", "float32", "int32"]),
        (dict(t=np.array([0, 2], np.int64)), TypeError, ["'t'", "int32", "int64"]),
        (dict(t=np.array([0.0, 2.0], np.float32)), TypeError, ["'t'", "int32", "float32"]),
        (dict(x=np.ones((3, 2), np.float32)), ValueError, ["'x'", "(2, 3)", "(3, 2)"]),
        (dict(x=np.ones(6, np.float32)), ValueError, ["'x'", "(2, 3)", "(6,)"]),
        (dict(t=np.array([[0, 2]], np.int32)), ValueError, ["'t'", "(2,)", "(1, 2)"]),
        (dict(s=np.ones(1, np.float32)), ValueError, ["'s'", "()", "(1,)"]),
        (dict(x=np.ones((3, 2), np.float32).T), ValueError, ["'x'", "contiguous"]),
        (dict(x=np.ones((2, 6), np.float32)[:, ::2]), ValueError, ["'x'", "contiguous"]),
        (dict(x=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), TypeError, ["'x'", "numpy array", "list"]),
        (dict(x=None), TypeError, ["'x'", "NoneType"]),
        (dict(s="2.0"), TypeError, ["'s'", "str"]),
        (dict(k=1.5), TypeError, ["'k'", "int", "float"]),
        (dict(k=2**40), ValueError, ["'k'", "int32"]),
    ],
    ids=lambda v: None if not isinstance(v, dict) else ",".join(v),
)
def test_bad_argument_raises_naming_it(change, exc, words):
    args = {**good_args(), **change}
    with pytest.raises(exc) as info:
        checked(**args)
    message = str(info.value)
    assert "checked()" in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


ARG_SPECS = {"x": ((2, 3), np.float32), "t": ((2,), np.int32), "s": ((), np.float32), "k": ((), np.int32)}


@settings(max_examples=150, deadline=None)
@given(
    which=st.sampled_from(sorted(ARG_SPECS)),
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_]),
    shape=st.lists(st.integers(0, 4), max_size=3).map(tuple),
    layout=st.sampled_from(["c", "transposed", "strided"]),
)
def test_any_array_argument_is_accepted_or_rejected_cleanly(which, dtype, shape, layout):
    """Never a crash: an array either matches exactly and is used, or raises
    TypeError / ValueError naming the argument."""
    array = np.zeros(shape, dtype)
    if layout == "transposed":
        array = array.T
    elif layout == "strided" and array.ndim:
        array = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)[..., ::2]
    args = {**good_args(), which: array}
    want_shape, want_dtype = ARG_SPECS[which]
    if array.shape == want_shape and array.dtype == want_dtype and array.flags.c_contiguous:
        out = checked(**args)
        assert out["scaled"].shape == (2, 3) and np.isfinite(out["loss"])
    else:
        with pytest.raises((TypeError, ValueError)) as info:
            checked(**args)
        assert f"argument '{which}'" in str(info.value)


def test_wrong_number_of_arguments():
    a = good_args()
    with pytest.raises(TypeError, match=r"takes 4 arguments .*x: float32\[2, 3\].*got 5"):
        checked(a["x"], a["t"], a["s"], a["k"], a["k"])
    with pytest.raises(TypeError, match=r"missing argument\(s\) 's', 'k'"):
        checked(a["x"], a["t"])
    with pytest.raises(TypeError, match=r"unexpected argument 'z'"):
        checked(**a, z=1)
    with pytest.raises(TypeError, match=r"argument 'x' twice"):
        checked(a["x"], a["t"], a["s"], a["k"], x=a["x"])


def test_captured_numpy_arrays_are_read_in_place_and_checked():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)

    @lt.compile
    def f(x: lt.Tensor[4]):
        return w @ x, w[1] + x  # numpy on the left defers to the staged value

    x = np.ones(4, np.float32)
    np.testing.assert_allclose(f(x)[0], w @ x)
    w[:] = 1.0  # captured by reference: the compiled code sees the change
    np.testing.assert_allclose(f(x)[0], np.full(3, 4.0))
    np.testing.assert_allclose(f(x)[1], np.full(4, 2.0))

    @lt.compile
    def g(x: lt.Tensor[3]):
        return w[:, 1] * x  # a strided numpy view, captured as it is

    with pytest.raises(ValueError, match=r"g\(\): a captured array float32\[3\] .* not C-contiguous"):
        g(np.ones(3, np.float32))


def test_out_of_range_class_index_is_an_index_error_not_a_crash():
    with pytest.raises(IndexError, match=r"nll_loss target: index 3 out of range \[0, 3\)"):
        checked(**{**good_args(), "t": np.array([0, 3], np.int32)})
    with pytest.raises(IndexError, match="index -1"):
        checked(**{**good_args(), "t": np.array([-1, 0], np.int32)})
    assert checked(**good_args())["loss"].shape == ()  # still usable afterwards


# ---------------------------------------------------------------- staging errors
def test_shape_mismatch_names_op_and_user_line():
    def f(x: lt.Tensor[3, 4], y: lt.Tensor[5]):
        return x + y  # staging error: add

    compiled = lt.compile(f)
    with pytest.raises(lt.StagingError) as info:
        compiled.ir
    message = str(info.value)
    assert message.startswith("add:")
    assert "(3, 4)" in message and "(5,)" in message and "broadcast" in message
    assert f"{THIS_FILE}:{line_of('staging error: add')}" in message
    with pytest.raises(lt.StagingError, match="add:"):  # calling reports the same
        compiled(np.zeros((3, 4), np.float32), np.zeros(5, np.float32))


def test_matmul_mismatch_names_op_and_user_line():
    @lt.compile
    def f(x: lt.Tensor[3, 4], w: lt.Tensor[5, 2]):
        h = lt.tanh(x)
        return h @ w  # staging error: matmul

    with pytest.raises(lt.StagingError) as info:
        f.ir
    message = str(info.value)
    assert message.startswith("matmul:") and "inner dimensions" in message
    assert f"{THIS_FILE}:{line_of('staging error: matmul')}" in message


def test_error_inside_a_library_composition_points_at_the_user_line():
    @lt.compile
    def f(a: lt.Tensor[3, 4], b: lt.Tensor[4, 3]):
        return lt.mse_loss(a, b)  # staging error: mse_loss

    with pytest.raises(lt.StagingError) as info:
        f.ir
    message = str(info.value)
    assert message.startswith("mse_loss: sub:") and "(3, 4), (4, 3)" in message
    assert f"{THIS_FILE}:{line_of('staging error: mse_loss')}" in message

    @lt.compile
    def g(logits: lt.Tensor[3, 4], target: lt.Tensor[4, "int32"]):
        return lt.cross_entropy(logits, target)  # staging error: cross_entropy

    with pytest.raises(lt.StagingError) as info:
        g.ir
    message = str(info.value)
    assert message.startswith("cross_entropy: nll_loss:") and "float32[3,4] and int32[4]" in message
    assert f"{THIS_FILE}:{line_of('staging error: cross_entropy')}" in message


def test_other_staging_errors_are_clear():
    @lt.compile
    def bad_axis(x: lt.Tensor[3, 4]):
        return lt.sum(x, axis=2)  # staging error: axis

    with pytest.raises(lt.StagingError, match="^sum: axis 2 out of range") as info:
        bad_axis.ir
    assert f"{THIS_FILE}:{line_of('staging error: axis')}" in str(info.value)

    @lt.compile
    def bad_index(x: lt.Tensor[3, 4]):
        return x[3]

    with pytest.raises(lt.StagingError, match="index 3 out of range"):
        bad_index.ir

    @lt.compile
    def zero_step(x: lt.Tensor[3, 4]):
        return x[::0]

    with pytest.raises(lt.StagingError, match="slice step cannot be zero"):
        zero_step.ir

    @lt.compile
    def bool_index(x: lt.Tensor[3, 4]):
        return x[True]

    with pytest.raises(lt.StagingError, match="unsupported index True"):
        bool_index.ir

    @lt.compile
    def bad_reshape(x: lt.Tensor[3, 4]):
        return x.reshape(5, -1)

    with pytest.raises(lt.StagingError, match="reshape"):
        bad_reshape.ir

    @lt.compile
    def max_of_nothing(x: lt.Tensor[3, 4]):
        return lt.max(x[1:1], axis=0)

    with pytest.raises(lt.StagingError, match="max of an empty axis"):
        max_of_nothing.ir

    @lt.compile
    def not_scalar_loss(x: lt.Tensor[3]):
        return lt.grad(lambda v: v * 2)(x)

    with pytest.raises(lt.StagingError, match="scalar"):
        not_scalar_loss.ir

    @lt.compile
    def python_if_on_staged(x: lt.Tensor[3]):
        return x if lt.sum(x) > 0 else -x

    with pytest.raises(lt.StagingError, match="truth value"):
        python_if_on_staged.ir


def test_ir_before_the_first_call_of_an_unannotated_function_is_a_type_error():
    def f(x: lt.Tensor[3], y):
        return x

    with pytest.raises(TypeError, match="'y' have no annotation.*call it first, or annotate"):
        lt.compile(f).ir


# ---------------------------------------------------------------- the compiler
def test_missing_compiler_is_a_compile_error(fresh_cache, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")

    @lt.compile
    def f(x: lt.Tensor[3]):
        return lt.exp(x) * 3.0

    assert "exp" in f.ir  # staging needs no compiler
    with pytest.raises(lt.CompileError) as info:
        f(np.zeros(3, np.float32))
    message = str(info.value)
    assert "/nonexistent/g++" in message and "CXX" in message and "g++" in message


def test_compiler_failure_is_a_compile_error_with_the_kept_source(fresh_cache, monkeypatch):
    compile_module = sys.modules["lantern_stage.compile"]
    render = compile_module.render_module
    monkeypatch.setattr(compile_module, "render_module",
                        lambda programs: render(programs) + "\n#error injected by test_core\n")

    @lt.compile
    def f(x: lt.Tensor[3]):
        return lt.exp(x) * 4.0

    with pytest.raises(lt.CompileError) as info:
        f(np.zeros(3, np.float32))
    message = str(info.value)
    assert "injected by test_core" in message  # the compiler's own message
    kept = re.search(r"source kept at (\S+?)\)", message)
    assert kept, message
    source = Path(kept.group(1))
    assert source.is_file() and str(source).startswith(str(fresh_cache))
    assert "#error injected by test_core" in source.read_text()
    assert not list(fresh_cache.rglob("*.so")), "a failed build must leave no library behind"


def test_unloadable_cached_library_says_how_to_fix_it(fresh_cache):
    from lantern_stage.build import build, file_digest

    @lt.compile
    def f(x: lt.Tensor[3]):
        return lt.exp(x) * 5.0

    so = build(f.cpp_source)
    so.write_bytes(b"not a shared library")
    # with its recorded hash updated too (else it is rebuilt: tests/test_hardening.py)
    (so.parent / "module.so.sha256").write_text(file_digest(so))
    with pytest.raises(ImportError, match="cannot load compiled module .*Delete it .*LANTERN_CACHE_DIR"):
        f(np.zeros(3, np.float32))


def test_arena_exhaustion_is_an_exception():
    @lt.compile(arena_bytes=4096)
    def f(x: lt.Tensor[64, 64]):
        return lt.grad(lambda v: lt.sum(lt.tanh(v @ v)))(x)

    with pytest.raises(lt.ArenaExhausted, match="arena exhausted"):
        f(np.ones((64, 64), np.float32))
    assert isinstance(lt.ArenaExhausted("x"), MemoryError)


CACHE_SCRIPT = """
import numpy as np
import lantern_stage as lt

@lt.compile
def f(x: lt.Tensor[4]):
    return lt.tanh(x) * 2.0 + lt.sum(x)

print(repr(f(np.arange(4, dtype=np.float32)).tolist()))
"""


def test_second_compile_in_a_new_process_uses_the_cache(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    log = tmp_path / "compiler.log"
    wrapper = tmp_path / "cxx-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{gxx}" "$@"\n')
    wrapper.chmod(0o755)
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(CACHE_SCRIPT))
    env = {**__import__("os").environ, "LANTERN_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(wrapper)}
    env.pop("LANTERN_CACHE", None)
    outputs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    x = np.arange(4, dtype=np.float64)
    np.testing.assert_allclose(eval(outputs[0]), np.tanh(x) * 2 + x.sum(), rtol=1e-6)
    invocations = log.read_text().splitlines()
    assert len(invocations) == 1, invocations
