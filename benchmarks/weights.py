"""Initial weights of the benchmark models, made once in numpy and loaded by every framework.

PyTorch's default initialisation with a fixed seed: uniform(-1/sqrt(fan_in),
1/sqrt(fan_in)) for the weights and biases of Linear and Conv2d (kaiming_uniform
with a=sqrt(5) reduces to that bound) and 1/sqrt(hidden) for every LSTMCell tensor
(PyTorch's LSTMCell rule); the transformer's as PyTorch initialises its modules
(xavier_uniform in_proj_weight, zero projection biases, LayerNorm 1 and 0, N(0, 1)
token embeddings) plus learned positions N(0, 0.02). The PINN's MLP 2 -> 64 -> 64 -> 64 -> 1 is four Linear
layers fc1..fc4 with the default Linear rule. Names and layouts are PyTorch's: Linear weights are
[out, in], Conv2d weights [out, in, kh, kw], LSTMCell gates stacked i, f, g, o.
"""
from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np

from benchmarks.spec import TREE_MODELS, Config, make_config, weights_of

WEIGHT_SEED = 7

Shape = Tuple[int, ...]

# The transformer's tensors whose PyTorch initialisation is a constant (LayerNorm
# weight 1 and bias 0; MultiheadAttention's projection biases 0), by name suffix.
CONSTANT_INIT = {"norm1.weight": 1.0, "norm1.bias": 0.0, "norm2.weight": 1.0, "norm2.bias": 0.0,
                 "norm.weight": 1.0, "norm.bias": 0.0, "in_proj_bias": 0.0, "out_proj.bias": 0.0}


def layout(cfg: Config) -> List[Tuple[str, Shape, int]]:
    """(name, shape, fan_in used for the bound) of every parameter, in PyTorch order."""
    V, H = cfg.vocab, cfg.hidden
    if cfg.model == "rnn":
        return [("i2h.weight", (H, V + H), V + H), ("i2h.bias", (H,), V + H),
                ("h2o.weight", (V, H), H), ("h2o.bias", (V,), H)]
    if cfg.model == "lstm":
        return [("cell.weight_ih", (4 * H, V), H), ("cell.weight_hh", (4 * H, H), H),
                ("cell.bias_ih", (4 * H,), H), ("cell.bias_hh", (4 * H,), H),
                ("out.weight", (V, H), H), ("out.bias", (V,), H)]
    if cfg.model == "cnn":
        return [("conv1.weight", (10, 1, 5, 5), 25), ("conv1.bias", (10,), 25),
                ("conv2.weight", (20, 10, 5, 5), 250), ("conv2.bias", (20,), 250),
                ("fc1.weight", (50, 320), 320), ("fc1.bias", (50,), 320),
                ("fc2.weight", (10, 50), 50), ("fc2.bias", (10,), 50)]
    if cfg.model in TREE_MODELS:
        E, C = cfg.embed, cfg.classes
        return [("W_leaf", (3 * H, E), E), ("b_leaf", (3 * H,), E),
                ("U", (5 * H, 2 * H), 2 * H), ("b_inner", (5 * H,), 2 * H),
                ("W_out", (C, H), H), ("b_out", (C,), H)]
    if cfg.model == "transformer":
        E, F = cfg.hidden, cfg.ff
        out = [("tok.weight", (V, E), 0), ("pos", (cfg.seq, E), 0)]
        for i in range(cfg.layers):
            p = f"layers.{i}."
            out += [(p + "self_attn.in_proj_weight", (3 * E, E), 0), (p + "self_attn.in_proj_bias", (3 * E,), 0),
                    (p + "self_attn.out_proj.weight", (E, E), E), (p + "self_attn.out_proj.bias", (E,), 0),
                    (p + "linear1.weight", (F, E), E), (p + "linear1.bias", (F,), E),
                    (p + "linear2.weight", (E, F), F), (p + "linear2.bias", (E,), F),
                    (p + "norm1.weight", (E,), 0), (p + "norm1.bias", (E,), 0),
                    (p + "norm2.weight", (E,), 0), (p + "norm2.bias", (E,), 0)]
        return out + [("norm.weight", (E,), 0), ("norm.bias", (E,), 0), ("head.weight", (V, E), E),
                      ("head.bias", (V,), E)]
    if cfg.model == "pinn":
        H = cfg.hidden
        sizes = [(H, 2), (H, H), (H, H), (1, H)]
        out = []
        for k, (o, i) in enumerate(sizes, 1):
            out += [(f"fc{k}.weight", (o, i), i), (f"fc{k}.bias", (o,), i)]
        return out
    raise ValueError(f"unknown model {cfg.model!r}")


def init_weights(model_or_cfg, seed: int = WEIGHT_SEED) -> "OrderedDict[str, np.ndarray]":
    """Ordered dict name -> float32 array of `model`'s initial weights.

    The same (model, vocab, seed) always gives the same arrays; the minibatched
    TreeLSTM gets the TreeLSTM's (`spec.weights_of`)."""
    cfg = model_or_cfg if isinstance(model_or_cfg, Config) else make_config(model_or_cfg)
    rng = np.random.default_rng([seed, zlib.crc32(weights_of(cfg.model).encode())])
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, shape, fan_in in layout(cfg):
        const = next((v for k, v in CONSTANT_INIT.items() if name.endswith(k)), None)
        if const is not None:
            out[name] = np.full(shape, const, dtype=np.float32)
        elif name.endswith("in_proj_weight"):   # xavier_uniform_
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        elif name == "tok.weight":                # nn.Embedding: N(0, 1)
            out[name] = rng.standard_normal(shape).astype(np.float32)
        elif name == "pos":                       # learned positions, GPT-2's N(0, 0.02)
            out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        else:
            bound = 1.0 / math.sqrt(fan_in)
            out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return out


def max_rel_diff(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
    """Largest |a-b| / max(|b|) over all tensors (for comparing trained weights)."""
    worst = 0.0
    for k in a:
        scale = float(np.max(np.abs(b[k]))) or 1.0
        worst = max(worst, float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) / scale)
    return worst
