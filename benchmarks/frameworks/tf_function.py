"""TensorFlow twins: one `tf.function` per training step, optionally XLA (`jit_compile=True`).

Weights are tf.Variables loaded from the shared numpy weights. Layouts stay
PyTorch's (Linear weights [out, in], used with ``transpose_b=True``) except where
TensorFlow needs its own: conv kernels become HWIO and the input NHWC (TF's CPU
Conv2D has no NCHW kernel), so fc1's columns are permuted once from PyTorch's
C,H,W flattening order to H,W,C. `weights()` converts back. Adagrad and the
global-norm clipping are written out to match PyTorch's formulas exactly (Keras'
Adagrad differs: initial accumulator 0.1, epsilon inside the square root).

TreeLSTM (what runs fastest without retracing per tree shape):
- tf.function (graph): level-batched with dynamic shapes. A `tf.while_loop` runs
  over the tree's levels; each level gathers its children's states from a buffer
  that grows by `concat`, and computes the whole level as one matmul. The input
  signature has unknown dimensions, so there is exactly one trace for all 1101
  trees. (A recursive Python function would retrace for every tree shape; an
  unrolled level loop retraces for every depth.)
- XLA: shapes must be static, so trees are padded to buckets (leaves to a
  multiple of 16, depth to a multiple of 4, level width to 4/8/16; 29 buckets on
  the SST dev set); a `tf.while_loop` with a static trip count runs over the
  padded levels, writing each level's rows into a fixed-size state buffer
  (`tensor_scatter_nd_update`); padded rows are masked out of the loss. One compilation per bucket, all done by
  `precompile` before timing.
- Minibatched (treelstm_mb25, tf.function only): the 25 trees of an update are
  one forest (`tree_schedule.level_schedule` of the list), so each level is one
  matmul over that height's nodes of all 25 trees; the same single trace, the
  loss divided by 25. Not under XLA: padded forests of 25 trees have about one
  shape bucket per minibatch, i.e. one XLA compilation per update.

PINN: the Laplacian by nested `GradientTape`s inside the training step's tape:
an inner tape gives du/dx of the batched network, a persistent middle tape the
derivative of each of its columns, and the outer tape the weights' gradient
through both. Adam follows torch.optim.Adam's formula.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict

import numpy as np

from benchmarks.frameworks import Unsupported
from benchmarks.frameworks._common import missing
from benchmarks.frameworks.tree_schedule import level_schedule, padded_key, padded_schedule, slack_schedule
from benchmarks.spec import TREE_MODELS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def available(jit_compile: bool = False):
    try:
        import tensorflow as tf
    except Exception as e:
        return False, missing("tensorflow-cpu", e)
    return True, tf.__version__


def configure_threads(**_) -> str:
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return ("tf intra_op={} inter_op={}".format(tf.config.threading.get_intra_op_parallelism_threads(),
                                               tf.config.threading.get_inter_op_parallelism_threads()))


def versions() -> dict:
    import tensorflow as tf
    return {"tensorflow": tf.__version__}


# ----------------------------------------------------------------------------- layouts

def _fc1_perm() -> np.ndarray:
    """perm[j] = PyTorch (C,H,W) flat index of TF (H,W,C) flat index j, for [20, 4, 4]."""
    return np.arange(320).reshape(20, 4, 4).transpose(1, 2, 0).reshape(-1)


def to_tf(model: str, weights: Dict[str, np.ndarray]) -> "OrderedDict[str, np.ndarray]":
    out = OrderedDict((k, np.array(v, dtype=np.float32)) for k, v in weights.items())
    if model == "cnn":
        for k in ("conv1.weight", "conv2.weight"):
            out[k] = np.ascontiguousarray(out[k].transpose(2, 3, 1, 0))          # OIHW -> HWIO
        out["fc1.weight"] = np.ascontiguousarray(out["fc1.weight"][:, _fc1_perm()])
    return out


def from_tf(model: str, weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out = {k: np.array(v) for k, v in weights.items()}
    if model == "cnn":
        for k in ("conv1.weight", "conv2.weight"):
            out[k] = np.ascontiguousarray(out[k].transpose(3, 2, 0, 1))          # HWIO -> OIHW
        w = np.empty_like(out["fc1.weight"])
        w[:, _fc1_perm()] = out["fc1.weight"]
        out["fc1.weight"] = w
    return out


# ----------------------------------------------------------------------------- trainer

class TFTrainer:
    def __init__(self, model, weights, cfg, jit_compile: bool):
        import tensorflow as tf
        self.tf = tf
        self.model, self.cfg, self.jit = model, cfg, jit_compile
        self.vars = OrderedDict((k, tf.Variable(v, name=k.replace(".", "_")))
                                for k, v in to_tf(model, weights).items())
        self.var_list = list(self.vars.values())
        self.acc = ([tf.Variable(tf.zeros_like(v)) for v in self.var_list]
                    if cfg.optimizer == "adagrad" else None)
        if cfg.optimizer == "adam":   # PyTorch's Adam state: step, exp_avg, exp_avg_sq
            self.adam_t = tf.Variable(0.0)
            self.adam_m = [tf.Variable(tf.zeros_like(v)) for v in self.var_list]
            self.adam_v = [tf.Variable(tf.zeros_like(v)) for v in self.var_list]
            self.acc = [self.adam_t] + self.adam_m + self.adam_v   # saved and restored by precompile
        if model in TREE_MODELS:
            self.emb = tf.constant(cfg.embedding)
            self.schedule = level_schedule
        self.loss_fn = getattr(self, f"_loss_{model}")
        sig = self._signature()
        self._step = tf.function(self._train_step, jit_compile=jit_compile, input_signature=sig)

    # -- signatures: None dims for the dynamic TreeLSTM graph, fixed shapes otherwise
    def _signature(self):
        tf, cfg = self.tf, self.cfg
        if self.model in ("rnn", "lstm"):
            return [tf.TensorSpec([cfg.seq, cfg.batch, cfg.vocab], tf.float32),
                    tf.TensorSpec([cfg.seq, cfg.batch], tf.int32)]
        if self.model == "cnn":
            return [tf.TensorSpec([cfg.batch, 28, 28, 1], tf.float32), tf.TensorSpec([cfg.batch], tf.int32)]
        if self.model == "transformer":
            return [tf.TensorSpec([cfg.batch, cfg.seq], tf.int32), tf.TensorSpec([cfg.batch, cfg.seq], tf.int32)]
        if self.model == "pinn":
            n, m = cfg.batch, cfg.boundary
            return [tf.TensorSpec([n, 2], tf.float32), tf.TensorSpec([n, 1], tf.float32),
                    tf.TensorSpec([m, 2], tf.float32), tf.TensorSpec([m, 1], tf.float32)]
        if self.model in TREE_MODELS and not self.jit:
            i = tf.int32
            return [tf.TensorSpec([None], i), tf.TensorSpec([None], i), tf.TensorSpec([None], i),
                    tf.TensorSpec([None], i), tf.TensorSpec([None], i)]
        return None   # XLA TreeLSTM: one trace per padded bucket

    def prepare(self, batch):
        tf = self.tf
        if self.model in ("rnn", "lstm"):
            return tf.constant(batch.xs), tf.constant(batch.ys)
        if self.model == "cnn":
            return tf.constant(batch.x.transpose(0, 2, 3, 1)), tf.constant(batch.y)
        if self.model == "transformer":   # [seq, batch] -> [batch, seq]
            return tf.constant(batch.ids.T), tf.constant(batch.ys.T)
        if self.model == "pinn":
            return tuple(tf.constant(a) for a in batch)
        if self.jit:
            return tuple(tf.constant(a) for a in padded_schedule(batch))
        return tuple(tf.constant(a) for a in self.schedule(batch))

    def precompile(self, batches):
        """Trace (and, for XLA, compile) the step for every distinct shape among
        `batches`, then restore the weights and optimizer state: compilation happens
        at a concrete function's first call, so each bucket is called once."""
        state = self.var_list + (self.acc or []) + getattr(self, "acc_sq", []) + getattr(self, "bias_corr", [])
        saved = [v.numpy() for v in state]
        seen = set()
        for b in batches:
            key = tuple(tuple(t.shape) for t in b)
            if key not in seen:
                seen.add(key)
                self._step(*b)
        for v, x in zip(state, saved):
            v.assign(x)

    def _grads(self, *batch):
        with self.tf.GradientTape() as tape:
            loss = self.loss_fn(*batch)
        return loss, tape.gradient(loss, self.var_list)

    def _train_step(self, *batch):
        tf, cfg = self.tf, self.cfg
        loss, grads = self._grads(*batch)
        if cfg.clip is not None:   # torch.nn.utils.clip_grad_norm_ semantics
            norm = tf.sqrt(tf.add_n([tf.reduce_sum(g * g) for g in grads]))
            coef = tf.minimum(cfg.clip / (norm + 1e-6), 1.0)
            grads = [g * coef for g in grads]
        if cfg.optimizer == "adagrad":
            for v, a, g in zip(self.var_list, self.acc, grads):
                a.assign_add(g * g)
                v.assign_sub(cfg.lr * g / (tf.sqrt(a) + cfg.eps))
        elif cfg.optimizer == "adam":   # torch.optim.Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
            b1, b2 = 0.9, 0.999
            t = self.adam_t.assign_add(1.0)
            bc1, bc2 = 1.0 - tf.pow(b1, t), 1.0 - tf.pow(b2, t)
            for v, m, s2, g in zip(self.var_list, self.adam_m, self.adam_v, grads):
                g = tf.convert_to_tensor(g)   # the embedding's gradient is IndexedSlices
                m.assign(b1 * m + (1.0 - b1) * g)
                s2.assign(b2 * s2 + (1.0 - b2) * g * g)
                v.assign_sub(cfg.lr / bc1 * m / (tf.sqrt(s2) / tf.sqrt(bc2) + cfg.eps))
        else:
            for v, g in zip(self.var_list, grads):
                v.assign_sub(cfg.lr * g)
        return loss

    def step(self, batch) -> float:
        return float(self._step(*batch))

    def weights(self) -> Dict[str, np.ndarray]:
        return from_tf(self.model, {k: v.numpy() for k, v in self.vars.items()})

    # -- the models
    def _ce_sum(self, labels, logits):
        return self.tf.reduce_sum(self.tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    def _linear(self, x, name):
        return self.tf.matmul(x, self.vars[name + ".weight"], transpose_b=True) + self.vars[name + ".bias"]

    def _over_time(self, cell, xs, ys, state):
        """sum_t loss_t of `cell(state, x_t, y_t) -> (state, loss_t)`. Graph mode unrolls the
        20 steps in Python (fastest there); XLA gets a tf.while_loop with a static trip
        count, which compiles ~4x faster than the unrolled graph and runs as fast."""
        tf, seq = self.tf, self.cfg.seq
        if not self.jit:
            loss = 0.0
            for t in range(seq):
                state, l_t = cell(state, xs[t], ys[t])
                loss += l_t
            return loss

        def body(t, loss, *state):
            state, l_t = cell(state, xs[t], ys[t])
            return (t + 1, loss + l_t) + tuple(state)
        return tf.while_loop(lambda t, *_: t < seq, body, (0, 0.0) + tuple(state), maximum_iterations=seq)[1]

    def _loss_rnn(self, xs, ys):
        tf = self.tf

        def cell(state, x, y):
            h = tf.tanh(self._linear(tf.concat([x, state[0]], axis=1), "i2h"))
            return (h,), self._ce_sum(y, self._linear(h, "h2o"))
        return self._over_time(cell, xs, ys, (tf.zeros([self.cfg.batch, self.cfg.hidden]),))

    def _loss_lstm(self, xs, ys):
        tf, v = self.tf, self.vars
        b = v["cell.bias_ih"] + v["cell.bias_hh"]

        def cell(state, x, y):
            h, c = state
            gates = (tf.matmul(x, v["cell.weight_ih"], transpose_b=True)
                     + tf.matmul(h, v["cell.weight_hh"], transpose_b=True) + b)
            i, f, g, o = tf.split(gates, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            return (h, c), self._ce_sum(y, self._linear(h, "out"))   # = nll(log_softmax)
        z = tf.zeros([self.cfg.batch, self.cfg.hidden])
        return self._over_time(cell, xs, ys, (z, z))

    def _loss_cnn(self, x, y):
        tf, v = self.tf, self.vars
        x = tf.nn.conv2d(x, v["conv1.weight"], 1, "VALID") + v["conv1.bias"]
        x = tf.nn.relu(tf.nn.max_pool2d(x, 2, 2, "VALID"))
        x = tf.nn.conv2d(x, v["conv2.weight"], 1, "VALID") + v["conv2.bias"]
        x = tf.nn.relu(tf.nn.max_pool2d(x, 2, 2, "VALID"))
        x = tf.reshape(x, [-1, 320])                                   # H,W,C order (fc1 permuted)
        x = tf.nn.relu(self._linear(x, "fc1"))
        if self.cfg.dropout:
            x = tf.nn.dropout(x, rate=self.cfg.dropout_p)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, self._linear(x, "fc2")))

    def _layer_norm(self, x, name, eps=1e-5):
        tf = self.tf
        mu, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mu) * tf.math.rsqrt(var + eps) * self.vars[name + ".weight"] + self.vars[name + ".bias"]

    def _loss_transformer(self, ids, ys):
        """Pre-norm encoder layers as torch.nn.TransformerEncoderLayer(norm_first=True,
        activation="gelu", dropout=0) computes them, causal mask, batch first."""
        tf, v, cfg = self.tf, self.vars, self.cfg
        B, S, E, H = cfg.batch, cfg.seq, cfg.hidden, cfg.heads
        D = E // H
        future = tf.constant(np.triu(np.ones((S, S), bool), 1))
        x = tf.gather(v["tok.weight"], ids) + v["pos"]
        for i in range(cfg.layers):
            pre = f"layers.{i}."
            h = self._layer_norm(x, pre + "norm1")
            qkv = tf.matmul(h, v[pre + "self_attn.in_proj_weight"], transpose_b=True) + v[pre + "self_attn.in_proj_bias"]
            qkv = tf.transpose(tf.reshape(qkv, [B, S, 3, H, D]), [2, 0, 3, 1, 4])
            q, k, val = qkv[0], qkv[1], qkv[2]
            scores = tf.where(future, -np.inf, tf.matmul(q, k, transpose_b=True) / np.sqrt(D))
            att = tf.matmul(tf.nn.softmax(scores, axis=-1), val)
            att = tf.reshape(tf.transpose(att, [0, 2, 1, 3]), [B, S, E])
            x = x + self._linear(att, pre + "self_attn.out_proj")
            h = tf.nn.gelu(self._linear(self._layer_norm(x, pre + "norm2"), pre + "linear1"), approximate=False)
            x = x + self._linear(h, pre + "linear2")
        logits = self._linear(self._layer_norm(x, "norm"), "head")
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.reshape(ys, [-1]), tf.reshape(logits, [B * S, -1])))

    def _cells(self):
        tf, v, H = self.tf, self.vars, self.cfg.hidden

        def leaf(x):
            z = tf.matmul(x, v["W_leaf"], transpose_b=True) + v["b_leaf"]
            i, o, u = tf.split(z, 3, axis=1)
            c = tf.sigmoid(i) * tf.tanh(u)
            return tf.sigmoid(o) * tf.tanh(c), c

        def inner(hl, cl, hr, cr):
            z = tf.matmul(tf.concat([hl, hr], axis=1), v["U"], transpose_b=True) + v["b_inner"]
            i, fl, fr, o, u = tf.split(z, 5, axis=1)
            c = tf.sigmoid(i) * tf.tanh(u) + tf.sigmoid(fl) * cl + tf.sigmoid(fr) * cr
            return tf.sigmoid(o) * tf.tanh(c), c

        return leaf, inner, H

    def _loss_treelstm(self, *sched):
        tf, v = self.tf, self.vars
        leaf, inner, H = self._cells()
        if self.jit:
            words, left, right, labels, mask = sched
            NL, (D, W) = words.shape[0], left.shape
            h, c = leaf(tf.gather(self.emb, words))
            pad = tf.zeros([D * W, H])
            h, c = tf.concat([h, pad], 0), tf.concat([c, pad], 0)

            def level(k, h, c):   # static buffer; the level's rows are written in place
                l, r = left[k], right[k]
                hk, ck = inner(tf.gather(h, l), tf.gather(c, l), tf.gather(h, r), tf.gather(c, r))
                rows = (NL + k * W + tf.range(W))[:, None]
                return k + 1, tf.tensor_scatter_nd_update(h, rows, hk), tf.tensor_scatter_nd_update(c, rows, ck)

            _, h, c = tf.while_loop(lambda k, h, c: k < D, level, (0, h, c), maximum_iterations=D)
            logits = tf.matmul(h, v["W_out"], transpose_b=True) + v["b_out"]
            return tf.reduce_sum(mask * tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        words, left, right, bounds, labels = sched
        h, c = leaf(tf.gather(self.emb, words))

        def body(k, h, c):
            lo, hi = bounds[k], bounds[k + 1]
            l, r = left[lo:hi], right[lo:hi]
            hk, ck = inner(tf.gather(h, l), tf.gather(c, l), tf.gather(h, r), tf.gather(c, r))
            return k + 1, tf.concat([h, hk], 0), tf.concat([c, ck], 0)

        _, h, c = tf.while_loop(lambda k, h, c: k < tf.shape(bounds)[0] - 1, body, [0, h, c],
                                shape_invariants=[tf.TensorShape([]), tf.TensorShape([None, H]),
                                                  tf.TensorShape([None, H])])
        logits = tf.matmul(h, v["W_out"], transpose_b=True) + v["b_out"]
        return self._ce_sum(labels, logits)

    def _loss_treelstm_mb25(self, *sched):
        """A minibatch as one forest: the mean of its trees' summed node losses."""
        return self._loss_treelstm(*sched) / self.cfg.batch

    def _mlp(self, x):
        h = x
        for k in (1, 2, 3):
            h = self.tf.tanh(self._linear(h, f"fc{k}"))
        return self._linear(h, "fc4")

    def _loss_pinn(self, xi, f, xb, g):
        tf = self.tf
        with tf.GradientTape(persistent=True) as t2:
            t2.watch(xi)
            with tf.GradientTape() as t1:
                t1.watch(xi)
                u = self._mlp(xi)
            du = t1.gradient(u, xi)                     # [n, 2]; rows are independent points
            dux, duy = du[:, 0], du[:, 1]
        lap = t2.gradient(dux, xi)[:, 0:1] + t2.gradient(duy, xi)[:, 1:2]
        del t2
        return (tf.reduce_mean((lap - f) ** 2)
                + self.cfg.boundary_weight * tf.reduce_mean((self._mlp(xb) - g) ** 2))


def build(model, weights, cfg, jit_compile: bool = False):
    if model == "treelstm_mb25" and jit_compile:
        raise Unsupported("not timed under XLA: padded 25-tree forests give about one shape bucket, "
                          "so one XLA compilation, per update (the tf.function row is level-batched)")
    return TFTrainer(model, weights, cfg, jit_compile)


def build_on_slack_levels(model, weights, cfg, jit_compile: bool = False):
    """The level-batched step over lantern_stage's schedule: the same levels,
    their widths chosen by `tree_schedule.slack_schedule` for its chunks."""
    trainer = build(model, weights, cfg, jit_compile)
    trainer.schedule = slack_schedule
    return trainer


def variants(model, jit_compile: bool = False, **_) -> dict:
    """Formulations timed side by side (label -> build); the faster counts as
    TF's time.  The minibatched TreeLSTM also over the schedule lantern_stage
    trains it with, so that its lead is not the schedule's."""
    if model == "treelstm_mb25" and not jit_compile:
        return {"height levels": build, "slack levels": build_on_slack_levels}
    return {}
