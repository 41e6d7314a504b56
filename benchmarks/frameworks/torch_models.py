"""The PyTorch twins of the benchmark models, importable on their own.

These are the reference implementations of the spec in ``benchmarks.spec`` /
``benchmarks.weights``: lantern_stage's parity tests build them from the same
numpy weights and compare losses. Each model's ``forward`` returns the scalar
training loss of one batch; `TorchTrainer` adds the optimizer and clipping.

    from benchmarks.frameworks.torch_models import from_weights, TorchTrainer
    net = from_weights("rnn", weights, cfg)
    trainer = TorchTrainer("rnn", net, cfg)
    loss = trainer.step(trainer.prepare(batch))
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.spec import Config


class CharRNN(nn.Module):
    """Vanilla char-RNN: h = tanh(i2h([x_t, h])); loss += CE(h2o(h), y_t, sum)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.hidden = cfg.hidden
        self.i2h = nn.Linear(cfg.vocab + cfg.hidden, cfg.hidden)
        self.h2o = nn.Linear(cfg.hidden, cfg.vocab)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        h = xs.new_zeros(xs.shape[1], self.hidden)
        loss = xs.new_zeros(())
        for t in range(xs.shape[0]):
            h = torch.tanh(self.i2h(torch.cat([xs[t], h], dim=1)))
            loss = loss + F.cross_entropy(self.h2o(h), ys[t], reduction="sum")
        return loss


class CharLSTM(nn.Module):
    """Char-LSTM: (h, c) = LSTMCell(x_t, (h, c)); loss += NLL(log_softmax(out(h)), y_t, sum)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.hidden = cfg.hidden
        self.cell = nn.LSTMCell(cfg.vocab, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.vocab)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        h = xs.new_zeros(xs.shape[1], self.hidden)
        c = xs.new_zeros(xs.shape[1], self.hidden)
        loss = xs.new_zeros(())
        for t in range(xs.shape[0]):
            h, c = self.cell(xs[t], (h, c))
            loss = loss + F.nll_loss(F.log_softmax(self.out(h), dim=1), ys[t], reduction="sum")
        return loss


class CharLSTMFused(nn.Module):
    """The char-LSTM as `nn.LSTM` over the whole sequence (PyTorch's fused
    multi-step kernel, its fastest CPU formulation), then one output layer and
    one loss over all steps: the same function as `CharLSTM`. Its parameters
    are `CharLSTM`'s under nn.LSTM's names (see `LSTM_FUSED_NAMES`)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.lstm = nn.LSTM(cfg.vocab, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.vocab)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        hs, _ = self.lstm(xs)                        # [seq, batch, hidden], zero initial state
        logits = self.out(hs).flatten(0, 1)          # [seq * batch, vocab]
        return F.nll_loss(F.log_softmax(logits, dim=1), ys.flatten(), reduction="sum")


