"""FLOPs of one training step of each benchmark model: the `floor` column.

Only the matrix products count (2 FLOPs per multiply-add), as the model
defines them, dense (a one-hot input is multiplied as a dense matrix, as every
framework here does): the forward product, the weight gradient and the input
gradient where one is needed (not of the data, not of the fixed embedding
table). Elementwise work, softmax and the optimizer are left out, so
`floor = STEP_FLOPS / sgemm peak` is a lower bound no framework can reach.

`STEP_FLOPS` maps a model name to ``fn(cfg, batches) -> FLOPs per step``
(`batches`: the data batches the run timed, for models whose steps differ, the
TreeLSTM's trees or minibatches of trees). A model without an entry gets no floor; harness models
register theirs here (one line each).
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence


def _mm(m: int, k: int, n: int) -> int:
    """One [m, k] x [k, n] product."""
    return 2 * m * k * n


def rnn(cfg, batches=()) -> float:
    B, V, H = cfg.batch, cfg.vocab, cfg.hidden
    i2h = 2 * _mm(B, V + H, H) + _mm(B, H, H)        # forward, weight grad; grad of h only
    h2o = 3 * _mm(B, H, V)
    return cfg.seq * (i2h + h2o)


def lstm(cfg, batches=()) -> float:
    B, V, H = cfg.batch, cfg.vocab, cfg.hidden
    gates = 2 * _mm(B, V, 4 * H) + 3 * _mm(B, H, 4 * H)   # x: forward + weight grad; h: all three
    out = 3 * _mm(B, H, V)
    return cfg.seq * (gates + out)


def cnn(cfg, batches=()) -> float:
    N = cfg.batch
    conv1 = 2 * _mm(N * 24 * 24, 1 * 5 * 5, 10)         # no gradient of the images
    conv2 = 3 * _mm(N * 8 * 8, 10 * 5 * 5, 20)
    fc1, fc2 = 3 * _mm(N, 320, 50), 3 * _mm(N, 50, 10)
    return conv1 + conv2 + fc1 + fc2


def _tree(cfg, t) -> int:
    """One tree: leaves a 3H x E product (no embedding gradient), inner nodes
    5H x 2H with the children's gradient, every node's output layer."""
    H, E, C = cfg.hidden, cfg.embed, cfg.classes
    leaves = int((t.lch < 0).sum())
    inner = len(t.lch) - leaves
    return leaves * 2 * _mm(1, E, 3 * H) + inner * 3 * _mm(1, 2 * H, 5 * H) + len(t.lch) * 3 * _mm(1, H, C)


def treelstm(cfg, trees: Sequence = ()) -> float:
    """Mean over `trees` of one tree's products."""
    if not trees:
        return float("nan")
    return sum(_tree(cfg, t) for t in trees) / len(trees)


def treelstm_minibatch(cfg, minibatches: Sequence = ()) -> float:
    """Mean over `minibatches` (lists of trees, one update each) of their trees'
    products: batching the trees changes the products' shapes, not their FLOPs."""
    if not minibatches:
        return float("nan")
    return sum(_tree(cfg, t) for mb in minibatches for t in mb) / len(minibatches)


def transformer(cfg, batches=()) -> float:
    """Per layer: the q/k/v, output and feed-forward projections of all B*S
    positions, and each head's S x S scores and weighted values; the vocabulary
    head; every product three times (forward, both gradients)."""
    N, E, F, V, S = cfg.batch * cfg.seq, cfg.hidden, cfg.ff, cfg.vocab, cfg.seq
    D = E // cfg.heads
    attention = cfg.batch * cfg.heads * (_mm(S, D, S) + _mm(S, S, D))
    layer = _mm(N, E, 3 * E) + _mm(N, E, E) + _mm(N, E, F) + _mm(N, F, E) + attention
    return 3 * (cfg.layers * layer + _mm(N, E, V))


def pinn(cfg, batches=()) -> float:
    """The MLP's products for the fewest streams a Laplacian needs at the
    interior points (the value, and first and second tangents along each of the
    2 coordinates: 5), the value at the boundary points, each three times
    (forward, both gradients)."""
    H = cfg.hidden

    def mlp(n):
        return _mm(n, 2, H) + 2 * _mm(n, H, H) + _mm(n, H, 1)

    return 3 * (5 * mlp(cfg.batch) + mlp(cfg.boundary))


STEP_FLOPS: Dict[str, Callable] = {"rnn": rnn, "lstm": lstm, "cnn": cnn, "treelstm": treelstm,
                                   "treelstm_mb25": treelstm_minibatch, "transformer": transformer, "pinn": pinn}


def step_flops(model: str, cfg, batches=()) -> float | None:
    fn = STEP_FLOPS.get(model)
    return float(fn(cfg, batches)) if fn else None
