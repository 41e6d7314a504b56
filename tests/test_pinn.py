"""The physics-informed network (issue 11's workload): problem data, the peers'
twins against a closed-form float64 Laplacian and each other, and the lantern
model (benchmarks/models/pinn.py) against the PyTorch float64 twin.

The float64 reference: for a tanh MLP the second directional derivative has a
closed form by forward propagation of (value, tangent, second tangent) through
each layer, h = tanh(z): h' = (1 - h^2) z', h'' = (1 - h^2) z'' - 2 h (1 - h^2) z'^2.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import data, spec, weights  # noqa: E402

torch = pytest.importorskip("torch")

CFG = spec.make_config("pinn")


def closed_form_loss(w, batch) -> float:
    """The PINN loss in float64 numpy with the Laplacian in closed form."""
    W = [np.asarray(w[f"fc{k}.weight"], np.float64) for k in range(1, 5)]
    b = [np.asarray(w[f"fc{k}.bias"], np.float64) for k in range(1, 5)]

    def mlp(x, t=None):
        s = None if t is None else np.zeros_like(t)
        h = x
        for k in range(3):
            z = h @ W[k].T + b[k]
            h = np.tanh(z)
            if t is not None:
                tz, sz = t @ W[k].T, s @ W[k].T
                d = 1.0 - h * h
                t, s = d * tz, d * sz - 2.0 * h * d * tz * tz
        return h @ W[3].T + b[3], (None if s is None else s @ W[3].T)

    xi = np.asarray(batch.xi, np.float64)
    lap = sum(mlp(xi, np.tile(e, (len(xi), 1)))[1] for e in np.eye(2))
    ub, _ = mlp(np.asarray(batch.xb, np.float64))
    return float(np.mean((lap - batch.f) ** 2) + CFG.boundary_weight * np.mean((ub - batch.g) ** 2))


# ----------------------------------------------------------------------------- problem data

def test_poisson_batches_are_seeded_points_of_the_unit_square():
    b = data.poisson_batch(3, CFG.batch, CFG.boundary)
    assert b.xi.shape == (1024, 2) and b.f.shape == (1024, 1) and b.xb.shape == (256, 2) and b.g.shape == (256, 1)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in b)
    assert ((b.xi > 0) & (b.xi < 1)).all()
    on_edge = (b.xb == 0) | (b.xb == 1)
    assert on_edge.any(axis=1).all() and np.abs(b.g).max() < 1e-6          # u = 0 on the boundary
    np.testing.assert_allclose(b.f[:, 0], -2 * np.pi ** 2 * np.sin(np.pi * b.xi[:, 0]) * np.sin(np.pi * b.xi[:, 1]),
                               rtol=1e-5, atol=1e-5)
    again, other = data.poisson_batch(3), data.poisson_batch(4)
    assert all(np.array_equal(x, y) for x, y in zip(b, again)) and not np.array_equal(b.xi, other.xi)
    grid = data.poisson_grid(11)
    assert grid.shape == (121, 2) and data.relative_l2(data.poisson_exact(grid), grid) < 1e-12
    with pytest.raises(ValueError, match="multiple of 4"):
        data.poisson_batch(0, 8, 6)


def test_exact_solution_satisfies_the_equation():
    x = data.poisson_batch(0).xi.astype(np.float64)
    h = 1e-4
    lap = sum((data.poisson_exact(x + h * e) - 2 * data.poisson_exact(x) + data.poisson_exact(x - h * e)) / h ** 2
              for e in np.eye(2))
    np.testing.assert_allclose(lap, data.poisson_source(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the peers

def _twin(name):
    from benchmarks.frameworks import Framework
    fw = Framework(name)
    ok, why = fw.available()
    if not ok:
        pytest.skip(why)
    return fw.build("pinn", weights.init_weights(CFG), CFG)


def _train(trainer, steps):
    prep = getattr(trainer, "prepare", lambda b: b)
    return np.array([trainer.step(prep(data.poisson_batch(k))) for k in range(steps)])


def test_torch_twin_matches_the_closed_form_in_float64():
    from benchmarks.frameworks.torch_models import from_weights
    w = weights.init_weights(CFG)
    net = from_weights("pinn", w, CFG).double()
    for k in range(2):
        batch = data.poisson_batch(k)
        got = float(net(*(torch.from_numpy(a).double() for a in batch)).detach())
        assert got == pytest.approx(closed_form_loss(w, batch), rel=1e-12)


def test_torch_func_agrees_with_pytorch_eager():
    """Same weights, same points: the first losses agree to 1e-5 (first step)
    and 1e-4 (three Adam steps), and so do the weights. (TF and JAX: in
    test_benchmarks_smoke's twin parity, parametrised over every model.)"""
    ref, got = _twin("torch"), _twin("torch_func")
    l_ref, l_got = _train(ref, 3), _train(got, 3)
    assert l_got[0] == pytest.approx(l_ref[0], rel=1e-5)
    np.testing.assert_allclose(l_got, l_ref, rtol=1e-4)
    assert weights.max_rel_diff(got.weights(), ref.weights()) < 1e-4


def test_first_loss_is_the_closed_form_one():
    assert _train(_twin("torch"), 1)[0] == pytest.approx(closed_form_loss(weights.init_weights(CFG),
                                                                           data.poisson_batch(0)), rel=1e-5)


# ----------------------------------------------------------------------------- lantern_stage

import lantern_stage as lt  # noqa: E402

needs_jvp = pytest.mark.skipif(not hasattr(lt, "jvp"),
                               reason="this lantern_stage has no lt.jvp yet (issue 11, higher-order AD)")

_LANTERN: dict = {}


def lantern_trainer(laplacian):
    """The lantern PINN trainer, built once per session, reset to its initial state."""
    from benchmarks.models import pinn
    if laplacian not in _LANTERN:
        trainer = pinn.build(weights.init_weights(CFG), CFG, laplacian=laplacian)
        _LANTERN[laplacian] = (trainer, {k: v.copy() for k, v in trainer.train_step.state_dict().items()})
    trainer, initial = _LANTERN[laplacian]
    trainer.train_step.load_state_dict(initial)
    return trainer


def torch64_twin():
    from benchmarks.frameworks.torch_models import TorchTrainer, from_weights
    twin = TorchTrainer("pinn", from_weights("pinn", weights.init_weights(CFG), CFG).double(), CFG)
    twin.prepare = lambda b: tuple(torch.from_numpy(a).double() for a in b)
    return twin


@needs_jvp
@pytest.mark.parametrize("laplacian", ["jvp", "grad"])
def test_lantern_laplacian_matches_the_closed_form(laplacian):
    """The Laplacian alone, compiled: nested lt.jvp (forward over forward) or
    nested lt.grad (reverse over reverse) against the float64 closed form."""
    from benchmarks.models.pinn import PoissonPINN
    w = weights.init_weights(CFG)
    model = PoissonPINN(CFG.hidden, laplacian, CFG.boundary_weight)
    model.load_state_dict(w)

    @lt.compile
    def lap(x: lt.Tensor[64, 2]):
        return model.laplacian(x)

    x = data.poisson_batch(0).xi[:64]
    W = {k: np.asarray(v, np.float64) for k, v in w.items()}
    lap_ref = _closed_form_laplacian(W, x)
    np.testing.assert_allclose(np.asarray(lap(x), np.float64), lap_ref, rtol=1e-4, atol=1e-4 * np.abs(lap_ref).max())


def _closed_form_laplacian(W, x):
    lap = np.zeros((len(x), 1))
    for e in np.eye(2):
        h, t, s = np.asarray(x, np.float64), np.tile(e, (len(x), 1)), np.zeros((len(x), 2))
        for k in (1, 2, 3):
            z, tz, sz = h @ W[f"fc{k}.weight"].T + W[f"fc{k}.bias"], t @ W[f"fc{k}.weight"].T, s @ W[f"fc{k}.weight"].T
            h = np.tanh(z)
            d = 1.0 - h * h
            t, s = d * tz, d * sz - 2.0 * h * d * tz * tz
        lap += s @ W["fc4.weight"].T
    return lap


@needs_jvp
@pytest.mark.parametrize("laplacian", ["jvp", "grad"])
def test_lantern_training_steps_match_pytorch_float64(laplacian):
    """First-step loss and five Adam steps of the compiled lantern step
    (forward, Laplacian, backward, update in one call) against the float64
    PyTorch twin (autograd.grad with create_graph), and the weights after them."""
    trainer, twin = lantern_trainer(laplacian), torch64_twin()
    ours = _train(trainer, 5)
    theirs = _train(twin, 5)
    assert ours[0] == pytest.approx(theirs[0], rel=1e-5)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    assert weights.max_rel_diff(trainer.weights(), twin.weights()) < 1e-4


@needs_jvp
def test_lantern_jvp_and_grad_formulations_agree():
    a, b = lantern_trainer("jvp"), lantern_trainer("grad")
    np.testing.assert_allclose(_train(a, 3), _train(b, 3), rtol=1e-5)
    assert weights.max_rel_diff(a.weights(), b.weights()) < 1e-5


def _mlp64(w, x):
    h = np.asarray(x, np.float64)
    for k in (1, 2, 3):
        h = np.tanh(h @ np.asarray(w[f"fc{k}.weight"], np.float64).T + w[f"fc{k}.bias"])
    return h @ np.asarray(w["fc4.weight"], np.float64).T + w["fc4.bias"]


@needs_jvp
def test_lantern_pinn_learns():
    """100 steps: the loss falls by an order of magnitude and the solution error with it."""
    trainer = lantern_trainer("jvp")
    losses = _train(trainer, 100)
    assert np.isfinite(losses).all() and losses[-10:].mean() < 0.1 * losses[:10].mean()
    grid = data.poisson_grid(21)
    before = data.relative_l2(_mlp64(weights.init_weights(CFG), grid), grid)
    after = data.relative_l2(_mlp64(trainer.weights(), grid), grid)
    assert after < 0.5 * before


@needs_jvp
@pytest.mark.slow
def test_harness_runs_the_pinn_row(tmp_path):
    """`python -m benchmarks.run --only pinn`: the lantern row runs and its
    first-step loss agrees with PyTorch eager's; the chart and table have the row."""
    import json
    import os
    import subprocess
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--only", "pinn",
                           "--frameworks", "lantern,torch", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["summary"]["pinn"]["frameworks"]
    assert rows["lantern"]["status"] == "ok", rows["lantern"]
    assert rows["torch"]["status"] == "ok" and rows["torch"]["first_loss_rel_diff"] < 1e-5
    assert "## pinn" in (out / "results.md").read_text()
    assert (out / "figure6.png").stat().st_size > 1000 and (out / "loss_pinn.png").stat().st_size > 1000


def _gemm_shapes(src):
    """Every gemm call of a generated source as its sizes M, N, K, sorted."""
    return [sorted(int(a) for a in c.split(",")[2:5]) for c in re.findall(r"\bgemm\(([^;]*)\)", src)]


@needs_jvp
def test_the_jvp_step_stages_one_gemm_per_distinct_product(monkeypatch):
    """Hash-consing (staging.py): the inner tangent of jvp-of-jvp is the outer
    one and the primal is shared by both directions, so the step has the
    products of 5 streams per hidden layer (primal, 2 tangents, 2 second
    derivatives), not 8: at most 30 large 1024x64x64 gemms (10 forward, 20
    backward) and 53 in all, and fewer than the same step staged with consing
    off, every op anew (48 and 77). Upper bounds: a better pass may remove more."""
    from benchmarks.models import pinn
    from lantern_stage import staging
    consed = _gemm_shapes(lantern_trainer("jvp").train_step.cpp_source)
    monkeypatch.setattr(staging.Builder, "cons_table", lambda self: {})   # nothing recorded, nothing found
    unconsed = _gemm_shapes(pinn.build(weights.init_weights(CFG), CFG, laplacian="jvp").train_step.cpp_source)
    large = [[c for c in calls if c == [64, 64, CFG.batch]] for calls in (consed, unconsed)]
    assert len(consed) <= 53 and len(consed) < len(unconsed), (len(consed), len(unconsed))
    assert len(large[0]) <= 30 and len(large[0]) < len(large[1]), (len(large[0]), len(large[1]))
