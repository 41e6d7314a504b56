"""The benchmark models in lantern_stage (benchmarks/models) against their
PyTorch twins (benchmarks/frameworks/torch_models): same initial weights
(benchmarks/weights), same data, dropout off.

What float32 allows.  The Adagrad models are ill-conditioned in float32 at
the paper's settings, in PyTorch itself: Adagrad's first updates are
lr * g / (|g| + 1e-10) per weight, so a weight whose gradient is tiny and
carries ~1% round-off moves by a visibly different amount, and the vanilla
RNN at lr 0.1 then amplifies any difference about tenfold per step.  Measured
against a float64 PyTorch twin, float32 PyTorch's own RNN losses drift past
1e-4 after 6 steps and its weights are off by ~50% after 20; a hand-written
PyTorch LSTM cell (same math, other op order) differs from nn.LSTMCell by
7e-4 in the weights after 20 steps.  So:

* at the paper's settings, the losses agree to 1e-4 for every step on which
  float32 PyTorch agrees with float64 PyTorch to 1e-5 (all 20 for lstm, cnn
  and treelstm; the first 6 for rnn), and the weights as closely as a
  different float32 op order allows;
* with Adagrad's learning rate divided by 10 (a captured array: the very
  same compiled step), where float32 is well-conditioned, the first 20
  losses and the weights after 20 steps agree to 1e-4, as they do for the
  CNN (SGD) at the paper's settings.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.frameworks.torch_models import TorchTrainer, from_weights  # noqa: E402
from benchmarks.models import config_and_data  # noqa: E402
from benchmarks.weights import init_weights, max_rel_diff  # noqa: E402

import lantern_stage as lt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = ("rnn", "lstm", "cnn", "treelstm", "transformer")
STEPS = 20


def config(model, **overrides):
    cfg, batches, _ = config_and_data(model, **overrides)
    return cfg, batches


_BUILT: dict = {}


def lantern_trainer(model):
    """The model's lantern trainer, built once per session, reset to its
    initial state (weights and optimizer state)."""
    if model not in _BUILT:
        cfg, batches = config(model)
        trainer = importlib.import_module(f"benchmarks.models.{model}").build(init_weights(cfg), cfg)
        initial = {k: v.copy() for k, v in trainer.train_step.state_dict().items()}
        _BUILT[model] = (cfg, batches, trainer, initial)
    cfg, batches, trainer, initial = _BUILT[model]
    trainer.train_step.load_state_dict(initial)
    return cfg, batches, trainer


def to64(batch):
    return [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in batch]


def train_side_by_side(model, lr=None, float64=False):
    """STEPS steps of lantern and the PyTorch twin (and a float64 twin) on the
    same batches: (losses [lantern, torch(, torch64)], weights likewise)."""
    cfg, batches, trainer = lantern_trainer(model)
    if lr is not None:
        trainer.train_step.optimizer.lr = lr
        cfg = dataclasses.replace(cfg, lr=lr)
    weights = init_weights(cfg)
    twins = [TorchTrainer(model, from_weights(model, weights, cfg), cfg)]
    if float64:
        twins.append(TorchTrainer(model, from_weights(model, weights, cfg).double(), cfg))
    losses = [[] for _ in range(1 + len(twins))]
    it = batches()
    for _ in range(STEPS):
        batch = next(it)
        losses[0].append(trainer.step(trainer.prepare(batch)))
        prepared = twins[0].prepare(batch)
        for k, twin in enumerate(twins, 1):
            losses[k].append(twin.step(to64(prepared) if k == 2 else prepared))
    return np.array(losses), [trainer.weights()] + [t.weights() for t in twins]


def rel(a, b):
    return np.abs(a - b) / np.abs(b)


@pytest.mark.parametrize("model", MODELS)
def test_losses_match_pytorch_at_the_paper_settings(model):
    (ours, theirs, exact), (w_ours, w_theirs, w_exact) = train_side_by_side(model, float64=True)
    # The steps on which the float32 question is well posed: float32 PyTorch
    # agrees with float64 PyTorch to 1e-5.
    posed = int(np.argmax(np.append(rel(theirs, exact) > 1e-5, True)))
    assert posed >= (6 if model == "rnn" else STEPS), rel(theirs, exact)
    np.testing.assert_allclose(ours[:posed], theirs[:posed], rtol=1e-4)
    assert ours[-5:].mean() < ours[:5].mean()  # and it learns
    if model == "cnn":
        assert max_rel_diff(w_ours, w_theirs) < 1e-4
    elif model == "transformer":
        # Adam's first steps are lr * g / (|g| + eps) too: the weights are as
        # close to float64 PyTorch's as float32 PyTorch's are (up to x3).
        assert max_rel_diff(w_ours, w_exact) < 3 * max_rel_diff(w_theirs, w_exact) + 1e-6
    elif model != "rnn":  # see the module docstring: a different float32 op order
        assert max_rel_diff(w_ours, w_theirs) < 1e-2


# Not the transformer: Adam, like Adagrad, is ill-conditioned in float32 at
# its first steps whatever the learning rate (its update is lr * g / (|g| + eps)
# however small g is); the test above checks it against float64 PyTorch.
@pytest.mark.parametrize("model", [m for m in MODELS if m != "transformer"])
def test_first_20_losses_and_weights_match_pytorch(model):
    cfg, _, _ = lantern_trainer(model)
    lr = cfg.lr / 10 if cfg.optimizer == "adagrad" else None
    (ours, theirs), (w_ours, w_theirs) = train_side_by_side(model, lr=lr)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert max_rel_diff(w_ours, w_theirs) < 1e-4
    assert set(w_ours) == set(w_theirs)


# ---------------------------------------------------------------- checkpoints
RESUME = r"""
import sys
import numpy as np
import lantern_stage as lt
from benchmarks.models import config_and_data
from benchmarks.models import {model} as module
from benchmarks.weights import init_weights

