"""Vanilla char-RNN in lantern_stage (the paper's first benchmark).

h = tanh(i2h([x_t, h])), loss += cross_entropy(h2o(h), y_t, sum) over 20
steps of a batch of 20 one-hot sequences; Adagrad lr 0.1, clip_grad_norm 5.
The Python loop over time steps unrolls at staging time.
"""
# No `from __future__ import annotations`: the staged inputs' annotations
# are computed from the config when the loss function is defined.
import lantern_stage as lt
from lantern_stage import nn

from benchmarks.models import LanternTrainer, main


class CharRNN(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.i2h = nn.Linear(vocab + hidden, hidden)
        self.h2o = nn.Linear(hidden, vocab)

    def forward(self, xs, ys):
        seq, batch = ys.shape
        h = lt.zeros(batch, self.hidden)
        loss = 0.0
        for t in range(seq):
            h = lt.tanh(self.i2h(lt.concat([xs[t], h], axis=1)))
            loss = loss + lt.cross_entropy(self.h2o(h), ys[t], reduction="sum")
        return loss


def build(weights, cfg) -> LanternTrainer:
    model = CharRNN(cfg.vocab, cfg.hidden)
    model.load_state_dict(weights)

    def loss_fn(model, xs: lt.Tensor[cfg.seq, cfg.batch, cfg.vocab], ys: lt.Tensor[cfg.seq, cfg.batch, "int32"]):
        return model(xs, ys)

    opt = lt.optim.Adagrad(model.parameters(), lr=cfg.lr, eps=cfg.eps)
    step = lt.train_step(model, loss_fn, opt, clip_grad_norm=cfg.clip, name="rnn_step")
    return LanternTrainer(model, step, lambda batch: (batch.xs, batch.ys))


if __name__ == "__main__":
    main("rnn", build)
