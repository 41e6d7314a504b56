"""Issue 10's runtime, build, cache, checkpoint and boundary classes: what a
user, a data file or a killed process can do to a compiled module, each a
clear Python exception (or a correct result), never a crash, a hang or a
silently wrong number.  Behaviours that could crash the interpreter on a
regression run in a subprocess."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import lantern_stage as lt
from lantern_stage import build as build_mod
from lantern_stage import nn

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "hardening_model.py"


def lantern_command() -> list[str]:
    script = Path(sys.executable).parent / "lantern"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lantern_stage.cli"]


def python(code: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """tests/hardening_model.py compiled once: OUT holding OUT/hpkg."""
    out = tmp_path_factory.mktemp("hardening")
    ok(subprocess.run(lantern_command() + ["compile", str(MODEL), "-o", str(out), "--name", "hpkg"],
                      capture_output=True, text=True, timeout=600))
    return out


def copy_package(package: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(package / "hpkg", tmp_path / "hpkg")
    return tmp_path


# ---------------------------------------------------------------- 3. damaged libraries
def test_damaged_cached_library_is_rebuilt_saying_so_once(fresh_cache):
    script = """
        import warnings
        import numpy as np
        import lantern_stage as lt

        def f(x: lt.Tensor[3]):
            return lt.exp(x) * 6.0

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(lt.compile(f)(np.zeros(3, np.float32)).tolist())
            print(lt.compile(f)(np.ones(3, np.float32)).tolist())  # a second load: no second rebuild
        print([str(w.message) for w in caught])
    """
    env = {**os.environ, "LANTERN_CACHE_DIR": str(fresh_cache)}
    ok(python(script, env=env))
    [so] = fresh_cache.rglob("module.so")
    good = so.read_bytes()
    for damage in (good[:len(good) // 3], good[:4096] + bytes(len(good) - 4096)):  # truncated; code zeroed
        so.write_bytes(damage)
        lines = ok(python(script, env=env)).stdout.splitlines()
        assert lines[0] == "[6.0, 6.0, 6.0]", lines
        np.testing.assert_allclose(eval(lines[1]), np.full(3, 6 * np.e), rtol=1e-6)
        messages = eval(lines[2])
        assert len(messages) == 1 and "is damaged" in messages[0] and "rebuilding it" in messages[0], messages
        assert build_mod.library_problem(so) is None


@pytest.mark.parametrize("damage", ["truncate", "zero"])
def test_damaged_package_library_is_an_import_error_saying_how_to_rebuild(package, tmp_path, damage):
    out = copy_package(package, tmp_path)
    so = out / "hpkg" / "module.so"
    data = so.read_bytes()
    so.write_bytes(data[:len(data) // 2] if damage == "truncate" else data[:4096] + bytes(len(data) - 4096))
    proc = python(f"import sys; sys.path.insert(0, {str(out)!r}); import hpkg")
    assert proc.returncode == 1, proc.stderr  # an exception, not a signal
    assert "ImportError" in proc.stderr and "damaged" in proc.stderr and "lantern compile" in proc.stderr, proc.stderr


def test_corrupt_package_manifest_is_an_import_error_saying_to_rebuild(package, tmp_path):
    out = copy_package(package, tmp_path)
    manifest = out / "hpkg" / "manifest.json"
    text = manifest.read_text()
    for broken in (text[:len(text) // 2], json.dumps({"entries": []}), "[1, 2]"):
        manifest.write_text(broken)
        proc = python(f"import sys; sys.path.insert(0, {str(out)!r}); import hpkg")
        assert proc.returncode == 1, proc.stderr
        assert "ImportError" in proc.stderr and "manifest.json" in proc.stderr and "rebuild" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- 4. captured arrays changed in place
def test_captured_arrays_resized_reshaped_or_retyped_in_place_are_rejected():
    w = np.arange(12, dtype=np.float32).reshape(3, 4).copy()  # owns its data: resizable

    @lt.compile
    def f(x: lt.Tensor[4]):
        return w @ x

    x = np.ones(4, np.float32)
    np.testing.assert_allclose(f(x), w.sum(1))
    w.shape = (4, 3)
    with pytest.raises(ValueError, match=r"f\(\): a captured array was staged as float32\[3, 4\] but is now float32\[4, 3\]"):
        f(x)
    w.shape = (3, 4)
    w.dtype = np.int32
    with pytest.raises(ValueError, match=r"staged as float32\[3, 4\] but is now int32\[3, 4\]"):
        f(x)
    w.dtype = np.float32
    w.resize((2, 2), refcheck=False)
    with pytest.raises(ValueError, match=r"but is now float32\[2, 2\]"):
        f(x)
    w.resize((3, 4), refcheck=False)  # back to its shape: new memory, read from there
    w[:] = 1.0
    np.testing.assert_allclose(f(x), np.full(3, 4.0))
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        f(x)
    w.flags.writeable = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2.4 deprecates it; it still works
        w.strides = (4, 12)  # a transposed layout of the same buffer
    with pytest.raises(ValueError, match="not C-contiguous"):
        f(x)


def test_resized_parameter_is_rejected_by_a_training_step():
    lt.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = lt.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(model, x: lt.Tensor[4, 3]):
        return lt.sum(model(x))

    step = lt.train_step(model, loss_fn, opt)
    x = np.ones((4, 3), np.float32)
    step(x)
    model.weight.data.resize((1, 2), refcheck=False)
    with pytest.raises(ValueError, match=r"weight was staged as float32\[2, 3\] but is now float32\[1, 2\]"):
        step(x)


# ---------------------------------------------------------------- 5. Ctrl-C
SIGINT_SCRIPT = """
    import os, signal, sys, threading, time
    import numpy as np
    sys.path.insert(0, {out!r})
    import hpkg

    def interrupt_after(seconds):
        threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()

    cyclic = np.array([1, 2, 0], np.int32)
    for name, call in [("walk", lambda: hpkg.walk(cyclic, 0)), ("fan", lambda: hpkg.fan(62))]:
        interrupt_after(0.3)
        start = time.perf_counter()
        try:
            call()
            print(name, "returned")
        except KeyboardInterrupt as e:
            print(name, "interrupted", str(e), f"{{time.perf_counter() - start - 0.3:.3f}}")
    print("after", int(hpkg.walk(np.array([1, 2, -1], np.int32), 0)), float(hpkg.fan(10)))
    a = np.full((600, 600), 0.01, np.float32)
    try:  # a Ctrl-C during straight-line code is Python's, after the call: not lost
        interrupt_after(0.01)
        for _ in range(100):
            hpkg.big(a)
        time.sleep(5)
        print("big", "not interrupted")
    except KeyboardInterrupt as e:
        print("big", "interrupted")
    interrupt_after(0.1)
    try:
        time.sleep(30)
        print("python", "not interrupted")
    except KeyboardInterrupt:
        print("python", "interrupted")
