"""The TreeLSTM trained as Tai et al. train it: one update per minibatch of 25 trees.

Same model, sizes and weights as `benchmarks.models.treelstm`; the 25 trees of
a minibatch are trained as one forest, level by level, with the recursion of
the CPS backpropagation running over the levels instead of over the nodes.

Level batching.  Nodes of equal height (0 for leaves, 1 + the larger child's
otherwise) of all 25 trees do not depend on each other, so one level is one
matrix product over its rows instead of one matrix-vector product per node
(what DyNet's autobatching finds at run time, and what the TF and JAX twins
are written as: `benchmarks/frameworks/tree_schedule.py`).  The schedule
renumbers the forest's nodes (leaves first, then level by level) so that a
level's nodes are consecutive rows of four captured state arrays (h, c and
their gradients, [capacity, hidden]); each level is cut into chunks whose
sizes are in `CHUNK_SIZES` (greedily, largest first: no padding), and the
staged step compiles the cell once per chunk size.  A node need not run at
its height: anywhere from there to one level below its parent's latest will
do, and `tree_schedule.slack_schedule` uses that slack to give the levels
widths of few chunks (18.3 inner chunks per SST update instead of 46.2, the
chunks of 1 to 8 rows, which read U as a 48-row chunk does, down from 32.5
to 4.2).

Backpropagation with callbacks over chunks.  The step is a staged recursive
function `run(k)` over the chunk list: chunk k's forward gathers its
children's rows from the h and c arrays, computes its nodes' h, c and loss and
writes their rows; then it calls `run(k + 1)`, the rest of the forest; when
that returns, every parent of chunk k has run its backward and added into the
gradient rows of chunk k's nodes, so chunk k reads them, runs its own backward
(`lt.value_and_grad_into` of the chunk's pairing with those cotangents, the
weight gradients added straight into the accumulators) and adds its children's
gradient rows in turn.  The C++ call stack holds every chunk's activations
until its backward: the paper's `fwd; k(y); bwd`, with a chunk of rows where
the batch-1 model has a node.  The forward inside the pairing is the chunk's
forward again, which hash-consing merges with the one already computed.

Compared with the batch-1 recursion under `lt.train_step(..., accumulate=25)`
(`build_accumulating`, kept for the A/B and the tests): the same gradient up
to float32 summation order (tests/test_benchmarks_smoke.py checks both against float64), with level-sized
products instead of ~37 matrix-vector products per tree, each reading the
whole 750 x 300 (or 450 x 300) matrix.  What this does not do: find the
batching itself from the batch-1 `@lt.recursive` model (a compile-time
autobatching of structural recursion: the design is in benchmarks/NOTES.md,
"Minibatched TreeLSTM"); the cell is written over rows here, as for TF and JAX.

`build_per_tree` trains the batch-1 model (one update per tree) the same way,
as a forest of one tree: the harness times it beside the recursion over the
nodes and counts the faster.
"""
from __future__ import annotations

import functools
from typing import Dict, Sequence

import numpy as np

import lantern_stage as lt
from lantern_stage.autodiff import value_and_grad_into
from lantern_stage.ops.registry import as_rep

from benchmarks.data import Tree
from benchmarks.frameworks.tree_schedule import CHUNK_SIZES, TREE_CHUNK_SIZES, chunk_sizes, slack_schedule
from benchmarks.models.treelstm import TreeLSTM, tree_step

LEAF, INNER = 0, 1


class Forest:
    """A minibatch of trees as the level-batched step's arguments: per state
    row (leaves first, then the inner nodes level by level) its word, label and
    children's rows; per chunk its kind (LEAF / INNER), first row and size."""

    def __init__(self, trees, sizes: Sequence[int] = CHUNK_SIZES):
        s = slack_schedule(list(trees), sizes)
        n_leaves, n = len(s.leaf_words), len(s.labels)
        self.rows = n
        self.words = np.zeros(n, np.int32)
        self.words[:n_leaves] = s.leaf_words
        self.left = np.zeros(n, np.int32)
        self.right = np.zeros(n, np.int32)
        self.left[n_leaves:], self.right[n_leaves:] = s.left, s.right
        self.labels = s.labels.astype(np.int32)
        kinds, starts, lengths = [], [], []
        groups = [(LEAF, 0, n_leaves)] + [(INNER, n_leaves + int(a), int(b - a))
                                          for a, b in zip(s.bounds[:-1], s.bounds[1:])]
        for kind, start, count in groups:
            for size in chunk_sizes(count, sizes):
                kinds.append(kind)
                starts.append(start)
                lengths.append(size)
                start += size
        self.kinds = np.array(kinds, np.int32)
        self.starts = np.array(starts, np.int32)
        self.sizes = np.array(lengths, np.int32)
        # The weight-gradient rows of every chunk of a kind, whatever its
        # size, are logged over the update and added in one product per
        # weight (passes/defer_outer.py: a log per gradient, shared by the
        # scopes of all sizes): the kind's first backward (its last chunk:
        # backward runs from the root down) starts the logs afresh, its last
        # (its first chunk) adds them into the gradients.  W_out's gradient is
        # logged by both kinds; the inner chunks come after every leaf chunk,
        # so their backward, which flushes it, ends before the leaves' starts.
        self.log_fresh = np.zeros(len(kinds), np.int32)
        self.log_flush = np.zeros(len(kinds), np.int32)
        first, last = {}, {}
        for k, kind in enumerate(kinds):
            first.setdefault(kind, k)
            last[kind] = k
        self.log_fresh[list(last.values())] = 1
        self.log_flush[list(first.values())] = 1

    def arguments(self) -> tuple:
        return (self.words, self.labels, self.left, self.right, self.kinds, self.starts, self.sizes,
                self.log_fresh, self.log_flush)


