"""JAX twins: one `jax.jit` per training step (forward, grad, clipping, update).

Parameters keep PyTorch's names and layouts (a dict pytree); convolutions use
NCHW/OIHW dimension numbers, so no weight is converted. The RNN and LSTM loop
over time with `lax.scan` (compiles in a fraction of the unrolled loop's time and
runs as fast). Adagrad and clipping follow PyTorch's formulas.

TreeLSTM: `jax.jit` of a recursive function is specialised to the tree's
structure and recompiles for every new shape, so the twin is level-batched on
padded buckets instead (`tree_schedule.padded_schedule`): leaves are one batched
matmul, then `lax.scan` runs over the padded levels, each level gathering its
children's states from a fixed-size buffer and writing its own rows with
`dynamic_update_slice`; padded rows are masked out of the loss. One compilation
per bucket (29 on the SST dev set), all done by `precompile` before timing.
Minibatched (treelstm_mb25): the 25 trees of an update are padded as one forest
in coarser buckets (leaves a multiple of 64, widths of 32), the loss divided by
25; the padding to the widest level costs several times the real nodes' work.

PINN: the network u is applied to the whole batch of points; the Laplacian is
nested `jax.jvp` along each coordinate direction (forward over forward: the
second directional derivative u_xx = jvp(x -> jvp(u, x, e)[1], x, e)[1], the
rows being independent points), and `jax.value_and_grad` of the loss over the
weights is reverse over that forward code, all in one `jax.jit`. Adam follows
torch.optim.Adam's formula.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Dict

import numpy as np

from benchmarks.frameworks._common import missing
from benchmarks.frameworks.tree_schedule import padded_key, padded_schedule
from benchmarks.spec import TREE_MODELS


def available():
    try:
        import jax
    except Exception as e:
        return False, missing("jax", e)
    return True, jax.__version__


def configure_threads(**_) -> str:
    # XLA:CPU reads its thread settings from XLA_FLAGS at backend start-up; the
    # harness sets them in the environment before this process starts.
    import jax
    jax.config.update("jax_platforms", "cpu")
    return f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"


def versions() -> dict:
    import jax
    import jaxlib
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}


def _models():
    import jax
    import jax.numpy as jnp
    from jax import lax

    def linear(x, p, name):
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    def ce_sum(logits, labels):
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=1))

    def loss_rnn(p, xs, ys):
        def body(h, xy):
            x, y = xy
            h = jnp.tanh(linear(jnp.concatenate([x, h], axis=1), p, "i2h"))
            return h, ce_sum(linear(h, p, "h2o"), y)
        h0 = jnp.zeros((xs.shape[1], p["i2h.bias"].shape[0]), xs.dtype)
        return jnp.sum(lax.scan(body, h0, (xs, ys))[1])

    def loss_lstm(p, xs, ys):
        b = p["cell.bias_ih"] + p["cell.bias_hh"]

        def body(hc, xy):
            (h, c), (x, y) = hc, xy
            gates = x @ p["cell.weight_ih"].T + h @ p["cell.weight_hh"].T + b
            i, f, g, o = jnp.split(gates, 4, axis=1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), ce_sum(linear(h, p, "out"), y)
        z = jnp.zeros((xs.shape[1], p["out.weight"].shape[1]), xs.dtype)
        return jnp.sum(lax.scan(body, (z, z), (xs, ys))[1])

    def conv(x, p, name):
        y = lax.conv_general_dilated(x, p[name + ".weight"], (1, 1), "VALID",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + p[name + ".bias"][None, :, None, None]

    def pool2(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def loss_cnn(p, x, y, key, dropout, rate):
        x = jax.nn.relu(pool2(conv(x, p, "conv1")))
        x = jax.nn.relu(pool2(conv(x, p, "conv2")))
        x = jax.nn.relu(linear(x.reshape(-1, 320), p, "fc1"))
        if dropout:
            keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
            x = jnp.where(keep, x / (1.0 - rate), 0.0)
        return ce_sum(linear(x, p, "fc2"), y) / x.shape[0]

    def loss_treelstm(p, emb, words, left, right, labels, mask):
        H = p["W_out"].shape[1]
        z = emb[words] @ p["W_leaf"].T + p["b_leaf"]
        i, o, u = jnp.split(z, 3, axis=1)
        c_leaf = jax.nn.sigmoid(i) * jnp.tanh(u)
        h_leaf = jax.nn.sigmoid(o) * jnp.tanh(c_leaf)
        NL, (D, W) = words.shape[0], left.shape
        pad = jnp.zeros((D * W, H), z.dtype)
        hbuf, cbuf = jnp.concatenate([h_leaf, pad]), jnp.concatenate([c_leaf, pad])

        def level(carry, k_lr):
            hbuf, cbuf = carry
            k, l, r = k_lr
            zz = jnp.concatenate([hbuf[l], hbuf[r]], axis=1) @ p["U"].T + p["b_inner"]
            i, fl, fr, o, u = jnp.split(zz, 5, axis=1)
            c = (jax.nn.sigmoid(i) * jnp.tanh(u) + jax.nn.sigmoid(fl) * cbuf[l]
                 + jax.nn.sigmoid(fr) * cbuf[r])
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            row = NL + k * W
            return (lax.dynamic_update_slice(hbuf, h, (row, 0)),
                    lax.dynamic_update_slice(cbuf, c, (row, 0))), None

        (hbuf, _), _ = lax.scan(level, (hbuf, cbuf), (jnp.arange(D), left, right))
        logits = hbuf @ p["W_out"].T + p["b_out"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(mask * jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0])

    def layer_norm(x, p, name, eps=1e-5):
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
        return (x - mu) * lax.rsqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]

    def loss_transformer(p, ids, ys, heads, layers):
        """Pre-norm encoder layers as torch.nn.TransformerEncoderLayer(norm_first=True,
        activation="gelu", dropout=0) computes them, causal mask, batch first."""
        B, S = ids.shape
        x = p["tok.weight"][ids] + p["pos"]
        E = x.shape[-1]
        D = E // heads
        causal = jnp.triu(jnp.ones((S, S), bool), 1)
        for i in range(layers):
            pre = f"layers.{i}."
            h = layer_norm(x, p, pre + "norm1")
            qkv = h @ p[pre + "self_attn.in_proj_weight"].T + p[pre + "self_attn.in_proj_bias"]
            q, k, v = jnp.transpose(qkv.reshape(B, S, 3, heads, D), (2, 0, 3, 1, 4))
            scores = jnp.where(causal, -jnp.inf, (q @ jnp.swapaxes(k, -1, -2)) / np.sqrt(D))
            att = jax.nn.softmax(scores, axis=-1) @ v                          # [B, H, S, D]
            att = jnp.transpose(att, (0, 2, 1, 3)).reshape(B, S, E)
            x = x + linear(att, p, pre + "self_attn.out_proj")
            h = jax.nn.gelu(linear(layer_norm(x, p, pre + "norm2"), p, pre + "linear1"), approximate=False)
            x = x + linear(h, p, pre + "linear2")
        logits = linear(layer_norm(x, p, "norm"), p, "head")
        return ce_sum(logits.reshape(B * S, -1), ys.reshape(-1)) / (B * S)

    def mlp(p, x):
        h = x
        for k in (1, 2, 3):
            h = jnp.tanh(linear(h, p, f"fc{k}"))
        return linear(h, p, "fc4")

    def laplacian(p, x):
        u = lambda y: mlp(p, y)
        lap = 0.0
        for d in range(x.shape[1]):
            e = jnp.zeros_like(x).at[:, d].set(1.0)
            du = lambda y: jax.jvp(u, (y,), (e,))[1]
            lap = lap + jax.jvp(du, (x,), (e,))[1]
        return lap

    def loss_pinn(p, xi, f, xb, g, boundary_weight):
        return jnp.mean((laplacian(p, xi) - f) ** 2) + boundary_weight * jnp.mean((mlp(p, xb) - g) ** 2)

    def loss_treelstm_mb25(p, emb, *forest, trees):
        return loss_treelstm(p, emb, *forest) / trees

    return dict(rnn=loss_rnn, lstm=loss_lstm, cnn=loss_cnn, treelstm=loss_treelstm, treelstm_mb25=loss_treelstm_mb25,
                transformer=loss_transformer, pinn=loss_pinn)


class JaxTrainer:
    def __init__(self, model, weights, cfg):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self.model, self.cfg = model, cfg
        self.params = {k: jnp.asarray(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
        zeros = lambda: {k: jnp.zeros_like(v) for k, v in self.params.items()}  # noqa: E731
        # Adagrad: the accumulators; Adam: (step, exp_avg, exp_avg_sq), PyTorch's state.
        self.acc = (jnp.zeros((), jnp.float32), zeros(), zeros()) if cfg.optimizer == "adam" else zeros()
        self.key = jax.random.PRNGKey(0)
        loss = _models()[model]
        if model == "cnn":
            loss = partial(loss, dropout=cfg.dropout, rate=cfg.dropout_p)
        if model == "transformer":
            loss = partial(loss, heads=cfg.heads, layers=cfg.layers)
        if model == "pinn":
            loss = partial(loss, boundary_weight=cfg.boundary_weight)
        if model == "treelstm_mb25":
            loss = partial(loss, trees=cfg.batch)
        if model in TREE_MODELS:
            emb = jnp.asarray(cfg.embedding)
            loss = (lambda p, *b, _l=loss: _l(p, emb, *b))
        self.loss_fn = loss
        self._step = jax.jit(self._train_step, donate_argnums=(0, 1))

    def _train_step(self, params, acc, key, *batch):
        jax, jnp, cfg = self.jax, self.jnp, self.cfg
        if self.model == "cnn":
            key, sub = jax.random.split(key)
            batch = batch + (sub,)
        loss, grads = jax.value_and_grad(self.loss_fn)(params, *batch)
        if cfg.clip is not None:   # torch.nn.utils.clip_grad_norm_ semantics
            norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
            coef = jnp.minimum(cfg.clip / (norm + 1e-6), 1.0)
            grads = jax.tree_util.tree_map(lambda g: g * coef, grads)
        if cfg.optimizer == "adagrad":
            acc = jax.tree_util.tree_map(lambda a, g: a + g * g, acc, grads)
            params = jax.tree_util.tree_map(lambda p, a, g: p - cfg.lr * g / (jnp.sqrt(a) + cfg.eps),
                                            params, acc, grads)
        elif cfg.optimizer == "adam":   # torch.optim.Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
            (b1, b2), (t, m, v) = (0.9, 0.999), acc
            t = t + 1.0
            m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
            v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - cfg.lr / bc1 * m / (jnp.sqrt(v) / jnp.sqrt(bc2) + cfg.eps), params, m, v)
            acc = (t, m, v)
        else:
            params = jax.tree_util.tree_map(lambda p, g: p - cfg.lr * g, params, grads)
        return params, acc, key, loss

    def prepare(self, batch):
        jnp = self.jnp
        if self.model in ("rnn", "lstm"):
            return jnp.asarray(batch.xs), jnp.asarray(batch.ys)
        if self.model == "transformer":   # [seq, batch] -> [batch, seq]
            return jnp.asarray(batch.ids.T), jnp.asarray(batch.ys.T)
        if self.model == "cnn":
            return jnp.asarray(batch.x), jnp.asarray(batch.y)
        if self.model == "pinn":
            return tuple(jnp.asarray(a) for a in batch)
        if self.model == "treelstm_mb25":   # a list of trees, padded as one forest
            return tuple(jnp.asarray(a) for a in padded_schedule(batch, leaf_step=64, width_step=32))
        return tuple(jnp.asarray(a) for a in padded_schedule(batch))

    def precompile(self, batches):
        """Compile the step for every distinct shape among `batches`, on copies of the
        state (the real step donates its inputs), so the weights do not change."""
        seen = set()
        copy = lambda t: self.jax.tree_util.tree_map(self.jnp.copy, t)
        for b in batches:
            key = tuple(a.shape for a in b)
            if key not in seen:
                seen.add(key)
                out = self._step(copy(self.params), copy(self.acc), self.key, *b)
                self.jax.block_until_ready(out)

    def step(self, batch) -> float:
        self.params, self.acc, self.key, loss = self._step(self.params, self.acc, self.key, *batch)
        return float(loss)

    def weights(self) -> Dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.params.items()}


def build(model, weights, cfg):
    return JaxTrainer(model, weights, cfg)


def probe_recursive_recompile(trees, weights, cfg, n: int = 2) -> list:
    """Seconds to jit-compile the *recursive* TreeLSTM (the tree structure is static
    under jit) for each of the first `n` trees of distinct shape: every new shape
    compiles again, which is why the timed twin is level-batched."""
    import time
    import jax
    import jax.numpy as jnp
    emb = jnp.asarray(cfg.embedding)
    def tree_loss(p, labels, struct):
        words, lch, rch = struct
        total = []

        def node(n):
            if lch[n] < 0:
                z = emb[words[n]] @ p["W_leaf"].T + p["b_leaf"]
                i, o, u = jnp.split(z, 3)
                c = jax.nn.sigmoid(i) * jnp.tanh(u)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
            else:
                hl, cl = node(lch[n])
                hr, cr = node(rch[n])
                z = jnp.concatenate([hl, hr]) @ p["U"].T + p["b_inner"]
                i, fl, fr, o, u = jnp.split(z, 5)
                c = jax.nn.sigmoid(i) * jnp.tanh(u) + jax.nn.sigmoid(fl) * cl + jax.nn.sigmoid(fr) * cr
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
            total.append(-jax.nn.log_softmax(p["W_out"] @ h + p["b_out"])[labels[n]])
            return h, c

        node(0)
        return sum(total)

    grad = jax.jit(jax.value_and_grad(tree_loss), static_argnums=(2,))
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    out, shapes = [], set()
    for t in trees:
        struct = (tuple(t.words.tolist()), tuple(t.lch.tolist()), tuple(t.rch.tolist()))
        if struct[1:] in shapes:
            continue
        shapes.add(struct[1:])
        t0 = time.perf_counter()
        jax.block_until_ready(grad(params, jnp.asarray(t.labels), struct))
        out.append({"nodes": int(len(t.labels)), "compile_s": time.perf_counter() - t0})
        if len(out) >= n:
            break
    return out
