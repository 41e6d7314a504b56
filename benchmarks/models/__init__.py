"""The benchmark models written in lantern_stage.

Each module (`rnn`, `lstm`, `cnn`, `treelstm`, `transformer`, `pinn`; `treelstm_mb25`, the
TreeLSTM with one update per 25 trees) defines the model as an
`lt.nn.Module` with PyTorch's parameter names and layouts, and exposes

    build(weights: dict, cfg: benchmarks.spec.Config) -> LanternTrainer

whose `step(batch) -> float` runs one compiled training step (forward,
backward, clipping and the optimizer update, all in C++) and `weights()`
returns the current weights under PyTorch's names.  Each module also runs on
its own: ``python -m benchmarks.models.rnn --steps 500 --data PATH``.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict

import numpy as np


class LanternTrainer:
    """The benchmark harness's trainer interface over an `lt.train_step`."""

    def __init__(self, model, train_step, prepare: Callable):
        self.model = model
        self.train_step = train_step
        self._prepare = prepare

    def prepare(self, batch):
        """A data batch (`benchmarks.data` type) -> the compiled step's arguments."""
        return self._prepare(batch)

    def step(self, batch) -> float:
        """One training step on a prepared batch (a raw one is prepared first)."""
        if hasattr(batch, "_fields"):  # a benchmarks.data NamedTuple, not prepared yet
            batch = self._prepare(batch)
        return self.train_step(*batch)

    def precompile(self, batches=()) -> None:
        """Stage, generate and build the C++ step (g++ or the cache) without running it."""
        self.train_step.entry  # noqa: B018 - the property builds

    def weights(self) -> Dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.model.state_dict().items()}


def config_and_data(model: str, data=None, **overrides):
    """(cfg, batches, source): the paper's configuration of `model` (with
    `overrides`), a function returning a fresh iterator over its training
    batches in the benchmark's order (`benchmarks.data.model_data`), and where
    the data came from."""
    from benchmarks import data as bdata
    from benchmarks.spec import TEXT_MODELS, make_config

    if model in TEXT_MODELS:
        cfg = make_config(model, vocab=len(bdata.load_text(data).vocab), **overrides)
    else:
        cfg = make_config(model, **overrides)
    train_data = bdata.model_data(cfg, data)
    return cfg, train_data.batches, train_data.source


def main(model: str, build: Callable, argv=None) -> list:
    """The command line of one model: train for --steps on --data with a
    progress bar; print the first and last losses."""
    from tqdm import tqdm

    from benchmarks.weights import init_weights

    p = argparse.ArgumentParser(prog=f"python -m benchmarks.models.{model}",
                                description=f"Train the lantern_stage {model} benchmark model.")
    p.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    p.add_argument("--data", default=None, help="data file, or a data directory as the harness's --data (default: the shared data, or generated data)")
    p.add_argument("--dropout", action="store_true", help="cnn: dropout after fc1, as the PyTorch example")
    args = p.parse_args(argv)

    cfg, batches, source = config_and_data(model, args.data, **({"dropout": True} if args.dropout else {}))
    batches = batches()

    t0 = time.perf_counter()
    trainer = build(init_weights(cfg), cfg)
    trainer.precompile()
    print(f"{model}: data {source}; staged and built in {time.perf_counter() - t0:.1f} s")
    losses = []
    bar = tqdm(range(args.steps), desc=model, unit="step")
    t0 = time.perf_counter()
    for _ in bar:
        losses.append(trainer.step(trainer.prepare(next(batches))))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    elapsed = time.perf_counter() - t0
    if losses:
        print(f"{model}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {args.steps} steps "
              f"({elapsed / args.steps * 1e3:.2f} ms/step)")
    return losses
