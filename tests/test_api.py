"""The user-facing API: staged negative indices, pytree annotations,
annotation-free compile (one compile per new signature), and the public
names (`lt.__all__`, `dir(lt)`, the README's API reference).

Compiled functions are module-level objects, so each is staged and built
once per session (and found in the on-disk cache on later runs)."""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest

import lantern_stage as lt


# ---------------------------------------------------------------- staged negative index
@lt.compile
def pick_row(x: lt.Tensor[4, 3], i: lt.Int, a: lt.IntArray):
    def loss(x):
        return lt.sum(x[i] * x[i])
    value, g = lt.value_and_grad(loss)(x)
    return x[i], a[i], value, g


def test_staged_negative_index_wraps_as_in_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    a = np.array([7, 8, 9, 10], np.int32)
    for i in range(-4, 4):
        row, ai, value, g = pick_row(x, i, a)
        np.testing.assert_array_equal(row, x[i])
        assert int(ai) == a[i]
        np.testing.assert_allclose(value, np.sum(x[i].astype(np.float64) ** 2), rtol=1e-6)
        expected = np.zeros((4, 3))
        expected[i] = 2 * x[i]
        np.testing.assert_allclose(g, expected, rtol=1e-6)


def test_staged_index_out_of_range_still_raises_index_error():
    x = np.ones((4, 3), np.float32)
    a = np.arange(4, dtype=np.int32)
    for i in (4, -5):
        with pytest.raises(IndexError, match=rf"row index: index {i} out of range \[-4, 4\)"):
            pick_row(x, i, a)
    with pytest.raises(IndexError, match=r"IntArray read: index -3 out of range \[-2, 2\)"):
        pick_row(x, -3, np.arange(2, dtype=np.int32))
    assert pick_row(x, -1, a)[1] == 3  # still usable afterwards


# ---------------------------------------------------------------- pytree annotations
Layer = {"w": lt.Tensor[4, 3], "b": lt.Tensor[3]}


@lt.compile
def two_layers(params: {"first": Layer, "second": (lt.Tensor[3, 2], [lt.Tensor[2]])}, x: lt.Tensor[5, 4],
               scale: lt.Float):
    def loss(params):
        first, (w2, [b2]) = params["first"], params["second"]
        h = lt.tanh(x @ first["w"] + first["b"])
        return lt.sum((h @ w2 + b2) * scale)
    return lt.value_and_grad(loss)(params)


def two_layers_data(seed=0):
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    params = {"first": {"w": f32(4, 3), "b": f32(3)}, "second": (f32(3, 2), [f32(2)])}
    return params, f32(5, 4)


def two_layers_reference(params, x, scale):
    """Loss and gradients by hand, in float64."""
    p = lambda a: np.asarray(a, np.float64)  # noqa: E731
    w1, b1, w2, b2 = p(params["first"]["w"]), p(params["first"]["b"]), p(params["second"][0]), p(params["second"][1][0])
    x = p(x)
    h = np.tanh(x @ w1 + b1)
    loss = np.sum((h @ w2 + b2) * scale)
    dout = np.full((5, 2), scale)
    dpre = (dout @ w2.T) * (1 - h * h)
    return loss, {"first": {"w": x.T @ dpre, "b": dpre.sum(0)}, "second": (h.T @ dout, [dout.sum(0)])}


def test_pytree_annotation_takes_the_matching_nested_numpy_structure():
    params, x = two_layers_data()
    value, grads = two_layers(params, x, 0.5)
    ref_value, ref_grads = two_layers_reference(params, x, 0.5)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    # the gradient has the nesting of the argument: dict, tuple, list
    assert set(grads) == {"first", "second"} and isinstance(grads["second"], tuple)
    assert isinstance(grads["second"][1], list)
    for got, want in [(grads["first"]["w"], ref_grads["first"]["w"]), (grads["first"]["b"], ref_grads["first"]["b"]),
                      (grads["second"][0], ref_grads["second"][0]), (grads["second"][1][0], ref_grads["second"][1][0])]:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # by keyword, with a list where the annotation has a tuple, and dict keys in another order
    swapped = {"second": [params["second"][0], (params["second"][1][0],)], "first": dict(b=params["first"]["b"],
                                                                                          w=params["first"]["w"])}
    np.testing.assert_allclose(two_layers(x=x, params=swapped, scale=0.5)[0], value, rtol=1e-6)
    assert two_layers.signatures == [
        'params: {"first": {"w": float32[4,3], "b": float32[3]}, "second": (float32[3,2], [float32[2]])}, '
        'x: float32[5,4], scale: float32[]']
    assert "%in_params_first_w: float32[4,3]" in two_layers.ir.splitlines()[0]


