"""The `lantern` command: `compile` into a package importable without
lantern_stage, `--emit-ir` / `--emit-cpp`, `--standalone` (a C++ program with
a Makefile whose losses match the package's), `run`, help and version, the
compile cache across processes, and one clear message and exit status per
failure.  Every command runs in a subprocess, as a user runs it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lantern_stage as lt
from lantern_stage import cli

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "examples" / "mlp.py"
CHAR_RNN = ROOT / "examples" / "char_rnn.py"


def lantern_command() -> list[str]:
    script = Path(sys.executable).parent / "lantern"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lantern_stage.cli"]


def lantern(*args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(lantern_command() + [str(a) for a in args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def python(code: str, *, args=(), env=None, cwd=None, flags=()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def mlp_out(tmp_path_factory) -> Path:
    """examples/mlp.py compiled once, with its standalone program: OUT (holding OUT/mlp)."""
    out = tmp_path_factory.mktemp("out")
    proc = ok(lantern("compile", MLP, "-o", out, "--standalone"))
    assert "train_step(x: float32[32, 2], y: int32[32]) -> float" in proc.stdout
    return out


# ---------------------------------------------------------------- compile: the package
def test_compile_writes_source_library_manifest_state_and_loader(mlp_out):
    pkg = mlp_out / "mlp"
    for name in ("__init__.py", "_runtime.py", "manifest.json", "module.cpp", "module.so", "state.npz"):
        assert (pkg / name).is_file(), name
    assert 'extern "C" int lantern_train_step(' in (pkg / "module.cpp").read_text()
    manifest = json.loads((pkg / "manifest.json").read_text())
    entries = {e["name"]: e for e in manifest["entries"]}
    assert list(entries) == ["train_step", "predict"]
    train = entries["train_step"]
    assert train["kind"] == "train_step" and train["signature"] == "train_step(x: float32[32, 2], y: int32[32]) -> float"
    assert [(i["name"], i["shape"], i["dtype"]) for i in train["inputs"]] == [("x", [32, 2], "float32"),
                                                                              ("y", [32], "int32")]
    # the labels index the 3 classes: the loader checks them before C++ runs
    assert train["inputs"][1]["index_ranges"] == [dict(offset=0, size=32, low=0, bound=3, use="nll_loss target")]
    assert entries["predict"]["signature"] == "predict(x: float32[32, 2]) -> float32[32, 3]"
    keys = [s["key"] for s in manifest["state"]]
    assert keys[:2] == ["model.fc1.weight", "model.fc1.bias"] and "optimizer.0.momentum_buffer" in keys
    assert set(entries["predict"]["captures"]) < set(train["captures"]) == set(keys)
    with np.load(pkg / "state.npz") as f:
        assert sorted(f.files) == sorted(keys)


ISOLATED_IMPORT = """
    import json, sys
    out, site = sys.argv[1], sys.argv[2]
    sys.path[:] = [out] + [p for p in sys.path if 'site-packages' not in p] + [site]

    class NoLantern:  # fail loudly if anything imports lantern_stage
        def find_spec(self, name, path=None, target=None):
            if name == 'lantern_stage' or name.startswith('lantern_stage.'):
                raise ImportError('the compiled package imported ' + name)

    sys.meta_path.insert(0, NoLantern())
    import numpy as np
    import mlp

    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)
    losses = [mlp.train_step(x, y) for _ in range(10)]
    logits = mlp.predict(x)
    w = mlp.params["fc1.weight"]
    before = w.copy()
    mlp.params["fc1.weight"] = np.zeros_like(w)  # writes go into the live array
    zeroed = float(np.abs(mlp.params["fc1.weight"]).max())
    mlp.load_state_dict({"model.fc1.weight": before}, strict=False)
    mlp.save("ckpt.npz")
    trained = mlp.predict(x)
    mlp.reset()
    fresh = mlp.predict(x)
    mlp.load("ckpt.npz")
    errors = []
    for bad in [(x.astype(np.float64), y), (x, y + 3), (x[:16], y[:16]), (x, -y)]:
        try:
            mlp.train_step(*bad)
        except (TypeError, ValueError, IndexError) as e:
            errors.append(type(e).__name__ + ": " + str(e))
    print(json.dumps(dict(
        losses=losses, logits_shape=list(logits.shape), zeroed=zeroed,
        same_after_load=bool(np.array_equal(mlp.predict(x), trained)),
        reset_differs=not np.array_equal(fresh, trained),
        params=sorted(mlp.params.keys()), errors=errors,
        lantern_modules=sorted(m for m in sys.modules if m.startswith('lantern_stage')),
        model_imported='examples' in str(sys.modules.get('mlp').__file__),
        loader=[m for m in sys.modules if m.startswith('mlp')])))