# CharLSTM's parameter names -> CharLSTMFused's.
LSTM_FUSED_NAMES = {f"cell.{w}": f"lstm.{w}_l0" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


class MnistCNN(nn.Module):
    """PyTorch's MNIST example network; dropout after fc1 only when cfg.dropout."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.dropout = cfg.dropout
        self.p = cfg.dropout_p
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        if self.dropout:
            x = F.dropout(x, p=self.p, training=True)
        return self.fc2(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(self.logits(x), dim=1), y)


class TreeLSTM(nn.Module):
    """Binary TreeLSTM over one tree, as a recursive Python function (what a
    PyTorch user writes). Every node predicts its sentiment; the tree's loss is
    the sum of the nodes' cross-entropies. The embedding table is fixed."""

    def __init__(self, cfg: Config):
        super().__init__()
        H, E, C = cfg.hidden, cfg.embed, cfg.classes
        self.hidden = H
        self.W_leaf = nn.Parameter(torch.empty(3 * H, E))
        self.b_leaf = nn.Parameter(torch.empty(3 * H))
        self.U = nn.Parameter(torch.empty(5 * H, 2 * H))
        self.b_inner = nn.Parameter(torch.empty(5 * H))
        self.W_out = nn.Parameter(torch.empty(C, H))
        self.b_out = nn.Parameter(torch.empty(C))
        self.register_buffer("embedding", torch.from_numpy(np.asarray(cfg.embedding, dtype=np.float32)),
                             persistent=False)

    # The two cells are separate methods so that torch.compile can compile them alone.
    def leaf(self, x: torch.Tensor, label: torch.Tensor):
        i, o, u = torch.split(F.linear(x, self.W_leaf, self.b_leaf), self.hidden, dim=1)
        c = torch.sigmoid(i) * torch.tanh(u)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c, F.cross_entropy(F.linear(h, self.W_out, self.b_out), label)

    def inner(self, hl, cl, hr, cr, label: torch.Tensor):
        z = F.linear(torch.cat([hl, hr], dim=1), self.U, self.b_inner)
        i, fl, fr, o, u = torch.split(z, self.hidden, dim=1)
        c = torch.sigmoid(i) * torch.tanh(u) + torch.sigmoid(fl) * cl + torch.sigmoid(fr) * cr
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c, F.cross_entropy(F.linear(h, self.W_out, self.b_out), label)

    def forward(self, tree, leaf: Optional[Callable] = None, inner: Optional[Callable] = None):
        """`tree` as made by `prepare_tree`. `leaf`/`inner` replace the cells (torch.compile)."""
        leaf = leaf or self.leaf
        inner = inner or self.inner
        labels, words, lch, rch = tree
        losses: List[torch.Tensor] = []

        def node(n: int):
            if lch[n] < 0:
                h, c, loss = leaf(self.embedding[words[n]].unsqueeze(0), labels[n])
            else:
                hl, cl = node(lch[n])
                hr, cr = node(rch[n])
                h, c, loss = inner(hl, cl, hr, cr, labels[n])
            losses.append(loss)
            return h, c

        node(0)
        return torch.stack(losses).sum()


class TreeLSTMMinibatch(TreeLSTM):
    """The TreeLSTM trained on minibatches (treelstm_mb25): the loss of one update
    is the mean of its trees' losses (Tai et al. divide loss and gradient by the
    batch size), one backward through all of them."""

    def forward(self, *trees, leaf: Optional[Callable] = None, inner: Optional[Callable] = None):
        return torch.stack([super(TreeLSTMMinibatch, self).forward(t, leaf, inner) for t in trees]).mean()


class CharTransformer(nn.Module):
    """Character-level transformer LM: token embedding + learned positions, cfg.layers
    pre-norm `nn.TransformerEncoderLayer`s (GELU, causal mask, no dropout), a final
    LayerNorm and a linear head; the loss is the mean next-character cross-entropy.
    Inputs are [batch, seq] ids (batch_first)."""

    def __init__(self, cfg: Config):
        super().__init__()
        E = cfg.hidden
        self.tok = nn.Embedding(cfg.vocab, E)
        self.pos = nn.Parameter(torch.zeros(cfg.seq, E))
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(E, cfg.heads, cfg.ff, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, cfg.vocab)
        self.register_buffer("mask", torch.triu(torch.ones(cfg.seq, cfg.seq, dtype=torch.bool), 1),
                             persistent=False)   # True: a future position, not attended to

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos
        for layer in self.layers:
            x = layer(x, src_mask=self.mask)
        return self.head(self.norm(x))

    def forward(self, ids: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        logits = self.logits(ids)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1))


