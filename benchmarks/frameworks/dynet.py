"""DyNet twins (optional peer; ``bash benchmarks/install_dynet.sh`` builds DyNet 2.1.2, ~20 min).

DyNet builds a new graph per example, like PyTorch eager, but with a C++ graph and
(``dynet_autobatch``) automatic batching of identical operations across the graph,
which the paper found fastest on the TreeLSTM. Autobatching is switched on twice:
``dynet_config.set(autobatch=1)`` before ``import dynet`` (the harness runs each
framework in its own worker process, so `configure_threads` does that) and
``renew_cg(autobatching=True)`` for every graph, which does not depend on what the
process was started with.

The optimizers are DyNet's own (`AdagradTrainer`, `SimpleSGDTrainer`, clipping by
`set_clip_threshold`). DyNet's Adagrad divides by sqrt(acc + eps) where PyTorch divides
by sqrt(acc) + eps; with the paper's eps = 1e-10 that matters (the first update is
lr * g / sqrt(g^2 + eps) instead of lr * sign(g), a different step for every |g| < 1e-5),
so DyNet gets eps**2, which makes the two denominators agree except where
sqrt(acc) ~ eps. DyNet's clipping rescales by threshold / norm without PyTorch's 1e-6.
With that the first-step losses are identical to PyTorch's and the next ones agree to
~1e-6 (the vanilla RNN's and TreeLSTM's sign-like first Adagrad step then amplifies
round-off, as it does between any two frameworks).

treelstm_mb25 (Tai et al.'s setting): one graph, one backward and one update per
minibatch of 25 trees, the loss their mean. With autobatching this is DyNet's
strongest TreeLSTM setting: it batches equal operations across the 25 trees.

Layouts: DyNet tensors are column-major. A batch of vectors is shape ((n,), batch),
made from a numpy [n, batch] array; Linear weights keep PyTorch's [out, in]
(`NumpyInitializer` flattens in Fortran order, so numpy shapes carry over). The CNN
takes images as (28, 28, 1) x batch, numpy [h, w, c, batch]; conv filters are
(kh, kw, in, out) (DyNet's conv2d is a cross-correlation, like PyTorch's); the
column-major flattening of the (4, 4, 20) feature maps is h + 4w + 16c where PyTorch's
view(-1, 320) is 16c + 4h + w, so fc1's columns are permuted once at build (and back
in `weights()`).
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from benchmarks.frameworks import Unsupported
from benchmarks.frameworks._common import dist_version, missing
from benchmarks.spec import TREE_MODELS

_CONFIGURED = {"autobatch": None}
# Initial size of DyNet's memory pools (forward, backward, parameters, scratch); they grow
# on demand. DyNet touches what it allocates, so the usual 512 would show as ~550 MB of RSS.
DYNET_MEM_MB = 64


def available(autobatch: bool = False):
    try:
        import dynet_config  # noqa: F401  (importing dynet itself would initialise it)
    except Exception as e:
        return False, missing("dynet (optional; bash benchmarks/install_dynet.sh)", e)
    v = dist_version("dyNET")
    return True, v if v != "not installed" else dist_version("dynet")


def configure_threads(autobatch: bool = False, **_) -> str:
    import dynet_config
    dynet_config.set(mem=DYNET_MEM_MB, random_seed=1, autobatch=int(autobatch))
    import dynet  # noqa: F401  (DyNet's CPU backend is single-threaded)
    _CONFIGURED["autobatch"] = bool(autobatch)
    conf = dynet_config.get() or {}
    return f"dynet single-threaded CPU, autobatch={conf.get('autobatch')} (and renew_cg(autobatching={bool(autobatch)}))"


def versions() -> dict:
    ok, v = available()
    return {"dynet": v if ok else "not installed"}


def _fc1_perm() -> np.ndarray:
    """perm[k] = PyTorch column of DyNet column k (k = h + 4w + 16c)."""
    c, w, h = np.meshgrid(np.arange(20), np.arange(4), np.arange(4), indexing="ij")
    perm = np.empty(320, np.int64)
    perm[(h + 4 * w + 16 * c).ravel()] = (16 * c + 4 * h + w).ravel()
    return perm


class DyNetTrainer:
    def __init__(self, model, weights, cfg, autobatch=False):
        import dynet as dy
        self.dy, self.model, self.cfg, self.autobatch = dy, model, cfg, bool(autobatch)
        self.pc = dy.ParameterCollection()
        self.names = list(weights)
        self.p = {k: self.pc.add_parameters(self._to_dy(k, v).shape,
                                            init=dy.NumpyInitializer(self._to_dy(k, v)))
                  for k, v in weights.items()}
        if cfg.optimizer == "adagrad":
            # DyNet divides by sqrt(acc + eps), PyTorch by sqrt(acc) + eps: eps**2 makes the two
            # agree to rounding except where sqrt(acc) ~ eps (there within a factor sqrt(2))
            self.trainer = dy.AdagradTrainer(self.pc, learning_rate=cfg.lr, eps=cfg.eps ** 2)
        else:
            self.trainer = dy.SimpleSGDTrainer(self.pc, learning_rate=cfg.lr)
        # DyNet clips at 5 by default; <= 0 switches clipping off
        self.trainer.set_clip_threshold(cfg.clip if cfg.clip is not None else -1)
        if model in TREE_MODELS:   # the fixed embedding table, looked up without gradient
            self.emb = self.pc.lookup_parameters_from_numpy(np.asarray(cfg.embedding, np.float32))
            self.emb.set_updated(False)

    # ---- weight layouts (PyTorch <-> DyNet)
    def _to_dy(self, name, v):
        v = np.asarray(v, np.float32)
        if self.model == "cnn":
            if name.startswith("conv") and name.endswith("weight"):
                return np.ascontiguousarray(v.transpose(2, 3, 1, 0))      # [out,in,kh,kw] -> (kh,kw,in,out)
            if name == "fc1.weight":
                return np.ascontiguousarray(v[:, _fc1_perm()])
        return v

    def _from_dy(self, name, v):
        if self.model == "cnn":
            if name.startswith("conv") and name.endswith("weight"):
                return np.ascontiguousarray(v.transpose(3, 2, 0, 1))
            if name == "fc1.weight":
                out = np.empty_like(v)
                out[:, _fc1_perm()] = v
                return out
        return v

    def prepare(self, batch):
        if self.model in ("rnn", "lstm"):
            return ([np.ascontiguousarray(x.T) for x in batch.xs], [list(map(int, y)) for y in batch.ys])
        if self.model == "cnn":
            return (np.ascontiguousarray(batch.x.transpose(2, 3, 1, 0)), list(map(int, batch.y)))
        if self.model == "treelstm_mb25":   # a list of trees
            return tuple(self._prepare_tree(t) for t in batch)
        return self._prepare_tree(batch)

    @staticmethod
    def _prepare_tree(tree):
        return tuple(a.tolist() for a in (tree.labels, tree.words, tree.lch, tree.rch))

    def _e(self, name):
        return self.p[name]    # DyNet 2.1: a Parameters object is an expression of the current graph

    def _loss_rnn(self, xs, ys):
        dy = self.dy
        W, b, Wo, bo = (self._e(k) for k in ("i2h.weight", "i2h.bias", "h2o.weight", "h2o.bias"))
        h = dy.zeros((self.cfg.hidden,), batch_size=self.cfg.batch)
        losses = []
        for x, y in zip(xs, ys):
            h = dy.tanh(dy.affine_transform([b, W, dy.concatenate([dy.inputTensor(x, batched=True), h])]))
            losses.append(dy.pickneglogsoftmax_batch(dy.affine_transform([bo, Wo, h]), y))
        return dy.sum_batches(dy.esum(losses))

    def _loss_lstm(self, xs, ys):
        dy, H = self.dy, self.cfg.hidden
        Wi, Wh, bi, bh, Wo, bo = (self._e(k) for k in ("cell.weight_ih", "cell.weight_hh", "cell.bias_ih",
                                                       "cell.bias_hh", "out.weight", "out.bias"))
        b = bi + bh
        h = c = dy.zeros((H,), batch_size=self.cfg.batch)
        losses = []
        for x, y in zip(xs, ys):    # PyTorch's gate order: i, f, g, o
            g = dy.affine_transform([b, Wi, dy.inputTensor(x, batched=True), Wh, h])
            i, f = dy.logistic(dy.pick_range(g, 0, H)), dy.logistic(dy.pick_range(g, H, 2 * H))
            u, o = dy.tanh(dy.pick_range(g, 2 * H, 3 * H)), dy.logistic(dy.pick_range(g, 3 * H, 4 * H))
            c = dy.cmult(f, c) + dy.cmult(i, u)
            h = dy.cmult(o, dy.tanh(c))
            losses.append(dy.pickneglogsoftmax_batch(dy.affine_transform([bo, Wo, h]), y))
        return dy.sum_batches(dy.esum(losses))

    def _loss_cnn(self, x, y):
        dy = self.dy
        w1, b1, w2, b2, W3, b3, W4, b4 = (self._e(k) for k in (
            "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
            "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
        h = dy.inputTensor(x, batched=True)                                   # (28, 28, 1) x B
        h = dy.rectify(dy.maxpooling2d(dy.conv2d_bias(h, w1, b1, [1, 1], is_valid=True), [2, 2], [2, 2]))
        h = dy.rectify(dy.maxpooling2d(dy.conv2d_bias(h, w2, b2, [1, 1], is_valid=True), [2, 2], [2, 2]))
        h = dy.rectify(dy.affine_transform([b3, W3, dy.reshape(h, (320,), batch_size=len(y))]))
        if self.cfg.dropout:
            h = dy.dropout(h, self.cfg.dropout_p)
        loss = dy.pickneglogsoftmax_batch(dy.affine_transform([b4, W4, h]), y)
        return dy.sum_batches(loss) * (1.0 / len(y))                           # nll_loss's mean

    def _loss_treelstm(self, labels, words, lch, rch):
        dy, H = self.dy, self.cfg.hidden
        Wl, bl, U, bi, Wo, bo = (self._e(k) for k in ("W_leaf", "b_leaf", "U", "b_inner", "W_out", "b_out"))
        emb = self.emb
        losses = []

        def node(n):   # recursive, as a DyNet user writes it
            if lch[n] < 0:
                z = dy.affine_transform([bl, Wl, dy.lookup(emb, words[n], update=False)])
                i, o, u = (dy.pick_range(z, k * H, (k + 1) * H) for k in range(3))
                c = dy.cmult(dy.logistic(i), dy.tanh(u))
            else:
                hl, cl = node(lch[n])
                hr, cr = node(rch[n])
                z = dy.affine_transform([bi, U, dy.concatenate([hl, hr])])
                i, fl, fr, o, u = (dy.pick_range(z, k * H, (k + 1) * H) for k in range(5))
                c = (dy.cmult(dy.logistic(i), dy.tanh(u)) + dy.cmult(dy.logistic(fl), cl)
                     + dy.cmult(dy.logistic(fr), cr))
            h = dy.cmult(dy.logistic(o), dy.tanh(c))
            losses.append(dy.pickneglogsoftmax(dy.affine_transform([bo, Wo, h]), labels[n]))
            return h, c

        node(0)
        return dy.esum(losses)

    def _loss_treelstm_mb25(self, *trees):
        """One graph for the minibatch (what autobatching batches across): the
        mean of its trees' losses."""
        return self.dy.esum([self._loss_treelstm(*t) for t in trees]) * (1.0 / len(trees))

    def loss(self, batch) -> float:
        """The loss of a prepared batch, without training."""
        self.dy.renew_cg(autobatching=self.autobatch)
        return float(getattr(self, f"_loss_{self.model}")(*batch).value())

    def step(self, batch) -> float:
        self.dy.renew_cg(autobatching=self.autobatch)
        loss = getattr(self, f"_loss_{self.model}")(*batch)
        value = loss.value()     # forward (autobatched when on)
        loss.backward()
        self.trainer.update()
        return float(value)

    def weights(self) -> Dict[str, np.ndarray]:
        return {k: self._from_dy(k, self.p[k].as_array().astype(np.float32)) for k in self.names}


def build(model, weights, cfg, autobatch: bool = False):
    if model == "pinn":
        raise Unsupported("DyNet has no higher-order derivatives (its backward is not differentiable), "
                          "which the PINN's loss needs")
    if model == "transformer":
        raise Unsupported("the char transformer is not written for DyNet (no attention or layer-norm "
                          "twin of torch.nn.TransformerEncoderLayer here)")
    return DyNetTrainer(model, weights, cfg, autobatch=autobatch)