"""


def test_package_imports_in_a_fresh_process_without_lantern_stage(mlp_out, tmp_path):
    import cffi

    site = Path(np.__file__).parent.parent
    assert Path(cffi.__file__).parent.parent == site
    # -S: no site-packages .pth files, so not even the editable install of lantern_stage is visible
    proc = ok(python(ISOLATED_IMPORT, args=(mlp_out, site), cwd=tmp_path, flags=("-S",),
                     env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)}))
    result = json.loads(proc.stdout)
    assert result["lantern_modules"] == [] and not result["model_imported"]
    assert sorted(result["loader"]) == ["mlp", "mlp._runtime"]
    assert result["logits_shape"] == [32, 3]
    assert result["losses"][-1] < result["losses"][0]
    assert result["zeroed"] == 0.0 and result["same_after_load"] and result["reset_differs"]
    assert result["params"] == sorted(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"])
    errors = result["errors"]
    assert len(errors) == 4, errors
    assert errors[0].startswith("TypeError") and "'x'" in errors[0] and "float64" in errors[0]
    assert errors[1].startswith("IndexError") and "nll_loss target" in errors[1] and "[0, 3)" in errors[1]
    assert errors[2].startswith("ValueError") and "shape" in errors[2]
    assert errors[3].startswith("IndexError") and "'y'" in errors[3]


def test_package_losses_match_the_model_run_in_process(mlp_out):
    """The package starts from the model's initial weights and computes what
    the model's entry points compute in process, step for step."""
    from lantern_stage.export import Bundle, run_model_file

    g = lt.default_generator
    saved = g.get_state(), g.numpy  # the model file reseeds the default generator
    try:
        exports, namespace = run_model_file(MLP)
    finally:
        g.set_state(saved[0])
        g.numpy = saved[1]
    step = Bundle(exports, namespace, str(MLP)).load()["train_step"]  # the live arrays, not the package's
    data = list(zip(range(10), namespace["batches"]()))
    expected = [step(x, y) for _, (x, y) in data]
    np.savez(mlp_out / "batches.npz", x=np.stack([x for _, (x, _) in data]), y=np.stack([y for _, (_, y) in data]))
    proc = ok(python("""
        import json, sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        import mlp
        with np.load(sys.argv[1] + "/batches.npz") as f:
            print(json.dumps([mlp.train_step(x, y) for x, y in zip(f["x"], f["y"])]))
    """, args=(mlp_out,)))
    assert json.loads(proc.stdout) == expected


def test_package_moved_away_from_its_openblas_loads_this_environments(mlp_out, tmp_path):
    """module.so finds OpenBLAS by the run path of the environment it was built
    in; where that is gone, the package loads scipy-openblas32 from sys.path."""
    import scipy_openblas32

    shutil.copytree(mlp_out / "mlp", tmp_path / "mlp", ignore=shutil.ignore_patterns("standalone"))
    so = tmp_path / "mlp" / "module.so"
    lib_dir = scipy_openblas32.get_lib_dir().encode()
    data = so.read_bytes()
    assert data.count(lib_dir) == 1
    so.write_bytes(data.replace(lib_dir, b"/" + b"x" * (len(lib_dir) - 1)))  # same length: a valid ELF file
    manifest = tmp_path / "mlp" / "manifest.json"  # as if built there: the recorded hash follows the edit
    info = json.loads(manifest.read_text())
    info["library_sha256"] = hashlib.sha256(so.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(info))
    site = Path(scipy_openblas32.__file__).parent.parent
    code = "import sys; sys.path[:0] = [sys.argv[1]]; sys.path.append(sys.argv[2]); {}import mlp; print(mlp.params)"
    proc = ok(python(code.format(""), args=(tmp_path, site), flags=("-S",)))
    assert "fc1.weight" in proc.stdout
    proc = python(code.format("sys.modules['scipy_openblas32'] = None; "), args=(tmp_path, site), flags=("-S",))
    assert proc.returncode == 1 and "pip install scipy-openblas32" in proc.stderr