"""


def test_sigint_stops_a_compiled_loop_and_recursion_and_the_module_stays_usable(package):
    proc = ok(python(SIGINT_SCRIPT.format(out=str(package)), timeout=60))
    lines = [ln.split() for ln in proc.stdout.splitlines()]
    assert lines[0][:3] == ["walk", "interrupted", "walk:"], proc.stdout  # a while_loop back-edge
    assert lines[1][:3] == ["fan", "interrupted", "fan:"], proc.stdout  # staged-function entries
    assert lines[2] == ["after", "3", "1024.0"], proc.stdout
    assert lines[3] == ["big", "interrupted"], proc.stdout
    assert lines[4] == ["python", "interrupted"], proc.stdout  # Python's own handler is back


# ---------------------------------------------------------------- 6. the cache lock and timeouts
def test_waiting_on_the_cache_lock_names_the_holder_and_times_out(fresh_cache, monkeypatch, capfd):
    @lt.compile
    def f(x: lt.Tensor[3]):
        return lt.tanh(x) * 7.0

    key = build_mod.cache_key(f.cpp_source, build_mod.compiler_name())
    monkeypatch.setattr(build_mod, "LOCK_NOTICE_SECONDS", 0.2)
    monkeypatch.setenv("LANTERN_COMPILE_TIMEOUT", "1")
    with open(fresh_cache / f"{key}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242 somehost 1700000000\n")
        held.flush()
        with pytest.raises(lt.CompileError, match=rf"LANTERN_COMPILE_TIMEOUT=1\).*{key}.*process 4242 on somehost"):
            f(np.zeros(3, np.float32))
    err = capfd.readouterr().err
    assert f"waiting for process 4242 on somehost" in err and key in err, err
    monkeypatch.delenv("LANTERN_COMPILE_TIMEOUT")
    np.testing.assert_allclose(f(np.ones(3, np.float32)), np.tanh(np.ones(3)) * 7, rtol=1e-6)  # lock free again


def test_compile_timeout_stops_a_stalled_compiler_and_leaves_no_library(fresh_cache, monkeypatch, tmp_path):
    stalled = tmp_path / "stalled-cxx"
    stalled.write_text("#!/bin/sh\nexec sleep 60\n")
    stalled.chmod(0o755)
    monkeypatch.setenv("CXX", str(stalled))
    monkeypatch.setenv("LANTERN_COMPILE_TIMEOUT", "0.5")

    @lt.compile
    def f(x: lt.Tensor[3]):
        return lt.tanh(x) * 8.0

    with pytest.raises(lt.CompileError, match=r"ran longer than LANTERN_COMPILE_TIMEOUT=0.5 s"):
        f(np.zeros(3, np.float32))
    assert not [p for p in fresh_cache.rglob("*") if p.is_file() and ".so" in p.name]
    monkeypatch.setenv("LANTERN_COMPILE_TIMEOUT", "soon")
    with pytest.raises(lt.CompileError, match="LANTERN_COMPILE_TIMEOUT='soon' is not a positive number"):
        lt.compile(f.fn, name="f2")(np.zeros(3, np.float32))


def test_a_cache_shared_by_machines_of_different_cpus_keeps_their_libraries_apart(fresh_cache, monkeypatch):
    # -march=native: a library built on an AVX-512 CPU dies of SIGILL on one without
    @lt.compile
    def f(x: lt.Tensor[3]):
        return lt.tanh(x) * 10.0

    np.testing.assert_allclose(f(np.ones(3, np.float32)), np.tanh(np.ones(3)) * 10, rtol=1e-6)
    here = build_mod.cache_key(f.cpp_source, build_mod.compiler_name())
    assert (fresh_cache / here / "module.so").exists()
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith(("flags", "Features")))
        assert flags.split(":", 1)[1].strip() in build_mod.host_cpu()   # x86's flags, ARM's features
    except (OSError, StopIteration):
        pass  # not Linux: the platform's names stand for the CPU
    monkeypatch.setattr(build_mod, "host_cpu", lambda: "AuthenticAMD|23|49|fpu sse sse2 avx avx2 fma")
    assert build_mod.cache_key(f.cpp_source, build_mod.compiler_name()) != here


def test_temporary_libraries_of_killed_compiles_are_removed(fresh_cache):
    @lt.compile
    def f(x: lt.Tensor[3]):
        return lt.tanh(x) * 9.0

    folder = fresh_cache / build_mod.cache_key(f.cpp_source, build_mod.compiler_name())
    folder.mkdir()
    orphans = [folder / "tmpab12cd.so", folder / "tmp-x1y2.so.part"]  # old and current temporary names
    for p in orphans:
        p.write_bytes(b"\x7fELF half written")
    np.testing.assert_allclose(f(np.ones(3, np.float32)), np.tanh(np.ones(3)) * 9, rtol=1e-6)
    assert not any(p.exists() for p in orphans)
    assert sorted(p.name for p in folder.iterdir()) == ["module.cpp", "module.so", "module.so.sha256"]


# ---------------------------------------------------------------- 7. a cache hit needs no compiler
def test_cache_hit_needs_no_compiler(fresh_cache, monkeypatch, tmp_path):
    def make():
        @lt.compile
        def f(x: lt.Tensor[3]):
            return lt.exp(x) * 10.0

        return f

    x = np.ones(3, np.float32)
    expected = make()(x)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no g++ anywhere
    np.testing.assert_array_equal(make()(x), expected)

    @lt.compile
    def g(x: lt.Tensor[3]):
        return lt.exp(x) * 11.0  # not cached: needs the compiler, and says so

    with pytest.raises(lt.CompileError, match="not found"):
        g(x)


# ---------------------------------------------------------------- 12, 13, 18: the argument boundary
@pytest.fixture(scope="module")
def boundary_fn():
    @lt.compile
    def f(x: lt.Tensor[3], s: lt.Float, mask: lt.Tensor[3, "bool"], a: lt.IntArray):
        return x * s, lt.sum(lt.cast(mask, "float32")), a.length

    return f


def args(**change):
    a = dict(x=np.ones(3, np.float32), s=2.0, mask=np.array([True, False, True]), a=np.arange(4, dtype=np.int32))
    a.update(change)
    return a


def test_intarray_longer_than_int32_is_rejected(boundary_fn):
    long = np.lib.stride_tricks.as_strided(np.zeros(1, np.int32), shape=(2**31,), strides=(0,))
    with pytest.raises(ValueError, match=r"argument 'a': an IntArray of 2147483648 elements is longer than 2\*\*31-1"):
        boundary_fn(**args(a=long))


def test_bool_array_with_bytes_other_than_0_and_1_counts_as_numpy_does(boundary_fn):
    raw = np.array([1, 2, 255], np.uint8)
    mask = raw.view(np.bool_)
    _, count, _ = boundary_fn(**args(mask=mask))
    assert float(count) == 3.0 == np.count_nonzero(raw)
    np.testing.assert_array_equal(raw, [1, 2, 255])  # the caller's array is left as it was


@pytest.mark.parametrize("name, value, exc, words", [
    ("x", np.ma.masked_array(np.ones(3, np.float32), mask=[0, 1, 0]), TypeError, "'x': a masked array"),
    ("s", np.str_("1.5"), TypeError, "'s': expected a number .* got str_"),
    ("s", "1.5", TypeError, "'s'"),
    ("s", 1 + 2j, TypeError, "'s': expected a real number, got complex"),
    ("s", np.complex64(1 + 2j), TypeError, "'s': expected a real number, got complex"),
    ("s", 10**40, ValueError, "'s': 10000000000000000000000000000000000000000 does not fit in float32"),
    ("s", 1e300, ValueError, "'s': 1e\\+300 does not fit in float32"),
    ("s", np.float64(-1e300), ValueError, "'s': .*1e\\+300 does not fit in float32"),
    ("s", 10**400, ValueError, "'s': 1000000000.*\\(401 digits\\) does not fit in float32"),
])
def test_boundary_rejects_values_it_would_change(boundary_fn, name, value, exc, words):
    with pytest.raises(exc, match=words):
        boundary_fn(**args(**{name: value}))


def test_boundary_accepts_representable_scalars(boundary_fn):
    for s, expected in [(3, 3.0), (True, 1.0), (np.float32(0.5), 0.5), (float("inf"), np.inf), (3.4e38, 3.4e38)]:
        out, _, _ = boundary_fn(**args(s=s))
        np.testing.assert_array_equal(out, np.full(3, np.float32(expected)))


def test_annotation_and_compile_options_are_checked_where_they_are_written():
    with pytest.raises(TypeError, match=r"dimension 3.5 is not an int"):
        lt.Tensor[3.5]
    with pytest.raises(TypeError, match=r"dimension True is not an int"):
        lt.Tensor[True, 2]

    def f(x: lt.Tensor[3]):
        return x

    for option, exc, words in [(dict(arena_bytes=2**63), ValueError, r"arena_bytes=9223372036854775808 is out of range"),
                               (dict(arena_bytes="1GB"), TypeError, r"arena_bytes must be an int .* got str '1GB'"),
                               (dict(arena_bytes=0), ValueError, "arena_bytes=0 is out of range"),
                               (dict(max_depth=-1), ValueError, r"max_depth=-1 is out of range"),
                               (dict(max_depth=1.5), TypeError, "max_depth must be an int")]:
        with pytest.raises(exc, match=words):
            lt.compile(**option)(f)
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="max_depth=-1"):
        lt.train_step(model, lambda m, x: lt.sum(m(x)), lt.optim.SGD(model.parameters(), lr=0.1), max_depth=-1)


# ---------------------------------------------------------------- 14, 15, 19: checkpoints
@pytest.fixture
def adam_step():
    lt.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = lt.optim.Adam(model.parameters(), lr=0.01)

    def loss_fn(model, x: lt.Tensor[5, 3], y: lt.Tensor[5, "int32"]):
        return lt.cross_entropy(model(x), y)

    step = lt.train_step(model, loss_fn, opt)
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((5, 3)).astype(np.float32), rng.integers(0, 2, 5).astype(np.int32))
    step(*data)
    return step, data


def snapshot(step):
    return {k: np.array(v) for k, v in step.state_dict().items()}


def assert_unchanged(step, before):
    for k, v in step.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} changed by a failed load")


def test_failed_load_changes_nothing_and_lists_every_mismatch(adam_step):
    step, data = adam_step
    before = snapshot(step)
    bad = {k: v + 1 for k, v in before.items()}
    bad["model.1.weight"] = np.zeros((3, 4), np.float32)  # a later layer of another shape
    bad["optimizer.1.exp_avg"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError) as info:
        step.load_state_dict(bad)
    message = str(info.value)
    assert "nothing was loaded" in message and "model.1.weight has shape (3, 4), expected (2, 4)" in message
    assert "optimizer.1.exp_avg has shape (7,), expected (4,)" in message
    assert_unchanged(step, before)

    lt.manual_seed(0)
    other = lt.train_step(step.model, step.loss_fn, lt.optim.SGD(step.model.parameters(), lr=0.1))
    with pytest.raises(KeyError) as info:
        step.load_state_dict(other.state_dict())  # another optimizer's checkpoint
    message = str(info.value)
    assert "optimizer.step" in message and "optimizer.0.exp_avg" in message and "optimizer.3.exp_avg_sq" in message
    assert_unchanged(step, before)

    with pytest.raises(ValueError, match="0.weight has dtype complex128"):
        step.model.load_state_dict({**step.model.state_dict(), "0.weight": np.zeros((4, 3), complex)})
    assert_unchanged(step, before)


def test_save_then_load_round_trips_under_the_same_name(adam_step, tmp_path):
    step, data = adam_step
    path = tmp_path / "ckpt"
    step.save(path)
    assert path.is_file() and not (tmp_path / "ckpt.npz").exists()
    after = [step(*data) for _ in range(3)]
    step.load(path)
    assert [step(*data) for _ in range(3)] == after  # bit for bit
    legacy = tmp_path / "old"
    np.savez(legacy, **step.state_dict())  # numpy's own naming: old.npz
    step.load(legacy)


def test_save_is_atomic_a_killed_save_leaves_the_previous_checkpoint(adam_step, tmp_path):
    step, data = adam_step
    path = tmp_path / "ckpt.npz"
    step.save(path)
    good = path.read_bytes()
    script = f"""
        import os, numpy as np
        import lantern_stage as lt

        def dying_savez(file, **arrays):  # killed after writing a little of the file
            f = open(file, "wb") if isinstance(file, (str, os.PathLike)) else file
            f.write(b"PK\\x03\\x04 partial")
            f.flush()
            os._exit(9)

        np.savez = dying_savez
        lt.save({{"w": np.zeros(3, np.float32)}}, {str(path)!r})
    """
    proc = python(script)
    assert proc.returncode == 9, proc.stderr
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"] or all(
        p.name.startswith(".ckpt.npz.") for p in tmp_path.iterdir() if p.name != "ckpt.npz")
    step.load(path)


def test_save_fsyncs_before_it_renames(adam_step, tmp_path, monkeypatch):
    step, _ = adam_step
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(b).name)), real_replace(a, b))[1])
    step.save(tmp_path / "ckpt.npz")
    assert events[:2] == ["fsync", ("replace", "ckpt.npz")], events


def test_loading_a_file_that_is_not_a_checkpoint_is_a_value_error_naming_it(adam_step, tmp_path):
    step, _ = adam_step
    before = snapshot(step)
    npy = tmp_path / "weights.npy"
    np.save(npy, np.zeros(3))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(os.urandom(300))
    truncated = tmp_path / "truncated.npz"
    step.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path, words in [(npy, "one array"), (garbage, ""), (truncated, "")]:
        with pytest.raises(ValueError, match=f"{path.name} is not a readable checkpoint.*{words}"):
            step.load(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        step.load(tmp_path / "missing.npz")
    assert_unchanged(step, before)


def test_non_finite_weights_in_a_checkpoint_give_a_warning_naming_them(adam_step, tmp_path):
    step, _ = adam_step
    clean = snapshot(step)
    state = snapshot(step)
    state["model.0.weight"][1, 2] = np.nan
    state["optimizer.2.exp_avg"][0] = np.inf
    path = tmp_path / "ckpt.npz"
    lt.save(state, path)
    with pytest.warns(RuntimeWarning, match=r"non-finite values .* in model.0.weight, optimizer.2.exp_avg"):
        step.load(path)
    lt.save(clean, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step.load(path)


def test_package_checkpoints_are_atomic_checked_and_named(package, tmp_path):
    script = f"""
        import sys, warnings
        import numpy as np
        sys.path.insert(0, {str(package)!r})
        import hpkg
        hpkg.save({str(tmp_path / "pkg")!r})
        state = {{k: np.array(v) for k, v in hpkg.state_dict().items()}}
        hpkg.load({str(tmp_path / "pkg")!r})
        bad = dict(state, **{{"model.weight": np.zeros((3, 3), np.float32), "model.bias": np.zeros(5, np.float32)}})
        try:
            hpkg.load_state_dict(bad)
        except ValueError as e:
            print("rejected", "model.weight" in str(e) and "model.bias" in str(e))
        np.save({str(tmp_path / "one.npy")!r}, np.zeros(2))
        try:
            hpkg.load({str(tmp_path / "one.npy")!r})
        except ValueError as e:
            print("npy", "one.npy" in str(e))
        print("same", all((hpkg.state_dict()[k] == v).all() for k, v in state.items()))
    """
    lines = ok(python(script)).stdout.split()
    assert lines == ["rejected", "True", "npy", "True", "same", "True"], lines


# ---------------------------------------------------------------- 17. names that are not C identifiers
def test_names_that_are_not_c_identifiers_compile_and_keep_their_python_names():
    x = np.arange(3, dtype=np.float32)
    fns = []
    for name in ("my-model", "two words", "módulo", "configure", "9lives", "a\\"):
        f = lt.compile(lambda x: x * 3.0, name=name)
        f.fn.__annotations__ = {"x": lt.Tensor[3]}
        fns.append(f)
    lam = lambda x: x + 1.0  # noqa: E731
    lam.__annotations__ = {"x": lt.Tensor[3]}
    fns.append(lt.compile(lam))

    def configure(x: lt.Tensor[3], _ENTRIES: lt.Tensor[3], módulo: lt.Tensor[3]):
        step = lt.recursive(lambda i: lt.cond(i <= 0, lambda: _ENTRIES, lambda: x + módulo))
        return step(lt.full((), 1, "int32"))

    fns.append(lt.compile(configure))
    for f in fns[:-2]:
        np.testing.assert_array_equal(f(x), x * 3)
    np.testing.assert_array_equal(fns[-2](x), x + 1)
    np.testing.assert_array_equal(fns[-1](x, x, x), x + x)
    assert [f.name for f in fns] == ["my-model", "two words", "módulo", "configure", "9lives", "a\\", "<lambda>",
                                     "configure"]
    with pytest.raises(TypeError, match=r"my-model\(\) argument 'x'"):
        fns[0](x.astype(np.float64))


def test_package_entries_named_like_runtime_symbols_work(package):
    script = f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(package)!r})
        import hpkg
        one = np.ones(3, np.float32)
        print(getattr(hpkg, "módulo")(one).tolist(), hpkg.configure(one, _ENTRIES=one * 2).tolist())
    """
    assert ok(python(script)).stdout.split("] [") == ["[2.0, 2.0, 2.0", "3.0, 3.0, 3.0]\n"]


