"""A character-level transformer language model in lantern_stage (issue 12's workload).

Token embedding + learned positions -> 2 pre-norm TransformerEncoderLayers
(d_model 64, 4 heads, feed-forward 256, GELU, causal self-attention, no
dropout) -> LayerNorm -> linear head; mean next-character cross-entropy over
a batch of 16 sequences of 32 characters; Adam lr 3e-3.  Parameter names
and layouts are PyTorch's (`benchmarks.frameworks.torch_models.CharTransformer`
is the twin, built on torch.nn.TransformerEncoderLayer).
"""
# No `from __future__ import annotations`: annotations come from the config.
import numpy as np

import lantern_stage as lt
from lantern_stage import nn

from benchmarks.models import LanternTrainer, main


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, d_model: int, heads: int, ff: int, layers: int, seq: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(np.zeros((seq, d_model), np.float32))
        self.layers = nn.Sequential(*[
            nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.causal = np.triu(np.ones((seq, seq), dtype=bool), 1)  # True: a future position, masked

    def logits(self, ids):
        """ids int32[B, S] -> logits [B, S, vocab]."""
        x = self.tok(ids) + self.pos
        for layer in self.layers:
            x = layer(x, src_mask=self.causal)
        return self.head(self.norm(x))

    def forward(self, ids, ys):
        logits = self.logits(ids)
        return lt.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1))


def prepare(batch):
    """A `benchmarks.data.CharBatch` ([seq, batch]) -> (ids, targets) int32 [batch, seq]."""
    return np.ascontiguousarray(batch.ids.T), np.ascontiguousarray(batch.ys.T)


def build(weights, cfg) -> LanternTrainer:
    model = CharTransformer(cfg.vocab, cfg.hidden, cfg.heads, cfg.ff, cfg.layers, cfg.seq)
    model.load_state_dict(weights)

    def loss_fn(model, ids: lt.Tensor[cfg.batch, cfg.seq, "int32"], ys: lt.Tensor[cfg.batch, cfg.seq, "int32"]):
        return model(ids, ys)

    opt = lt.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.eps)
    step = lt.train_step(model, loss_fn, opt, clip_grad_norm=cfg.clip, name="transformer_step")
    return LanternTrainer(model, step, prepare)


if __name__ == "__main__":
    main("transformer", build)