@pytest.mark.parametrize("change, error, message", [
    (lambda p: {"first": p["first"]}, ValueError, r"argument 'params': missing key\(s\) 'second'"),
    (lambda p: {**p, "third": 1}, ValueError, r"argument 'params': unexpected key\(s\) 'third'"),
    (lambda p: [p["first"], p["second"]], TypeError, r"argument 'params': expected a dict with keys 'first', 'second', got list"),
    (lambda p: {**p, "second": (p["second"][0],)}, ValueError,
     r"""argument 'params\["second"\]': expected a tuple of 2, got 1 items"""),
    (lambda p: {**p, "second": (p["second"][0], p["second"][1][0])}, TypeError,
     r"""argument 'params\["second"\]\[1\]': expected a list of 1, got ndarray"""),
    (lambda p: {**p, "first": {**p["first"], "b": np.zeros(4, np.float32)}}, ValueError,
     r"""argument 'params\["first"\]\["b"\]': expected shape \(3,\), got \(4,\)"""),
    (lambda p: {**p, "second": (p["second"][0].astype(np.float64), p["second"][1])}, TypeError,
     r"""argument 'params\["second"\]\[0\]': expected dtype float32, got float64"""),
])
def test_pytree_boundary_checks_each_leaf_and_names_its_path(change, error, message):
    params, x = two_layers_data()
    with pytest.raises(error, match=r"^two_layers\(\) " + message):
        two_layers(change(params), x, 1.0)


def test_bad_pytree_annotation_names_the_path():
    def f(p: {"w": lt.Tensor[3], "b": [lt.Tensor[2], np.float32]}):
        return p["w"]

    with pytest.raises(TypeError, match=r"""parameter 'p'\["b"\]\[1\]: annotation .* is not a staged type"""):
        lt.compile(f).ir

    def g(p: {1: lt.Tensor[3]}):
        return p[1]

    with pytest.raises(TypeError, match="keys of a dict annotation must be strings, got 1"):
        lt.compile(g).ir


# ---------------------------------------------------------------- compile without annotations
def affine(x, w, b, scale):
    def loss(w, b):
        return lt.sum(lt.tanh(x @ w + b)) * scale
    return lt.value_and_grad(loss, argnums=(0, 1))(w, b)


unannotated_affine = lt.compile(affine)


def affine_reference(x, w, b, scale):
    x, w, b = (np.asarray(a, np.float64) for a in (x, w, b))
    h = np.tanh(x @ w + b)
    dpre = scale * (1 - h * h)
    return np.sum(h) * scale, (x.T @ dpre, dpre.sum(0))