def leaf_rows(w, words, labels, hidden):
    """h, c and the summed loss of B leaves (rows)."""
    W_leaf, b_leaf, W_out, b_out = w
    i, o, u = lt.split(lt.linear(words, W_leaf, b_leaf), hidden, axis=-1)
    c = lt.sigmoid(i) * lt.tanh(u)
    h = lt.sigmoid(o) * lt.tanh(c)
    return h, c, lt.cross_entropy(lt.linear(h, W_out, b_out), labels, reduction="sum")


def inner_rows(w, hl, cl, hr, cr, labels, hidden):
    """h, c and the summed loss of B inner nodes from their children's rows."""
    U, b_inner, W_out, b_out = w
    z = lt.linear(lt.concat([hl, hr], axis=-1), U, b_inner)
    i, fl, fr, o, u = lt.split(z, hidden, axis=-1)
    c = lt.sigmoid(i) * lt.tanh(u) + lt.sigmoid(fl) * cl + lt.sigmoid(fr) * cr
    h = lt.sigmoid(o) * lt.tanh(c)
    return h, c, lt.cross_entropy(lt.linear(h, W_out, b_out), labels, reduction="sum")


class LevelBatchedTrainer:
    """The harness's trainer interface: a batch is a list of `cfg.batch` trees
    (or, when that is 1, one tree), one update (Adagrad with the mean of the
    trees' gradients; the loss returned is the mean of the trees' summed node
    losses, as `build_accumulating`'s).  `sizes` defaults to CHUNK_SIZES for
    minibatches and TREE_CHUNK_SIZES for single trees."""

    def __init__(self, model: TreeLSTM, cfg, capacity: int = 4096, sizes: Sequence[int] | None = None):
        if sizes is None:
            sizes = CHUNK_SIZES if cfg.batch > 1 else TREE_CHUNK_SIZES
        self.model, self.cfg, self.capacity, self.sizes = model, cfg, capacity, tuple(sizes)
        H = model.hidden
        self.h, self.c, self.dh, self.dc = (np.zeros((capacity, H), np.float32) for _ in range(4))
        self.opt = lt.optim.Adagrad(model.parameters(), lr=cfg.lr, eps=cfg.eps)
        self.opt.bind(model.named_parameters())
        self.grads = [np.zeros(p.shape, np.float32) for p in self.opt.params]
        self.per_update = cfg.batch
        self.step_fn = lt.compile(self._staged, name="treelstm_levels_step")

    def _staged(self, words: lt.IntArray, labels: lt.IntArray, left: lt.IntArray, right: lt.IntArray,
                kinds: lt.IntArray, starts: lt.IntArray, sizes: lt.IntArray, log_fresh: lt.IntArray,
                log_flush: lt.IntArray):
        m, H = self.model, self.model.hidden
        grads = {id(p): g for p, g in zip(self.opt.params, self.grads)}

        def chunk(kind, k, start, B, w):
            """Chunk k (B rows from `start`): forward, the rest of the forest, backward."""
            rows = lt.arange(B) + start
            y = labels[rows]
            if kind == LEAF:
                weights, params = [w[0], w[1], w[4], w[5]], (m.W_leaf, m.b_leaf, m.W_out, m.b_out)
                emb = lt.embedding(m.embedding, words[rows])
                kids, kid_rows = [], []
                cell = lambda ws, _: leaf_rows(ws, emb, y, H)   # noqa: E731
            else:
                weights, params = [w[2], w[3], w[4], w[5]], (m.U, m.b_inner, m.W_out, m.b_out)
                lrows, rrows = left[rows], right[rows]
                kid_rows = [lrows, lrows, rrows, rrows]
                kids = [lt.embedding(store, at) for store, at in zip((self.h, self.c) * 2, kid_rows)]
                cell = lambda ws, kd: inner_rows(ws, *kd, y, H)   # noqa: E731
            h, c, loss = cell(weights, kids)
            lt.assign(self.h, h, index=rows)
            lt.assign(self.c, c, index=rows)
            # The parents' backward (inside `rest`) adds into these rows: start
            # them at zero here, so that no update has to clear all `capacity`
            # rows (4.9 MB for 4096) for the next
            lt.assign(self.dh, lt.zeros((B, H)), index=rows)
            lt.assign(self.dc, lt.zeros((B, H)), index=rows)
            rest = run(k + 1, w)
            dh, dc = lt.embedding(self.dh, rows), lt.embedding(self.dc, rows)

            def pairing(p):
                h, c, loss = cell(p[:4], p[4:])
                return lt.sum(h * dh) + lt.sum(c * dc) + loss

            _, fresh = value_and_grad_into(pairing, weights + kids, [grads[id(p)] for p in params] + [None] * len(kids),
                                           logs=(log_fresh[k] != 0, log_flush[k] != 0))
            for store, at, d in zip((self.dh, self.dc) * 2, kid_rows, fresh[4:]):
                lt.assign(store, d, index=at, add=True)
            return rest + loss

        def by_size(chunk, k, start, size, sizes, w):
            B, rest = sizes[0], sizes[1:]
            if not rest:
                return chunk(k, start, B, w)
            return lt.cond(size == B, lambda: chunk(k, start, B, w),
                           lambda: by_size(chunk, k, start, size, rest, w))

        # The weights travel as arguments, not as captured arrays: a call of a
        # staged function counts as a write to every captured array (it may
        # assign them), which would make each chunk's backward recompute the
        # forward products instead of reusing them (hash-consing).  Nothing
        # inside `run` assigns a weight; the update comes after it.
        @lt.recursive
        def run(k, w):
            def one_chunk():
                start, size = starts[k], sizes[k]
                return lt.cond(kinds[k] == LEAF,
                               lambda: by_size(functools.partial(chunk, LEAF), k, start, size, self.sizes, w),
                               lambda: by_size(functools.partial(chunk, INNER), k, start, size, self.sizes, w))

            return lt.cond(k < kinds.length, one_chunk, lambda: lt.zeros(()))

        total = run(0, [m.W_leaf, m.b_leaf, m.U, m.b_inner, m.W_out, m.b_out])
        scale = 1.0 / self.per_update
        self.opt.update([as_rep(g) * scale for g in self.grads])
        for a in self.grads:
            lt.assign(a, 0.0)
        return total * scale

    def prepare(self, trees) -> Forest:
        if self.per_update == 1 and isinstance(trees, Tree):
            trees = [trees]
        if len(trees) != self.per_update:
            raise ValueError(f"a minibatch has {self.per_update} trees (one update), got {len(trees)}")
        forest = Forest(trees, self.sizes)
        if forest.rows > self.capacity:
            raise ValueError(f"a minibatch of {forest.rows} nodes exceeds the state arrays' capacity "
                             f"{self.capacity}; build the trainer with a larger capacity=")
        return forest

    def step(self, forest) -> float:
        if not isinstance(forest, Forest):
            forest = self.prepare(forest)
        return float(self.step_fn(*forest.arguments()))

    def precompile(self, batches=()) -> None:
        self.step_fn.entry  # noqa: B018 - the property builds

    def weights(self) -> Dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.model.state_dict().items()}


class MinibatchTrainer:
    """The batch-1 recursive model under an accumulating `lt.train_step`:
    every call adds one tree's gradient, every 25th applies the update."""

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


def build_accumulating(weights, cfg) -> MinibatchTrainer:
    return MinibatchTrainer(*tree_step(weights, cfg, accumulate=cfg.batch, name="treelstm_mb25_step"))


def build_per_tree(weights, cfg) -> LevelBatchedTrainer:
    """The batch-1 TreeLSTM (`benchmarks.models.treelstm`: one update per tree)
    level-batched: a forest of one tree, the nodes of a level in chunks of
    TREE_CHUNK_SIZES rows.  The harness times it beside the recursion over the
    nodes (`benchmarks.frameworks.lantern.variants`); the faster counts."""
    if cfg.batch != 1:
        raise ValueError(f"build_per_tree trains one tree per update, not {cfg.batch}")
    return build(weights, cfg)


def build(weights, cfg) -> LevelBatchedTrainer:
    model = TreeLSTM(cfg.embedding, cfg.hidden, cfg.classes)
    model.load_state_dict(weights)
    return LevelBatchedTrainer(model, cfg)