# ---------------------------------------------------------------- compile: the standalone program
def test_standalone_program_built_with_its_makefile_gives_the_packages_losses(mlp_out):
    folder = mlp_out / "mlp" / "standalone"
    makefile = (folder / "Makefile").read_text()
    assert "-Wl,-rpath," in makefile and "scipy_openblas" in makefile
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["x.npy", "y.npy"]
    ok(subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True, timeout=600))
    # A standalone program's OpenBLAS picks its kernels from OPENBLAS_CORETYPE
    # before main runs; bit-equal losses need the kernels the package loaded with.
    from lantern_stage.runtime import openblas_kernels
    env = dict(os.environ)
    if openblas_kernels():
        env["OPENBLAS_CORETYPE"] = openblas_kernels()
    else:
        env.pop("OPENBLAS_CORETYPE", None)
    run = ok(subprocess.run(["./mlp", "--steps", "10", "--out", "trained"], cwd=folder, capture_output=True,
                            text=True, timeout=120, env=env))
    assert "10 steps" in run.stdout
    losses = np.load(folder / "trained" / "losses.npy")
    assert losses.shape == (10,) and losses.dtype == np.float32

    proc = ok(python("""
        import json, sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        import mlp
        data = sys.argv[1] + "/mlp/standalone/data/"
        x, y = np.load(data + "x.npy"), np.load(data + "y.npy")
        losses = [mlp.train_step(x[i % len(x)], y[i % len(y)]) for i in range(10)]
        np.savez(sys.argv[2], **mlp.state_dict())
        print(json.dumps(losses))
    """, args=(mlp_out, mlp_out / "package_state.npz")))
    np.testing.assert_array_equal(losses, np.float32(json.loads(proc.stdout)))
    with np.load(mlp_out / "package_state.npz") as state:
        for key in state.files:
            np.testing.assert_array_equal(np.load(folder / "trained" / f"{key}.npy"), state[key], err_msg=key)