def test_unannotated_compile_specialises_once_per_signature():
    f = unannotated_affine
    rng = np.random.default_rng(1)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    calls = [(f32(3, 4), f32(4, 2), f32(2), 0.5), (f32(6, 4), f32(4, 2), f32(2), 2.0),
             (f32(3, 4), f32(4, 2), f32(2), 1.5), (f32(6, 4), f32(4, 5), f32(5), np.float32(1.0))]
    for args in calls:
        value, (gw, gb) = f(*args)
        ref_value, (ref_gw, ref_gb) = affine_reference(*args)
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        np.testing.assert_allclose(gw, ref_gw, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(gb, ref_gb, rtol=1e-5, atol=1e-5)
    assert f.signatures == [
        "x: float32[3,4], w: float32[4,2], b: float32[2], scale: float32[]",
        "x: float32[6,4], w: float32[4,2], b: float32[2], scale: float32[]",
        "x: float32[6,4], w: float32[4,5], b: float32[5], scale: float32[]",
    ]
    # .ir and .cpp_source are those of the most recent call's signature
    assert f.ir.splitlines()[0].startswith("def affine(%in_x: float32[6,4], %in_w: float32[4,5]")
    f(*calls[0])
    assert f.ir.splitlines()[0].startswith("def affine(%in_x: float32[3,4], %in_w: float32[4,2]")
    assert len(f.signatures) == 3
    # keyword arguments and defaults bind as in Python
    np.testing.assert_allclose(f(calls[0][0], b=calls[0][2], w=calls[0][1], scale=0.5)[0], f(*calls[0])[0])
    with pytest.raises(TypeError, match=r"affine\(\): missing a required argument: 'scale'"):
        f(*calls[0][:3])


@lt.compile
def scalars_and_trees(flag, n, x, tree):
    return lt.where(flag, x * n, x) + tree["a"][0] * tree["b"]


def test_argument_types_from_numbers_arrays_and_nestings():
    f = scalars_and_trees
    x = np.arange(3, dtype=np.float32)
    tree = {"b": np.float32(2.0), "a": [np.ones(3, np.float32)]}
    np.testing.assert_allclose(f(True, 3, x, tree), x * 3 + 2)
    np.testing.assert_allclose(f(False, np.int32(3), x, tree), x + 2)  # the same signature
    np.testing.assert_allclose(f(np.bool_(True), 2.5, x, {"a": [np.ones(3, np.float32)], "b": 1.0}), x * 2.5 + 1)
    assert f.signatures == [
        'flag: bool[], n: int32[], x: float32[3], tree: {"a": [float32[3]], "b": float32[]}',
        'flag: bool[], n: float32[], x: float32[3], tree: {"a": [float32[3]], "b": float32[]}',
    ]
    with pytest.raises(TypeError, match=r"scalars_and_trees\(\) argument 'x': a float64 array cannot be staged; "
                                        r"convert it with .astype\(np.float32\)"):
        f(True, 3, x.astype(np.float64), tree)
    with pytest.raises(TypeError, match=r"""argument 'tree'\["a"\]\[0\]: cannot take a staged type from str"""):
        f(True, 3, x, {"a": ["no"], "b": 1.0})
    assert len(f.signatures) == 2  # rejected calls compile nothing


def test_annotations_fix_the_signature_and_mix_with_inferred_parameters():
    @lt.compile
    def fixed(x: lt.Tensor[3]):
        return x * 2.0

    assert fixed.signatures == ["x: float32[3]"]
    with pytest.raises(ValueError, match=r"fixed\(\) argument 'x': expected shape \(3,\), got \(4,\)"):
        fixed(np.ones(4, np.float32))

    @lt.compile
    def mixed(x: lt.Tensor[3], y):
        return x * lt.sum(y)

    np.testing.assert_allclose(mixed(np.ones(3, np.float32), np.ones((2, 2), np.float32)), np.full(3, 4.0))
    np.testing.assert_allclose(mixed(np.ones(3, np.float32), np.ones(5, np.float32)), np.full(3, 5.0))
    assert mixed.signatures == ["x: float32[3], y: float32[2,2]", "x: float32[3], y: float32[5]"]
    with pytest.raises(ValueError, match=r"mixed\(\) argument 'x': expected shape \(3,\), got \(4,\)"):
        mixed(np.ones(4, np.float32), np.ones(5, np.float32))


def test_a_new_signature_is_silent_by_default_and_logged_with_lantern_log(monkeypatch, capsys):
    def double(x):
        return x * 2.0

    f = lt.compile(double)
    monkeypatch.delenv("LANTERN_LOG", raising=False)
    f(np.ones(2, np.float32))
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv("LANTERN_LOG", "recompile")
    f(np.ones(2, np.float32))
    f(np.ones((2, 3), np.float32))
    f(np.ones(2, np.float32))
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["lantern: compiling double(x: float32[2,3]): new signature #2, x float32[2] -> float32[2,3]"]
    g = lt.compile(double)
    g(np.ones(7, np.float32))
    assert capsys.readouterr().err == "lantern: compiling double(x: float32[7]): first call\n"


def test_each_signature_is_built_once_and_found_in_the_disk_cache_by_a_new_process(fresh_cache):
    def halve(x):
        return x * 0.5

    f = lt.compile(halve)
    f(np.ones(2, np.float32))
    f(np.ones(3, np.float32))
    f(np.ones(2, np.float32))
    libraries = sorted(fresh_cache.rglob("*.so"))
    assert len(libraries) == 2
    stamps = [p.stat().st_mtime_ns for p in libraries]
    g = lt.compile(halve)  # as a new process would: nothing in memory
    np.testing.assert_allclose(g(np.ones(3, np.float32)), np.full(3, 0.5))
    assert sorted(fresh_cache.rglob("*.so")) == libraries
    assert [p.stat().st_mtime_ns for p in libraries] == stamps


# ---------------------------------------------------------------- train_step without annotations
def softmax_regression_step(W, b, x, y, lr):
    """One SGD step of cross_entropy(x @ W.T + b, y), in float64: (loss, W, b)."""
    W, b, x = (np.asarray(a, np.float64) for a in (W, b, x))
    logits = x @ W.T + b
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    d = p.copy()
    d[np.arange(n), y] -= 1
    d /= n
    return loss, W - lr * (d.T @ x), b - lr * d.sum(0)


def batch_of(n, seed):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 4)).astype(np.float32), "y": rng.integers(0, 3, n).astype(np.int32)}