class PoissonPINN(nn.Module):
    """Physics-informed MLP 2 -> H -> H -> H -> 1 (tanh) for u_xx + u_yy = f on the
    unit square. The loss is mean((u_xx + u_yy - f)^2) over the interior points plus
    cfg.boundary_weight * mean((u - g)^2) over the boundary points. The Laplacian is what a PyTorch user
    writes: `torch.autograd.grad(..., create_graph=True)` for du, then once more per
    coordinate for its diagonal second derivatives; `loss.backward()` then runs
    backward through all three."""

    def __init__(self, cfg: Config):
        super().__init__()
        H = cfg.hidden
        self.boundary_weight = cfg.boundary_weight
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(2, H), nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, 1)

    def u(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        h = torch.tanh(self.fc2(h))
        h = torch.tanh(self.fc3(h))
        return self.fc4(h)

    def laplacian(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        (du,) = torch.autograd.grad(self.u(x).sum(), x, create_graph=True)
        (dux,) = torch.autograd.grad(du[:, 0].sum(), x, create_graph=True)
        (duy,) = torch.autograd.grad(du[:, 1].sum(), x, create_graph=True)
        return dux[:, 0:1] + duy[:, 1:2]

    def forward(self, xi, f, xb, g) -> torch.Tensor:
        residual = self.laplacian(xi) - f
        return (residual ** 2).mean() + self.boundary_weight * ((self.u(xb) - g) ** 2).mean()


MODEL_CLASSES = {"rnn": CharRNN, "lstm": CharLSTM, "cnn": MnistCNN, "treelstm": TreeLSTM,
                 "treelstm_mb25": TreeLSTMMinibatch,
                 "transformer": CharTransformer, "pinn": PoissonPINN}


def from_weights(model: str, weights: Dict[str, np.ndarray], cfg: Config) -> nn.Module:
    """The PyTorch twin of `model` holding a copy of `weights` (names must match exactly)."""
    net = MODEL_CLASSES[model](cfg)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()}
    net.load_state_dict(state, strict=True)
    return net


def lstm_fused_from_weights(weights: Dict[str, np.ndarray], cfg: Config) -> nn.Module:
    """`CharLSTMFused` holding a copy of the char-LSTM's `weights` (CharLSTM names)."""
    net = CharLSTMFused(cfg)
    state = {LSTM_FUSED_NAMES.get(k, k): torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items()}
    net.load_state_dict(state, strict=True)
    return net


def make_optimizer(net: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(net.parameters(), lr=cfg.lr, eps=cfg.eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=cfg.eps)
    raise ValueError(cfg.optimizer)


def prepare_tree(tree):
    """Labels as [n, 1] int64 tensors (one per node, cross_entropy's target shape)
    and the index arrays as Python lists (what a recursive Python function indexes)."""
    labels = torch.from_numpy(tree.labels.astype(np.int64)).view(-1, 1)
    return (list(labels), tree.words.tolist(), tree.lch.tolist(), tree.rch.tolist())


def prepare(model: str, batch):
    """numpy batch -> the tensors the twin's forward takes."""
    if model in ("rnn", "lstm"):
        return torch.from_numpy(batch.xs), torch.from_numpy(batch.ys.astype(np.int64))
    if model == "cnn":
        return torch.from_numpy(batch.x), torch.from_numpy(batch.y.astype(np.int64))
    if model == "treelstm":
        return (prepare_tree(batch),)
    if model == "treelstm_mb25":   # a list of trees
        return tuple(prepare_tree(t) for t in batch)
    if model == "transformer":   # [seq, batch] -> [batch, seq]
        return (torch.from_numpy(np.ascontiguousarray(batch.ids.T).astype(np.int64)),
                torch.from_numpy(np.ascontiguousarray(batch.ys.T).astype(np.int64)))
    if model == "pinn":
        return tuple(torch.from_numpy(a) for a in batch)
    raise ValueError(model)


class TorchTrainer:
    """zero_grad; loss = forward(batch); backward; clip_grad_norm_ (if cfg.clip); step."""

    def __init__(self, model: str, net: nn.Module, cfg: Config, forward: Optional[Callable] = None):
        self.model = model
        self.net = net
        self.cfg = cfg
        self.forward = forward if forward is not None else net
        self.params = list(net.parameters())
        self.opt = make_optimizer(net, cfg)

    def prepare(self, batch):
        return prepare(self.model, batch)

    def step(self, batch) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward(*batch)
        loss.backward()
        if self.cfg.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip)
        self.opt.step()
        return loss.item()

    def loss(self, batch) -> float:
        """The loss of `batch` without training (no weight gradient; the PINN's
        loss itself needs input derivatives, so autograd stays on for it)."""
        if self.model == "pinn":
            return float(self.forward(*batch).detach())
        with torch.no_grad():
            return float(self.forward(*batch))

    def weights(self) -> Dict[str, np.ndarray]:
        """Current weights under the spec's (CharLSTM's) names."""
        back = {v: k for k, v in LSTM_FUSED_NAMES.items()} if isinstance(self.net, CharLSTMFused) else {}
        return {back.get(k, k): v.detach().numpy().copy() for k, v in self.net.state_dict().items()}


def versions() -> dict:
    return {"torch": torch.__version__}
