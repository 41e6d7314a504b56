"""MultiheadAttention and TransformerEncoderLayer with PyTorch's parameter
names and layouts (in_proj_weight [3E, E], in_proj_bias [3E], out_proj;
self_attn.*, linear1, linear2, norm1, norm2), masks and defaults, so that a
PyTorch state_dict loads as is."""
from __future__ import annotations

import math

import numpy as np

from .. import api as F
from ..ops import linalg
from ..ops.registry import as_rep
from ..staging import staging_error
from . import init
from .layers import Dropout, Linear
from .module import Module, Parameter
from .normalization import LayerNorm


def _additive_mask(scores, mask, what):
    """scores with `mask` applied as PyTorch does: a bool mask is True where
    attending is not allowed (-inf there), a float mask is added."""
    mask = as_rep(mask)
    if mask.dtype == "bool":
        return F.where(mask, float("-inf"), scores)
    if mask.dtype == "float32":
        return scores + mask
    raise staging_error(f"MultiheadAttention: {what} must be a bool or float32 mask, got {mask.type}")


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention (same embedding size for query, key and
    value).  forward(query, key, value, key_padding_mask=None,
    need_weights=True, attn_mask=None, average_attn_weights=True) ->
    (output, weights): weights [B, L, S] averaged over heads (or
    [B, H, L, S]), None when need_weights=False.  attn_mask is [L, S] or
    [B * H, L, S]; key_padding_mask [B, S]; bool masks are True where
    attention is not allowed, float masks are added to the scores."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = Parameter(np.zeros((3 * embed_dim, embed_dim), np.float32))
        self.register_parameter("in_proj_bias", Parameter(np.zeros(3 * embed_dim, np.float32)) if bias else None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        init.xavier_uniform_(self.in_proj_weight)
        if bias:
            init.zeros_(self.out_proj.bias)

    def _project(self, x, part):
        """x [B, T, E] through rows part*E:(part+1)*E of the input projection -> [B, T, E]."""
        e = self.embed_dim
        w = self.in_proj_weight[part * e:(part + 1) * e]
        b = None if self.in_proj_bias is None else self.in_proj_bias[part * e:(part + 1) * e]
        return F.linear(x, w, b)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True):
        query, key, value = as_rep(query), as_rep(key), as_rep(value)
        if not self.batch_first:  # [T, B, E] -> [B, T, E]
            query, key, value = (F.transpose(t, (1, 0, 2)) if t is not None else t for t in (query, key, value))
        for what, t in (("query", query), ("key", key), ("value", value)):
            if len(t.shape) != 3 or t.shape[2] != self.embed_dim:
                raise staging_error(f"MultiheadAttention: {what} must be [batch, seq, {self.embed_dim}] "
                                    f"(batch_first={self.batch_first}), got {t.shape}")
        B, L, E = query.shape
        S = key.shape[1]
        H, D = self.num_heads, self.head_dim
        # Each head's q, k and v are [T, D] blocks of a projection [B, T, n E] (rows n E apart), read in
        # place by the per-head products: (buffer, offset of head 0, row stride).
        if query is key and key is value:  # self-attention: one projection
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
            q, k, v = ((qkv, part * E, 3 * E) for part in range(3))
        else:
            q, k, v = ((self._project(t, part), 0, E) for part, t in enumerate((query, key, value)))
        scores = linalg.bmm(q[0], k[0], out_shape=(B, H, L, S), batch=(B, H), sa=(L * q[2], D), sb=(S * k[2], D),
                            so=(H * L * S, L * S), M=L, N=S, K=D, ta=False, tb=True, oa=q[1], ob=k[1],
                            lda=q[2], ldb=k[2])  # q k^T, [B, H, L, S]
        scores = scores * (1.0 / math.sqrt(D))
        if attn_mask is not None:
            m = as_rep(attn_mask)
            if m.shape == (B * H, L, S):
                m = F.reshape(m, (B, H, L, S))
            elif m.shape != (L, S):
                raise staging_error(f"MultiheadAttention: attn_mask must be [{L}, {S}] or [{B * H}, {L}, {S}], "
                                    f"got {m.shape}")
            scores = _additive_mask(scores, m, "attn_mask")
        if key_padding_mask is not None:
            m = as_rep(key_padding_mask)
            if m.shape != (B, S):
                raise staging_error(f"MultiheadAttention: key_padding_mask must be [{B}, {S}], got {m.shape}")
            scores = _additive_mask(scores, F.reshape(m, (B, 1, 1, S)), "key_padding_mask")
        weights = F.dropout(F.softmax(scores, axis=-1), self.dropout, self.training)
        # weights v, each head's [L, D] written in place into its columns of [B, L, E]
        out = linalg.bmm(weights, v[0], out_shape=(B, L, E), batch=(B, H), sa=(H * L * S, L * S), sb=(S * v[2], D),
                         so=(L * E, D), M=L, N=D, K=S, ta=False, tb=False, ob=v[1], ldb=v[2], ldc=E)
        out = self.out_proj(out)
        if not self.batch_first:
            out = F.transpose(out, (1, 0, 2))
        if not need_weights:
            return out, None
        return out, (F.mean(weights, axis=1) if average_attn_weights else weights)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class TransformerEncoderLayer(Module):
    """torch.nn.TransformerEncoderLayer: self-attention and a feed-forward
    block (linear1, activation, dropout, linear2), each with a residual and
    a LayerNorm: after it (norm_first=False, the default) or before it
    (norm_first=True, pre-norm).  forward(src, src_mask=None,
    src_key_padding_mask=None)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True):
        super().__init__()
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"TransformerEncoderLayer: activation must be 'relu' or 'gelu' or a function, "
                                 f"got {activation!r}")
            activation = _ACTIVATIONS[activation]
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = activation

    def _sa_block(self, x, attn_mask, key_padding_mask):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None):
        x = as_rep(src)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask))
        return self.norm2(x + self._ff_block(x))