def test_unannotated_train_step_compiles_per_batch_shape_and_shares_the_parameters():
    lt.manual_seed(0)
    model = lt.nn.Linear(4, 3)

    def loss_fn(model, batch):
        return lt.cross_entropy(model(batch["x"]), batch["y"])

    step = lt.train_step(model, loss_fn, lt.optim.SGD(model.parameters(), lr=0.5))
    for n, seed in [(8, 0), (5, 1), (8, 2), (5, 3)]:
        batch = batch_of(n, seed)
        want_loss, want_W, want_b = softmax_regression_step(model.weight.data, model.bias.data, batch["x"],
                                                            batch["y"], 0.5)
        loss = step(batch)
        assert isinstance(loss, float)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
        np.testing.assert_allclose(model.weight.data, want_W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.bias.data, want_b, rtol=1e-5, atol=1e-6)
    assert step.signatures == ['batch: {"x": float32[8,4], "y": int32[8]}', 'batch: {"x": float32[5,4], "y": int32[5]}']


def test_train_step_with_a_pytree_annotation_and_has_aux():
    lt.manual_seed(0)
    model = lt.nn.Linear(4, 3)

    def loss_fn(model, batch: {"x": lt.Tensor[8, 4], "y": lt.Tensor[8, "int32"]}):
        logits = model(batch["x"])
        return lt.cross_entropy(logits, batch["y"]), logits

    step = lt.train_step(model, loss_fn, lt.optim.SGD(model.parameters(), lr=0.5), has_aux=True)
    batch = batch_of(8, 4)
    W, b = model.weight.data.copy(), model.bias.data.copy()
    loss, logits = step(batch)
    want_loss, want_W, _ = softmax_regression_step(W, b, batch["x"], batch["y"], 0.5)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(logits, batch["x"].astype(np.float64) @ W.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.weight.data, want_W, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"""train_loss_fn\(\) argument 'batch\["x"\]': expected shape \(8, 4\)"""):
        step(batch_of(5, 0))


def test_checkpoint_of_an_unannotated_step_loads_before_its_first_call():
    """Generator states in a checkpoint are set once the first call has staged
    the step (before it, the step does not know which generators it draws from)."""
    lt.manual_seed(3)
    model = lt.nn.Linear(4, 3)
    opt = lt.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(model, x, y):
        return lt.cross_entropy(lt.dropout(model(x), 0.5), y)

    batch = batch_of(8, 5)
    first = lt.train_step(model, loss_fn, opt)
    first(batch["x"], batch["y"])
    saved = {k: np.array(v) for k, v in first.state_dict().items()}
    assert any(k.startswith("rng.") for k in saved)
    expected = first(batch["x"], batch["y"])
    lt.manual_seed(99)  # another random stream, another model state
    model.weight.data[:] = 0
    again = lt.train_step(model, loss_fn, opt)
    again.load_state_dict(saved)
    assert again(batch["x"], batch["y"]) == expected