def test_standalone_program_reports_bad_data_cleanly(mlp_out):
    folder = mlp_out / "mlp" / "standalone"
    if not (folder / "mlp").exists():
        ok(subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True, timeout=600))
    bad = folder / "bad_data"
    bad.mkdir(exist_ok=True)
    np.save(bad / "x.npy", np.zeros((2, 32, 3), np.float32))
    np.save(bad / "y.npy", np.zeros((2, 32), np.int32))
    run = subprocess.run(["./mlp", "--data", "bad_data"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "bad_data/x.npy: expected float32 (2, 32, 2), got float32 (2, 32, 3)" in run.stderr
    np.save(bad / "x.npy", np.zeros((2, 32, 2), np.float32))
    np.save(bad / "y.npy", np.full((2, 32), 7, np.int32))
    run = subprocess.run(["./mlp", "--data", "bad_data"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "step 0: nll_loss target: index 7 out of range [0, 3)" in run.stderr


# ---------------------------------------------------------------- compile: IR and C++ only
def test_emit_ir_and_emit_cpp_print_without_building(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"))  # building would fail
    ir = ok(lantern("compile", MLP, "--emit-ir", "-o", tmp_path / "out", env=env)).stdout
    assert "# entry point train_step(x: float32[32, 2], y: int32[32]) -> float" in ir
    assert "def train_step(" in ir and "def predict(" in ir and "gemm" in ir
    cpp = ok(lantern("compile", MLP, "--emit-cpp", env=env)).stdout
    assert 'extern "C" int lantern_train_step(' in cpp and 'extern "C" int lantern_predict(' in cpp
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the compile cache across processes
COMPILER_LOG = """#!/bin/sh
echo "$@" >> {log}
exec {cxx} "$@"
"""


def test_concurrent_compiles_both_succeed_and_a_recompile_never_runs_the_compiler(tmp_path):
    log = tmp_path / "cxx.log"
    wrapper = tmp_path / "logging-g++"
    wrapper.write_text(COMPILER_LOG.format(log=log, cxx=shutil.which(os.environ.get("CXX", "g++"))))
    wrapper.chmod(0o755)
    env = dict(os.environ, CXX=str(wrapper), LANTERN_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "out"
    procs = [subprocess.Popen(lantern_command() + ["compile", str(MLP), "-o", str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
    assert len(log.read_text().splitlines()) == 1  # the second waited for the first's build
    ok(lantern("compile", MLP, "-o", out, env=env))
    assert len(log.read_text().splitlines()) == 1  # unchanged model: no compiler run
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["mlp"]
    assert not [p for p in out.iterdir() if p.name.endswith((".tmp", ".old"))]
    ok(python("import sys; sys.path.insert(0, sys.argv[1]); import mlp; print(mlp.params['fc1.weight'].shape)",
              args=(out,)))


# ---------------------------------------------------------------- run
def test_run_trains_with_a_progress_bar_and_a_summary(mlp_out, tmp_path):
    proc = ok(lantern("run", MLP, "--steps", 150, "--save", tmp_path / "trained.npz"))
    assert "data: batches(None) from mlp.py" in proc.stdout
    assert "train_step: 150 steps in" in proc.stdout and "steps/s" in proc.stdout
    assert "150/150" in proc.stderr and "step/s" in proc.stderr and "loss=" in proc.stderr  # tqdm
    first, last = (float(proc.stdout.split(f"{w} ")[1].split(",")[0]) for w in ("first", "last"))
    assert last < 0.5 * first
    with np.load(tmp_path / "trained.npz") as f:
        assert "model.fc1.weight" in f.files and "optimizer.lr" in f.files


def test_run_reads_data_through_batches_or_generates_it(tmp_path):
    x = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    np.savez(tmp_path / "points.npz", x=x, y=(x[:, 0] > 0).astype(np.int32))
    proc = ok(lantern("run", MLP, "--steps", 5, "--data", tmp_path / "points.npz", "-q"))
    assert "batches('" in proc.stdout and "points.npz" in proc.stdout and "5 steps" in proc.stdout
    # a model file without batches(): data generated from the signature, labels within the 3 classes
    bare = tmp_path / "bare.py"
    bare.write_text(f"import sys\nsys.path.insert(0, {str(MLP.parent)!r})\nimport mlp as _mlp\n")
    proc = ok(lantern("run", bare, "--steps", 5, "-q"))
    assert "data: generated" in proc.stdout
    proc = lantern("run", bare, "--data", tmp_path / "points.npz")
    assert proc.returncode == cli.EXIT_USAGE and "defines no batches(data_path)" in proc.stderr


def test_run_trains_the_paper_char_rnn():
    """`make example`: the vanilla char-RNN of the paper on generated text."""
    proc = ok(lantern("run", CHAR_RNN, "--steps", 150, "-q"))
    assert "train_step(xs: float32[20, 20, 26], ys: int32[20, 20]) -> float" in proc.stdout
    first, last = (float(proc.stdout.split(f"{w} ")[1].split(",")[0]) for w in ("first", "mean of the last 15"))
    assert first > 1200 and last < 0.75 * first  # 400 characters: log(26) * 400 = 1303 at the start


# ---------------------------------------------------------------- help and version
def test_help_describes_every_option_and_version():
    top = ok(lantern("--help")).stdout
    assert "compile" in top and "run" in top and "--version" in top and "exit status" in top
    assert ok(lantern("--version")).stdout.strip() == f"lantern (lantern_stage) {lt.__version__}"
    compile_help = ok(lantern("compile", "--help")).stdout
    for option in ("-o OUT", "--name NAME", "--emit-ir", "--emit-cpp", "--standalone", "--data PATH", "--steps N",
                   "--entry NAME", "--seed", "--debug"):
        assert option in compile_help, option
    run_help = ok(lantern("run", "--help")).stdout
    for option in ("--steps N", "--data PATH", "--save", "--entry NAME", "--quiet", "--debug", "batches(data_path)"):
        assert option in run_help, option


# ---------------------------------------------------------------- failures: one message, an exit status
TINY = """\
import lantern_stage as lt


@lt.export
def f(x: lt.Tensor[3]):
    return lt.sum(x * x)
"""


def write(folder: Path, text: str, name: str = "model.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def expect_failure(proc, code: int, *fragments: str) -> str:
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{err}"
    assert err.startswith("lantern: error: ") and err.count("lantern: error:") == 1, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    return err


def test_missing_model_file(tmp_path):
    expect_failure(lantern("compile", tmp_path / "nope.py"), cli.EXIT_USAGE, "nope.py not found")
    expect_failure(lantern("run", tmp_path / "nope.py"), cli.EXIT_USAGE, "not found")


def test_syntax_error_names_its_line(tmp_path):
    model = write(tmp_path, "import lantern_stage as lt\n\ndef f(x:\n    return x\n")
    expect_failure(lantern("compile", model), cli.EXIT_MODEL, "syntax error in", "model.py:3")


def test_exception_in_the_model_file_names_its_line(tmp_path):
    model = write(tmp_path, "import lantern_stage as lt\nscale = 1 / 0\n")
    expect_failure(lantern("compile", model), cli.EXIT_MODEL, "ZeroDivisionError", "model.py:2")


def test_no_exported_entry_point(tmp_path):
    model = write(tmp_path, "import lantern_stage as lt\n\n@lt.compile\ndef f(x: lt.Tensor[3]):\n    return x\n")
    expect_failure(lantern("compile", model), cli.EXIT_MODEL, "exports no entry point", "@lt.export")


def test_missing_annotation_without_example_args(tmp_path):
    model = write(tmp_path, TINY.replace("x: lt.Tensor[3]", "x"))
    expect_failure(lantern("compile", model, "-o", tmp_path / "out"), cli.EXIT_MODEL,
                   "entry point 'f'", "model.py:4", "'x' have no annotation", "example_args=")


def test_wrong_annotation(tmp_path):
    model = write(tmp_path, TINY.replace("x: lt.Tensor[3]", "x: int"))
    expect_failure(lantern("compile", model, "--emit-ir"), cli.EXIT_MODEL, "entry point 'f'", "not a staged type")


def test_staging_error_names_the_op_and_the_line(tmp_path):
    model = write(tmp_path, TINY.replace("lt.sum(x * x)", "x @ x.reshape(1, 3)"))
    expect_failure(lantern("compile", model, "--emit-ir"), cli.EXIT_MODEL, "entry point 'f'", "matmul", "model.py:6")


def test_cxx_pointing_nowhere(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "bin" / "g++"), LANTERN_CACHE_DIR=str(tmp_path / "cache"))
    model = write(tmp_path, TINY)
    expect_failure(lantern("compile", model, "-o", tmp_path / "out", env=env), cli.EXIT_COMPILER,
                   "not found", "CXX")
    assert not (tmp_path / "out" / "model").exists()


def test_no_gxx_on_the_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env.update(PATH=str(tmp_path / "empty"), LANTERN_CACHE_DIR=str(tmp_path / "cache"))
    model = write(tmp_path, TINY)
    expect_failure(lantern("run", model, env=env), cli.EXIT_COMPILER, "'g++' not found", "install g++")


FAILING_COMPILER = """#!/bin/sh
echo "module.cpp:1:1: error: injected failure for the test" >&2
exit 1
"""


def test_compile_failure_shows_the_first_error_and_the_kept_source(tmp_path):
    fake = tmp_path / "failing-g++"
    fake.write_text(FAILING_COMPILER)
    fake.chmod(0o755)
    env = dict(os.environ, CXX=str(fake), LANTERN_CACHE_DIR=str(tmp_path / "cache"))
    model = write(tmp_path, TINY)
    err = expect_failure(lantern("compile", model, "-o", tmp_path / "out", env=env), cli.EXIT_COMPILER,
                         "C++ compilation failed", "error: injected failure for the test", "source kept at ")
    kept = Path(err.split("source kept at ")[1].split(")")[0])
    assert kept.is_file() and "lantern_f" in kept.read_text()
    assert not (tmp_path / "out" / "model").exists()


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "a_file").write_text("")
    model = write(tmp_path, TINY)
    expect_failure(lantern("compile", model, "-o", tmp_path / "a_file" / "out"), cli.EXIT_OUTPUT,
                   "cannot write to the output folder", "a_file")
    # a folder of the package's name that lantern did not write is never replaced
    (tmp_path / "out" / "model").mkdir(parents=True)
    (tmp_path / "out" / "model" / "notes.txt").write_text("mine")
    expect_failure(lantern("compile", model, "-o", tmp_path / "out"), cli.EXIT_OUTPUT,
                   "is not a package written by lantern compile")
    assert (tmp_path / "out" / "model" / "notes.txt").read_text() == "mine"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")] == []


def test_debug_adds_the_traceback(tmp_path):
    model = write(tmp_path, "import lantern_stage as lt\n")
    proc = lantern("--debug", "compile", model)
    assert proc.returncode == cli.EXIT_MODEL and "Traceback" in proc.stderr and "exports no entry point" in proc.stderr
    proc = lantern("compile", model, "--debug")
    assert proc.returncode == cli.EXIT_MODEL and "Traceback" in proc.stderr


def test_usage_errors(tmp_path):
    model = write(tmp_path, TINY)
    expect_failure(lantern("compile", model, "--name", "not-an-identifier"), cli.EXIT_USAGE, "not a Python identifier")
    expect_failure(lantern("compile", model, "--steps", 3), cli.EXIT_USAGE, "--standalone")
    proc = lantern("compile", model, "--emit-ir", "--emit-cpp")
    assert proc.returncode == cli.EXIT_USAGE and "not allowed with" in proc.stderr
    expect_failure(lantern("run", model, "--entry", "g"), cli.EXIT_USAGE, "no entry point named 'g'")


# ---------------------------------------------------------------- lt.export and the bundle, in process (no compiler)
def test_export_marks_entry_points_and_returns_compiled_objects():
    from lantern_stage.export import collecting

    with collecting() as found:
        @lt.export
        def double(x: lt.Tensor[3]):
            return x * 2

        @lt.export(name="halve")
        def half(x: lt.Tensor[3]):
            return x / 2

    assert isinstance(double, lt.CompiledFunction) and isinstance(half, lt.CompiledFunction)
    assert [e.name for e in found] == ["double", "halve"]
    assert found[0].where.startswith(__file__ + ":")
    assert lt.export(double) is double  # outside `collecting`: nothing recorded, the object back
    with pytest.raises(ValueError, match="not a Python identifier"):
        lt.export(double, name="two words")
    with pytest.raises(TypeError, match="expected a function"):
        lt.export(42)


def test_index_ranges_follow_views_and_name_their_use():
    from lantern_stage.export import Bundle, collecting

    table = np.zeros((7, 2), np.float32)
    with collecting() as found:
        @lt.export
        def f(xs: lt.Tensor[4, 3, 5], ys: lt.Tensor[4, 3, "int32"], words: lt.Tensor[2, 3, "int32"], k: lt.Int,
              free: lt.Tensor[3, "int32"]):
            loss = lt.sum(lt.embedding(table, words)) + lt.sum(xs[k]) + lt.sum(lt.cast(free, "float32"))
            for t in range(4):
                loss = loss + lt.cross_entropy(xs[t], ys[t])
            return loss

    (entry,) = Bundle(found).entries
    assert entry.index_ranges == [
        [],
        [dict(offset=0, size=12, low=0, bound=5, use="nll_loss target")],  # ys[0..3] merged
        [dict(offset=0, size=6, low=0, bound=7, use="embedding index")],
        [dict(offset=0, size=1, low=-4, bound=4, use="row index")],
        [],  # not used as an index
    ]
    assert list(Bundle(found).state) == ["captured.array"]  # no name in a model file's globals


def test_bundle_rejects_clashing_entry_names():
    from lantern_stage.export import Bundle, ModelError, collecting

    with collecting() as found:
        lt.export(lambda x: x, name="params")
    with pytest.raises(ModelError, match="taken by the compiled package"):
        Bundle(found)
