"""The three models of the data-parallel tests, small: the benchmark's CNN,
char-LSTM and TreeLSTM modules with fixed random weights and data.  Shared by
tests/test_distributed.py (one-process references) and tests/mpi_worker.py
(the ranks), so both sides build exactly the same steps."""
# No `from __future__ import annotations`: the staged inputs are annotated with local sizes.

import numpy as np

import lantern_stage as lt
from benchmarks.data import embedding_table, random_trees
from benchmarks.models.cnn import MnistCNN
from benchmarks.models.lstm import CharLSTM
from benchmarks.models.treelstm import TreeLSTM

BATCH = 8  # global batch of the CNN and LSTM steps
STEPS = 3  # CNN / LSTM steps; the CNN checkpoint is taken after CHECKPOINT_AT of them
CHECKPOINT_AT = 2
SEQ, VOCAB, HIDDEN = 5, 12, 16
TREES_PER_UPDATE, UPDATES, TREE_HIDDEN = 20, 2, 8


def _randomize(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] = rng.uniform(-0.3, 0.3, p.shape)


def cnn(batch: int, data_parallel: bool = False):
    model = MnistCNN()
    _randomize(model, 1)

    def loss_fn(model, x: lt.Tensor[batch, 1, 28, 28], y: lt.Tensor[batch, "int32"]):
        return model(x, y)

    opt = lt.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, lt.train_step(model, loss_fn, opt, clip_grad_norm=0.5, data_parallel=data_parallel)


def lstm(batch: int, data_parallel: bool = False, scale: float = 1.0):
    """The benchmark's loss sums over the batch: averaging the gradients of N
    shards' sums (as DDP does) is the gradient of the global sum / N, which a
    one-process reference gets with scale = 1/N."""
    model = CharLSTM(VOCAB, HIDDEN)
    _randomize(model, 2)

    def loss_fn(model, xs: lt.Tensor[SEQ, batch, VOCAB], ys: lt.Tensor[SEQ, batch, "int32"]):
        return model(xs, ys) * scale

    opt = lt.optim.Adagrad(model.parameters(), lr=0.1)
    return model, lt.train_step(model, loss_fn, opt, clip_grad_norm=5.0, data_parallel=data_parallel)


def treelstm(accumulate: int, data_parallel: bool = False):
    model = TreeLSTM(embedding_table(dim=10), TREE_HIDDEN, 5)
    _randomize(model, 3)

    def loss_fn(model, labels: lt.IntArray, words: lt.IntArray, lch: lt.IntArray, rch: lt.IntArray):
        return model(labels, words, lch, rch)

    opt = lt.optim.Adagrad(model.parameters(), lr=0.05, eps=1e-10)
    return model, lt.train_step(model, loss_fn, opt, accumulate=accumulate, data_parallel=data_parallel)


def cnn_data():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((STEPS, BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, (STEPS, BATCH)).astype(np.int32)
    return x, y


def lstm_data():
    rng = np.random.default_rng(11)
    ys = rng.integers(0, VOCAB, (STEPS, SEQ, BATCH)).astype(np.int32)
    xs = np.eye(VOCAB, dtype=np.float32)[rng.integers(0, VOCAB, (STEPS, SEQ, BATCH))]
    return xs, ys


def trees():
    return [tuple(t) for t in random_trees(TREES_PER_UPDATE * UPDATES, seed=1)]


def weights(model) -> dict:
    return {k: np.array(v) for k, v in model.state_dict().items()}