# ---------------------------------------------------------------- packages and --standalone
PYTREE_MODEL = """
import numpy as np
import lantern_stage as lt

lt.manual_seed(0)
model = lt.nn.Linear(4, 3)


def loss_fn(model, batch):
    return lt.cross_entropy(model(batch["x"]), batch["y"])


EXAMPLE = {"x": np.zeros((8, 4), np.float32), "y": np.zeros(8, np.int32)}
step = lt.export(lt.train_step(model, loss_fn, lt.optim.SGD(model.parameters(), lr=0.5)), name="train",
                 example_args=(EXAMPLE,))


@lt.export
def predict(p: {"w": lt.Tensor[3, 4], "b": lt.Tensor[3]}, xs: (lt.Tensor[2, 4], lt.Tensor[2, 4])):
    return [xs[0] @ p["w"].T + p["b"], xs[1] @ p["w"].T + p["b"]]


def batches(path):
    for seed in range(3):
        r = np.random.default_rng(seed)
        yield ({"x": r.standard_normal((8, 4)).astype(np.float32), "y": r.integers(0, 3, 8).astype(np.int32)},)
"""

PACKAGE_RUN = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import pytree_model as m
W, b = np.array(m.params["weight"]), np.array(m.params["bias"])
data = sys.argv[1] + "/pytree_model/standalone/data/"
xs, ys = np.load(data + "batch.x.npy"), np.load(data + "batch.y.npy")
losses = [m.train({"x": x, "y": y}) for x, y in zip(xs, ys)]
r = np.random.default_rng(0)
p = {"w": r.standard_normal((3, 4)).astype(np.float32), "b": r.standard_normal(3).astype(np.float32)}
pair = (r.standard_normal((2, 4)).astype(np.float32), r.standard_normal((2, 4)).astype(np.float32))
out = m.predict(p, pair)
errors = []
for bad in [({"w": p["w"]}, pair), (p, pair[:1]), ({**p, "b": np.zeros(2, np.float32)}, pair)]:
    try:
        m.predict(*bad)
    except (TypeError, ValueError) as e:
        errors.append(f"{type(e).__name__}: {e}")
print(json.dumps(dict(W=W.tolist(), b=b.tolist(), losses=losses, errors=errors,
                      predict_ok=all(np.allclose(o, x @ p["w"].T + p["b"], rtol=1e-5, atol=1e-6)
                                     for o, x in zip(out, pair)))))