# ---------------------------------------------------------------- 20. what max_depth counts
def test_max_depth_counts_every_call_of_the_forward_pass_under_grad_and_says_so():
    def make(max_depth, grad):
        @lt.compile(max_depth=max_depth)
        def f(lch: lt.IntArray, rch: lt.IntArray, x: lt.Tensor[2]):
            def loss(x):
                @lt.recursive
                def node(i):
                    return lt.cond(lch[i] < 0, lambda: lt.sum(x * x), lambda: node(lch[i]) + node(rch[i]))
                return node(0)
            return lt.value_and_grad(loss)(x) if grad else loss(x)
        return f

    n = 31  # a perfect binary tree of 5 levels, heap layout
    lch = np.array([2 * i + 1 if 2 * i + 1 < n else -1 for i in range(n)], np.int32)
    rch = np.array([2 * i + 2 if 2 * i + 2 < n else -1 for i in range(n)], np.int32)
    x = np.ones(2, np.float32)
    # without grad: right children are called from continuations, nested inside their left siblings' calls
    assert float(make(9, grad=False)(lch, rch, x)) == 32.0
    with pytest.raises(RecursionError, match="budget of 8 calls"):
        make(8, grad=False)(lch, rch, x)
    value, g = make(31, grad=True)(lch, rch, x)  # under grad: all 31 calls at once
    assert float(value) == 32.0 and np.allclose(g, 2 * 16 * x)
    with pytest.raises(RecursionError, match=r"budget of 30 calls \(max_depth counts staged function calls active "
                                             r"at once, which is more than the recursion depth: .* under "
                                             r"value_and_grad .* one per tree node, one per loop iteration\)"):
        make(30, grad=True)(lch, rch, x)
