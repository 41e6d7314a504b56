"""The benchmark models' hyper-parameters, fixed once for every framework.

A `Config` is what each framework's ``build(model, weights, cfg)`` receives. The
numbers of the first four are the paper's (Wang et al. 2018, Section 6 /
Figure 6); the fifth, a character-level transformer, is issue 12's workload;
`pinn` is issue 11's physics-informed network (2-D Poisson, see `benchmarks.data.
poisson_batch`); `treelstm_mb25` is the TreeLSTM as Tai et al. train it, one update
per minibatch of 25 trees (issue 14).
Every twin must use these and nothing else, so that losses can be compared
across frameworks.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

MODELS = ("rnn", "lstm", "cnn", "treelstm", "treelstm_mb25", "transformer", "pinn")
TEXT_MODELS = ("rnn", "lstm", "transformer")   # trained on `benchmarks.data.load_text` batches
TREE_MODELS = ("treelstm", "treelstm_mb25")     # trained on `benchmarks.data.load_trees` trees

# Trees per update of the minibatched TreeLSTM: a step is one update over this many
# trees (the gradient and the reported loss are their mean, as in Tai et al.'s
# training loop, which divides both by the batch size); times are also given per tree.
TREES_PER_UPDATE = {"treelstm_mb25": 25}

# Paper units: times are reported per this many training steps.
UNITS = {
    "rnn": (5000, "s / 5000 iterations"),
    "lstm": (5000, "s / 5000 iterations"),
    "cnn": (600, "s / epoch (600 batches of 100)"),
    "treelstm": (1101, "s / epoch (1101 trees)"),
    "treelstm_mb25": (1101 / 25, "s / epoch (1101 trees, 25 per update)"),
    "transformer": (1000, "s / 1000 iterations"),
    "pinn": (1000, "s / 1000 steps"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of one model. Field meanings:

    vocab      characters in the vocabulary (rnn, lstm, transformer)
    hidden     hidden size H (rnn, lstm: 50; treelstm: 150; pinn: width of its 3 hidden layers, 64);
               d_model of the transformer (64)
    seq        time steps per iteration (rnn, lstm; transformer: the context, 32)
    batch      sequences (rnn, lstm, transformer), images (cnn) or interior collocation points (pinn)
               per step; 1 tree for treelstm, 25 trees (one update) for treelstm_mb25
    boundary   pinn: boundary points per step
    boundary_weight  pinn: weight of the boundary term of the loss (see make_config)
    optimizer  "adagrad" (PyTorch formula, accumulator starts at 0), "sgd" or "adam"
               (PyTorch's Adam, betas (0.9, 0.999), eps 1e-8)
    lr, eps    optimizer step size and Adagrad / Adam epsilon
    clip       global gradient-norm clipping threshold (clip_grad_norm_ semantics) or None
    dropout    cnn only: apply dropout(p=0.5) after fc1 (off for loss-parity runs)
    classes    output classes (cnn: 10, treelstm: 5)
    embed      treelstm: embedding width E; the table itself is `embedding`
    embedding  treelstm: fixed float32 [words, E] table (not trained)
    heads, ff, layers  transformer: attention heads, feed-forward width, encoder layers
               (pre-norm torch.nn.TransformerEncoderLayer, GELU, causal mask, no dropout)
    """

    model: str
    vocab: int = 26
    hidden: int = 50
    seq: int = 20
    batch: int = 20
    boundary: int = 0
    boundary_weight: float = 1.0
    optimizer: str = "adagrad"
    lr: float = 0.1
    eps: float = 1e-10
    clip: Optional[float] = 5.0
    dropout: bool = False
    dropout_p: float = 0.5
    classes: int = 0
    embed: int = 0
    embedding: Optional[np.ndarray] = dataclasses.field(default=None, repr=False, compare=False)
    heads: int = 0
    ff: int = 0
    layers: int = 0


def make_config(model: str, *, vocab: int = 26, dropout: bool = False,
                embedding: Optional[np.ndarray] = None) -> Config:
    """The paper's configuration of `model` (one of MODELS)."""
    if model in ("rnn", "lstm"):
        return Config(model, vocab=vocab, hidden=50, seq=20, batch=20, optimizer="adagrad",
                      lr=0.1, eps=1e-10, clip=5.0, classes=vocab)
    if model == "cnn":
        return Config(model, vocab=0, hidden=50, seq=0, batch=100, optimizer="sgd", lr=0.05,
                      clip=None, dropout=dropout, classes=10)
    if model in TREE_MODELS:
        if embedding is None:
            from benchmarks.data import embedding_table
            embedding = embedding_table()
        return Config(model, vocab=0, hidden=150, seq=0, batch=TREES_PER_UPDATE.get(model, 1),
                      optimizer="adagrad", lr=0.05,
                      eps=1e-10, clip=None, classes=5, embed=int(embedding.shape[1]),
                      embedding=embedding)
    if model == "transformer":
        return Config(model, vocab=vocab, hidden=64, seq=32, batch=16, optimizer="adam", lr=3e-3, eps=1e-8,
                      clip=None, classes=vocab, heads=4, ff=256, layers=2)
    if model == "pinn":
        # loss = mean((u_xx + u_yy - f)^2) + boundary_weight * mean((u - g)^2). With weight 1 the
        # residual term dominates: the Laplacian scales a smooth error e ~ sin(pi x) sin(pi y) by
        # 2 pi^2, so the residual weighs e by (2 pi^2)^2 ~ 390 against the boundary's 1, and the
        # boundary error is what remains. Measured (JAX twin, these points and weights): weight 1
        # reaches a relative L2 error of 0.100 after 2500 steps, falling ~5% per 500 steps;
        # weight 100 reaches 9.5e-3 after 1000 steps and 4.8e-3 after 3000.
        return Config(model, vocab=0, hidden=64, seq=0, batch=1024, boundary=256, boundary_weight=100.0,
                      optimizer="adam", lr=1e-3, eps=1e-8, clip=None)
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def weights_of(model: str) -> str:
    """The model whose initial weights `model` starts from (the minibatched
    TreeLSTM starts from the TreeLSTM's)."""
    return "treelstm" if model in TREE_MODELS else model