"""


def test_package_and_standalone_take_pytrees_and_example_args(tmp_path):
    import subprocess

    from test_cli import lantern, ok, python

    model = tmp_path / "pytree_model.py"
    model.write_text(PYTREE_MODEL)
    out = tmp_path / "out"
    proc = ok(lantern("compile", model, "-o", out, "--standalone", "--steps", "3"))
    assert 'train(batch: {"x": float32[8, 4], "y": int32[8]}) -> float' in proc.stdout
    assert ('predict(p: {"w": float32[3, 4], "b": float32[3]}, xs: (float32[2, 4], float32[2, 4])) '
            "-> [float32[2, 3], float32[2, 3]]") in proc.stdout
    folder = out / "pytree_model" / "standalone"
    assert sorted(p.name for p in (folder / "data").iterdir()) == ["batch.x.npy", "batch.y.npy"]

    result = json.loads(ok(python(PACKAGE_RUN, args=(out,))).stdout)
    W, b = np.array(result["W"]), np.array(result["b"])
    xs, ys = np.load(folder / "data" / "batch.x.npy"), np.load(folder / "data" / "batch.y.npy")
    for x, y, loss in zip(xs, ys, result["losses"]):
        want, W, b = softmax_regression_step(W, b, x, y, 0.5)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert result["predict_ok"]
    assert result["errors"] == [
        "ValueError: predict() argument 'p': missing key(s) 'b'",
        "ValueError: predict() argument 'xs': expected a tuple of 2, got 1 items",
        """ValueError: predict() argument 'p["b"]': expected shape (3,), got (2,)""",
    ]

    ok(subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True, timeout=600))
    ok(subprocess.run(["./pytree_model", "--steps", "3", "--out", "trained"], cwd=folder, capture_output=True,
                      text=True, timeout=120))
    np.testing.assert_allclose(np.load(folder / "trained" / "losses.npy"), result["losses"], rtol=1e-6)


def test_lantern_generates_nested_batches_and_explains_a_missing_example(tmp_path):
    from lantern_stage.cli import generated_batches
    from lantern_stage.export import Bundle, ModelError, run_model_file

    model = tmp_path / "pytree_gen.py"
    model.write_text(PYTREE_MODEL.replace("def batches(path):", "def _unused(path):"))
    exports, namespace = run_model_file(model)
    bundle = Bundle(exports, namespace, str(model))
    batches, _ = generated_batches(bundle.entry("train"), seed=0)
    (batch,) = next(batches)
    assert batch["x"].shape == (8, 4) and batch["x"].dtype == np.float32
    assert batch["y"].dtype == np.int32 and ((0 <= batch["y"]) & (batch["y"] < 3)).all()  # the class range
    p, xs = next(generated_batches(bundle.entry("predict"), seed=0)[0])
    assert set(p) == {"w", "b"} and isinstance(xs, tuple) and xs[1].shape == (2, 4)

    model.write_text(PYTREE_MODEL.replace("@lt.export\ndef predict", "@lt.export(example_args=({'w': 0, 'b': 0}, (0, 0)))\n"
                                                                    "def predict"))
    exports, namespace = run_model_file(model)
    with pytest.raises(ModelError, match=r"""entry point 'predict' .*: example_args do not fit: TypeError: predict\(\) argument 'p\["w"\]': """
                                         r"expected a numpy array float32\[3, 4\], got int$"):
        Bundle(exports, namespace, str(model))

    model.write_text(PYTREE_MODEL.replace(",\n                 example_args=(EXAMPLE,))", ")"))
    exports, namespace = run_model_file(model)
    with pytest.raises(ModelError, match=r"entry point 'train' .*pytree_gen.py:\d+\): input\(s\) 'batch' have no "
                                         r"annotation.*example_args="):
        Bundle(exports, namespace, str(model))


# ---------------------------------------------------------------- public names
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_all_lists_the_public_api_and_dir_shows_nothing_else():
    assert len(set(lt.__all__)) == len(lt.__all__)
    missing = [n for n in lt.__all__ if not hasattr(lt, n)]
    assert not missing, f"in lt.__all__ but not defined: {missing}"
    assert set(dir(lt)) == set(lt.__all__) | {n for n in vars(lt) if n.startswith("__") and n.endswith("__")}
    for internal in ("api", "staging", "runtime", "program", "ir", "getitem", "shape_full"):
        assert internal not in dir(lt)
    assert {"nn", "optim", "Tensor", "compile", "train_step"} <= set(lt.__all__)
    # Every public function of lantern_stage.api is listed (a new op must be added to __all__).
    from lantern_stage import api

    assert set(api.__all__) <= set(lt.__all__)


@pytest.mark.parametrize("name", lt.__all__)
def test_every_public_name_is_in_the_readme_and_has_a_docstring(name):
    assert re.search(rf"`lt\.{re.escape(name)}\b", README), f"README.md does not mention lt.{name}"
    doc = inspect.getdoc(getattr(lt, name)) or ""
    # An undocumented dataclass gets "Name(field: type, ...)" as its docstring.
    assert doc.strip() and not re.match(r"^\w+\(\w+: ", doc), f"lt.{name} has no docstring"


def test_readme_documents_the_names_the_issue_listed():
    reference = README[README.index("## API reference"):]
    for fragment in ("`lt.Int`", "`lt.Float`", "a.length", "has_aux", "`lt.cast", "f.signatures"):
        assert fragment in reference
