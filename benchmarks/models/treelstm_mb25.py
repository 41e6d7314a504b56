"""The TreeLSTM trained as Tai et al. train it: one update per minibatch of 25 trees.

The model is `benchmarks.models.treelstm`'s, unchanged (batch-1 CPS recursion,
one tree per call); the step is `lt.train_step(..., accumulate=25)`: every call
adds one tree's gradient into the step's flat gradient buffer and returns that
tree's loss, and every 25th call applies one Adagrad update with the mean of
the 25 gradients (Tai et al. divide the minibatch's gradient by its size; the
peers of this row do the same). A harness step is one minibatch, i.e. 25 calls;
its loss is the mean of the 25 trees' losses, the minibatch objective.

What accumulating costs per call: nothing beyond the tree itself. The backward
code adds into the step's flat accumulator directly (no zeroed gradient buffers,
no pass adding them in), and the deferred weight-gradient rows of the 25 calls
are added by the 25th, as one gemm over all their rows (`lt.train_step`).

What this does not do (issue 14, item 3): batch the recursion across the trees
of a minibatch. Each call still runs one tree's matrix-vector products, which
read the whole 750 x 300 (or 450 x 300) matrix per node and are ~2/3 of the
time. The design that would (benchmarks/NOTES.md, "Minibatched TreeLSTM"): a
transformation of `@lt.recursive` functions whose recursion is structural over
an IntArray tree, splitting the staged body at the recursive calls into a
per-node "after the children" block; the K calls of an accumulating step become
one call over a forest of K trees; a runtime level schedule (node ids by
height, as `benchmarks/frameworks/tree_schedule.py` computes for TF and JAX)
runs the block once per level over gathered rows (one gemm, the gates as one
fused loop over [n, H], a scatter), and the backward runs the levels in reverse
with the gathers transposed into scatter-adds.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from benchmarks.models.treelstm import tree_step


class MinibatchTrainer:
    """The harness's trainer interface over an accumulating `lt.train_step`:
    a batch is a list of trees, one update."""

    def __init__(self, model, train_step):
        self.model = model
        self.train_step = train_step

    def prepare(self, trees):
        """A list of `benchmarks.data.Tree` -> each tree's step arguments."""
        return [(t.labels, t.words, t.lch, t.rch) for t in trees]

    def step(self, trees) -> float:
        """One update: every tree's call adds its gradient, the last one applies them."""
        if len(trees) != self.train_step.accumulate:
            raise ValueError(f"a minibatch has {self.train_step.accumulate} trees (one update), got {len(trees)}")
        if trees and hasattr(trees[0], "_fields"):   # benchmarks.data trees, not prepared yet
            trees = self.prepare(trees)
        step = self.train_step
        return sum(step(*t) for t in trees) / len(trees)

    def precompile(self, batches=()) -> None:
        self.train_step.entry  # noqa: B018 - the property builds

    def weights(self) -> Dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.model.state_dict().items()}


def build(weights, cfg) -> MinibatchTrainer:
    return MinibatchTrainer(*tree_step(weights, cfg, accumulate=cfg.batch, name="treelstm_mb25_step"))
