"""The physics-informed network (issue 11's workload): problem data, the peers'
twins against a closed-form float64 Laplacian and each other, and the lantern
model (benchmarks/models/pinn.py) against the PyTorch float64 twin.

The float64 reference: for a tanh MLP the second directional derivative has a
closed form by forward propagation of (value, tangent, second tangent) through
each layer, h = tanh(z): h' = (1 - h^2) z', h'' = (1 - h^2) z'' - 2 h (1 - h^2) z'^2.
"""
from __future__ import annotations

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
    and 1e-4 (five Adam steps), and so do the weights. (TF and JAX: in
    test_benchmarks_smoke's twin parity, parametrised over every model.)"""
    ref, got = _twin("torch"), _twin("torch_func")
    l_ref, l_got = _train(ref, 5), _train(got, 5)
    assert l_got[0] == pytest.approx(l_ref[0], rel=1e-5)
    np.testing.assert_allclose(l_got, l_ref, rtol=1e-4)
    assert weights.max_rel_diff(got.weights(), ref.weights()) < 1e-4


def test_first_loss_is_the_closed_form_one():
    assert _train(_twin("torch"), 1)[0] == pytest.approx(closed_form_loss(weights.init_weights(CFG),
                                                                           data.poisson_batch(0)), rel=1e-5)
