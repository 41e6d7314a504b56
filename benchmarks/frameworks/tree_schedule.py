"""Level schedules of a tree for the batched TreeLSTM twins (TensorFlow, JAX).

Nodes of equal height (0 for leaves, 1 + the larger child height otherwise) do
not depend on each other, so a level can be computed as one batched matmul.
The schedule renumbers the nodes: leaves first, then each level in turn, so the
states computed so far are always a prefix of one state buffer.

`level_schedule` is the exact, unpadded form (for graphs with dynamic shapes);
`slack_schedule` the same with each inner node placed anywhere its slack allows
(the same number of levels, their widths chosen to cut into few chunks);
`padded_schedule` pads leaf count, level count and level width up to buckets so
that a compiler that needs static shapes (XLA) sees few distinct shapes.

Both take one tree or a minibatch (a list) of trees: a minibatch is scheduled as
one forest (`merge_trees`), so each level batches the nodes of that height of
every tree, which is what DyNet's autobatching finds in a minibatch's graph.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import numpy as np

from benchmarks.data import Tree, tree_levels


class LevelSchedule(NamedTuple):
    leaf_words: np.ndarray    # int32 [n_leaves] word ids, new order
    left: np.ndarray          # int32 [n_inner] new index of each inner node's left child
    right: np.ndarray         # int32 [n_inner]
    bounds: np.ndarray        # int32 [depth + 1] inner-node offsets of the levels
    labels: np.ndarray        # int32 [n] labels, new order (leaves, then inner by level)


class PaddedSchedule(NamedTuple):
    leaf_words: np.ndarray    # int32 [NL]  (padding: word 0)
    left: np.ndarray          # int32 [D, W] buffer row of the left child (padding: row 0)
    right: np.ndarray         # int32 [D, W]
    labels: np.ndarray        # int32 [NL + D*W] label of every buffer row (padding: 0)
    mask: np.ndarray          # float32 [NL + D*W] 1 for real nodes, 0 for padding


# ----------------------------------------------------------------------------- chunked levels
# (lantern_stage's level-batched step, benchmarks/models/treelstm_mb25.py)

# Chunk sizes a level is cut into; the cell is compiled once per size.  With
# 1 among them every level is covered exactly; each size divides the one
# before, so a level takes any number of 48-row chunks, at most 2 of 16 and one
# each of 8, 4, 2 and 1 rows.  (48, 16, 8, 4, 2, 1) against (64, 16, 4, 1):
# fewer rows in the matrix-vector-like chunks of 1 and 4 rows, 3.5% less time
# per update in an A/B (benchmarks/NOTES.md, session 8, levels by height);
# with `slack_schedule`'s levels four other sets measured within 2% of it
# (session 10).
CHUNK_SIZES = (48, 16, 8, 4, 2, 1)
# A single tree's levels have 1.85 inner nodes on average (SST dev: 18.3 over
# 9.9 levels): chunks of 8, 4, 2 and 1 (benchmarks/NOTES.md, session 8).
TREE_CHUNK_SIZES = (8, 4, 2, 1)


def chunk_sizes(n: int, sizes: Sequence[int] = CHUNK_SIZES) -> list:
    """`n` rows as chunks of the given sizes, largest first."""
    out = []
    for s in sizes:
        out += [s] * (n // s)
        n %= s
    if n:
        raise ValueError(f"chunk sizes {tuple(sizes)} cannot cover {n} more rows (include 1)")
    return out


# ----------------------------------------------------------------------------- schedules

def merge_trees(trees: Sequence[Tree]) -> tuple:
    """(forest, height): the trees' nodes in one set of arrays (tree k's nodes
    after tree k-1's, child indices shifted to match) and every node's height."""
    offsets = np.cumsum([0] + [len(t.labels) for t in trees])
    shift = lambda a, o: np.where(a >= 0, a + o, a).astype(np.int32)   # noqa: E731
    forest = Tree(np.concatenate([t.labels for t in trees]), np.concatenate([t.words for t in trees]),
                  np.concatenate([shift(t.lch, o) for t, o in zip(trees, offsets)]),
                  np.concatenate([shift(t.rch, o) for t, o in zip(trees, offsets)]))
    return forest, np.concatenate([tree_levels(t) for t in trees])


def level_schedule(tree: Union[Tree, Sequence[Tree]]) -> LevelSchedule:
    """The schedule of one tree, or of a list of trees as one forest."""
    tree, height = _forest(tree)
    return _by_level(tree, height)


def slack_schedule(tree: Union[Tree, Sequence[Tree]], sizes: Sequence[int] = CHUNK_SIZES) -> LevelSchedule:
    """`level_schedule` with every inner node at any level from its height to
    the latest one its parent allows (the root at the top level): the same
    number of levels, their widths chosen so that `chunk_sizes(width, sizes)`
    cuts them into few chunks.  A chunked level-batched step pays a fixed
    price per chunk (a 1-row chunk reads a weight matrix as a 48-row one
    does): SST minibatches of 25 trees need 18.3 chunks of inner nodes per
    update instead of 46.2 (17.95 levels)."""
    tree, height = _forest(tree)
    return _by_level(tree, _slack_levels(tree, height, lambda width: len(chunk_sizes(width, sizes))))


def _forest(tree):
    if isinstance(tree, Tree):
        return tree, tree_levels(tree)
    return merge_trees(tree)


def _slack_levels(tree: Tree, height: np.ndarray, level_cost) -> np.ndarray:
    """Levels bottom up, greedily: a level takes the nodes that must run there
    (their parent's latest level is the next) and as many of the others that
    are ready (children at lower levels), most urgent first, as minimise the
    level's cost; ties take more.  The nodes of a longest path have no slack,
    so every level keeps at least one node and the level count stays."""
    n, top = len(height), int(height.max())
    inner = np.flatnonzero(height > 0)
    parent = np.full(n, -1)
    parent[tree.lch[inner]] = inner
    parent[tree.rch[inner]] = inner
    latest = np.full(n, top)
    for v in inner[np.argsort(-height[inner], kind="stable")]:   # parents before children
        if parent[v] >= 0:
            latest[v] = latest[parent[v]] - 1
    waiting = np.zeros(n, dtype=np.int64)   # inner children not placed yet
    waiting[inner] = (height[tree.lch[inner]] > 0).astype(int) + (height[tree.rch[inner]] > 0)
    level = np.zeros(n, dtype=np.int32)
    ready = list(inner[waiting[inner] == 0])
    for lv in range(1, top + 1):
        must = [v for v in ready if latest[v] == lv]
        may = sorted((v for v in ready if latest[v] > lv), key=lambda v: (latest[v], v))
        costs = [level_cost(len(must) + k) for k in range(len(may) + 1)]
        take = max(range(len(may) + 1), key=lambda k: (-costs[k], k))
        placed, ready = must + may[:take], may[take:]
        for v in placed:
            level[v] = lv
            p = parent[v]
            if p >= 0:
                waiting[p] -= 1
                if waiting[p] == 0:
                    ready.append(p)
    if (level[inner] == 0).any():
        raise AssertionError("slack schedule left inner nodes unplaced")
    return level


def _by_level(tree: Tree, level: np.ndarray) -> LevelSchedule:
    """Renumber: leaves (level 0) first, then each level in turn."""
    order = np.argsort(level, kind="stable")
    new = np.empty_like(order)
    new[order] = np.arange(len(order))
    n_leaves = int((level == 0).sum())
    inner = order[n_leaves:]
    depth = int(level.max())
    counts = np.bincount(level[inner], minlength=depth + 1)[1:]
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return LevelSchedule(tree.words[order[:n_leaves]].astype(np.int32),
                         new[tree.lch[inner]].astype(np.int32), new[tree.rch[inner]].astype(np.int32),
                         bounds, tree.labels[order].astype(np.int32))


def _bucket(n: int, step: int) -> int:
    return max(step, -(-n // step) * step)


def width_bucket(width: int) -> int:
    """4, 8 or 16 (SST levels are at most 13 wide), then multiples of 16."""
    for w in (4, 8, 16):
        if width <= w:
            return w
    return _bucket(width, 16)


def padded_schedule(tree: Union[Tree, Sequence[Tree]], leaf_step: int = 16, depth_step: int = 4,
                    width_step: int = 16) -> PaddedSchedule:
    """Buffer rows: NL leaf rows, then D levels of W rows. Buckets: NL a multiple of
    `leaf_step`, D a multiple of `depth_step`, W one of 4/8/16, then a multiple of
    `width_step` (forests of many trees have wide levels)."""
    s = level_schedule(tree)
    n_leaves, depth = len(s.leaf_words), len(s.bounds) - 1
    widths = np.diff(s.bounds)
    NL, D = _bucket(n_leaves, leaf_step), _bucket(depth, depth_step)
    width = int(widths.max()) if depth else 1
    W = width_bucket(width) if width <= 16 else _bucket(width, width_step)
    # new (unpadded) index -> buffer row
    row = np.empty(len(s.labels), dtype=np.int64)
    row[:n_leaves] = np.arange(n_leaves)
    for k in range(depth):
        lo, hi = s.bounds[k], s.bounds[k + 1]
        row[n_leaves + lo: n_leaves + hi] = NL + k * W + np.arange(hi - lo)
    left = np.zeros((D, W), dtype=np.int32)
    right = np.zeros((D, W), dtype=np.int32)
    for k in range(depth):
        lo, hi = s.bounds[k], s.bounds[k + 1]
        left[k, : hi - lo] = row[s.left[lo:hi]]
        right[k, : hi - lo] = row[s.right[lo:hi]]
    rows = NL + D * W
    labels = np.zeros(rows, dtype=np.int32)
    mask = np.zeros(rows, dtype=np.float32)
    labels[row] = s.labels
    mask[row] = 1.0
    words = np.zeros(NL, dtype=np.int32)
    words[:n_leaves] = s.leaf_words
    return PaddedSchedule(words, left, right, labels, mask)


def padded_key(p: PaddedSchedule) -> tuple:
    """The shape bucket of a padded schedule (one compilation per key)."""
    return (len(p.leaf_words),) + p.left.shape