lt.manual_seed(999)  # a different stream: the checkpoint must restore the generator
cfg, batches, _ = config_and_data("{model}", **{overrides})
trainer = module.build(init_weights(cfg, seed=1), cfg)  # different weights: the checkpoint restores them
trainer.train_step.load(sys.argv[1])
it = batches()
for _ in range({start}):
    next(it)
losses = [trainer.step(trainer.prepare(next(it))) for _ in range({start}, {stop})]
np.savez(sys.argv[2], losses=np.array(losses), **trainer.weights())
"""


@pytest.mark.parametrize("model, overrides", [("lstm", {}), ("cnn", {"dropout": True})],
                         ids=["lstm-adagrad", "cnn-sgd-dropout"])
def test_checkpoint_resumes_exactly_in_a_fresh_process(model, overrides, tmp_path):
    """10 steps, save, load into a new process, 10 more == 20 uninterrupted
    steps, bit for bit (weights, optimizer state, the dropout generator)."""
    lt.manual_seed(0)
    cfg, batches = config(model, **overrides)
    trainer = importlib.import_module(f"benchmarks.models.{model}").build(init_weights(cfg), cfg)
    ckpt = tmp_path / "ckpt.npz"
    losses = []
    it = batches()
    for i in range(STEPS):
        batch = next(it)
        if i == STEPS // 2:
            trainer.train_step.save(ckpt)
        losses.append(trainer.step(trainer.prepare(batch)))
    if overrides.get("dropout"):
        assert "rng.0" in trainer.train_step.state_dict()

    script = RESUME.format(model=model, overrides=overrides, start=STEPS // 2, stop=STEPS)
    out = tmp_path / "resumed.npz"
    proc = subprocess.run([sys.executable, "-c", script, str(ckpt), str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = np.load(out)
    np.testing.assert_array_equal(resumed["losses"], losses[STEPS // 2:])
    for k, v in trainer.weights().items():
        np.testing.assert_array_equal(resumed[k], v, err_msg=k)


# ---------------------------------------------------------------- running on their own
def test_a_model_runs_from_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.models.treelstm", "--steps", "5"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "treelstm: loss" in proc.stdout and "5/5" in proc.stderr  # the tqdm bar


def test_char_lstm_example_trains_samples_and_plots(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("char_lstm", REPO / "examples" / "char_lstm.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    png = tmp_path / "loss.png"
    losses = example.main([str(png), "--steps", "60", "--sample", "60"])
    assert np.mean(losses[-10:]) < 0.8 * losses[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "after training:" in out and "loss curve written" in out


def test_char_transformer_example_trains_samples_and_plots(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("char_transformer", REPO / "examples" / "char_transformer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    png = tmp_path / "loss.png"
    losses = example.main([str(png), "--steps", "60", "--sample", "40"])
    assert np.mean(losses[-10:]) < 0.8 * losses[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "after training" in out and " | " in out and "loss curve written" in out
