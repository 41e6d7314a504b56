"""DyNet twins (optional peer; ``bash benchmarks/install_dynet.sh`` builds it, ~20 min).

DyNet builds a new graph per example, like PyTorch eager, but with a C++ graph and
(`autobatch=True`, i.e. ``--dynet-autobatch 1``) automatic batching of identical
operations across the graph, which the paper found fastest on the TreeLSTM.
The autobatch setting must be made before `dynet` is imported; the harness runs
each framework in its own process, so `configure_threads` does it.

Differences from the PyTorch spec, kept because they are DyNet's own optimizer:
DyNet's Adagrad divides by sqrt(acc + eps) rather than sqrt(acc) + eps, and its
gradient clipping (`set_clip_threshold`) rescales by the global norm without
PyTorch's 1e-6. Losses therefore agree with PyTorch's only to a few digits.
The CNN twin is not written (DyNet's column-major conv/reshape layout needs its
own weight permutation and could not be tested on this machine).
DyNet expressions are column-major: a batch of vectors is shape ((n,), batch),
made from a numpy [n, batch] array; Linear weights keep PyTorch's [out, in].
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from benchmarks.frameworks import Unsupported
from benchmarks.frameworks._common import dist_version, missing

_CONFIGURED = {"autobatch": None}


def available(autobatch: bool = False):
    try:
        import dynet_config  # noqa: F401
    except Exception as e:
        return False, missing("dynet (optional; bash benchmarks/install_dynet.sh)", e)
    return True, dist_version("dyNET") if dist_version("dyNET") != "not installed" else dist_version("dynet")


def configure_threads(autobatch: bool = False, **_) -> str:
    import dynet_config
    dynet_config.set(mem=512, random_seed=1, autobatch=int(autobatch))
    _CONFIGURED["autobatch"] = autobatch
    import dynet  # noqa: F401  (DyNet is single-threaded on CPU)
    return f"dynet single-threaded CPU, autobatch={int(autobatch)}"


def versions() -> dict:
    ok, v = available()
    return {"dynet": v if ok else "not installed"}


class DyNetTrainer:
    def __init__(self, model, weights, cfg):
        import dynet as dy
        self.dy, self.model, self.cfg = dy, model, cfg
        self.pc = dy.ParameterCollection()
        self.p = {k: self.pc.add_parameters(v.shape, init=dy.NumpyInitializer(np.asarray(v, np.float32)))
                  for k, v in weights.items()}
        self.names = list(weights)
        self.trainer = dy.AdagradTrainer(self.pc, learning_rate=cfg.lr, eps=cfg.eps)
        if cfg.clip is not None:
            self.trainer.set_clip_threshold(cfg.clip)
        else:
            self.trainer.set_clip_threshold(-1)   # DyNet clips at 5 by default
        if model == "treelstm":
            self.emb = np.asarray(cfg.embedding)

    def prepare(self, batch):
        if self.model in ("rnn", "lstm"):
            return ([np.ascontiguousarray(x.T) for x in batch.xs], [list(map(int, y)) for y in batch.ys])
        return batch

    def _e(self, name):
        return self.dy.parameter(self.p[name])

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
        for x, y in zip(xs, ys):
            g = dy.affine_transform([b, Wi, dy.inputTensor(x, batched=True), Wh, h])
            i, f = dy.logistic(dy.pick_range(g, 0, H)), dy.logistic(dy.pick_range(g, H, 2 * H))
            u, o = dy.tanh(dy.pick_range(g, 2 * H, 3 * H)), dy.logistic(dy.pick_range(g, 3 * H, 4 * H))
            c = dy.cmult(f, c) + dy.cmult(i, u)
            h = dy.cmult(o, dy.tanh(c))
            losses.append(dy.pickneglogsoftmax_batch(dy.affine_transform([bo, Wo, h]), y))
        return dy.sum_batches(dy.esum(losses))

    def _loss_treelstm(self, tree):
        dy, H = self.dy, self.cfg.hidden
        Wl, bl, U, bi, Wo, bo = (self._e(k) for k in ("W_leaf", "b_leaf", "U", "b_inner", "W_out", "b_out"))
        labels, words, lch, rch = (a.tolist() for a in tree)
        losses = []

        def node(n):   # recursive, as a DyNet user writes it
            if lch[n] < 0:
                z = dy.affine_transform([bl, Wl, dy.inputTensor(self.emb[words[n]])])
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

    def step(self, batch) -> float:
        self.dy.renew_cg()
        loss = getattr(self, f"_loss_{self.model}")(*(batch if self.model != "treelstm" else (batch,)))
        value = loss.value()
        loss.backward()
        self.trainer.update()
        return float(value)

    def weights(self) -> Dict[str, np.ndarray]:
        return {k: self.p[k].as_array().astype(np.float32) for k in self.names}


def build(model, weights, cfg, autobatch: bool = False):
    if model == "cnn":
        raise Unsupported("DyNet CNN twin not written (column-major conv layout untested here)")
    return DyNetTrainer(model, weights, cfg)
