"""Char-LSTM in lantern_stage (the paper's second benchmark).

(h, c) = LSTMCell(x_t, (h, c)) with PyTorch's weight layout (parameters
'cell.*'), loss += nll_loss(log_softmax(out(h)), y_t, sum) over 20 steps of a
batch of 20; Adagrad lr 0.1, clip_grad_norm 5.
"""
# No `from __future__ import annotations`: annotations come from the config.
import lantern_stage as lt
from lantern_stage import nn

from benchmarks.models import LanternTrainer, main


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(vocab, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, xs, ys):
        seq, batch = ys.shape
        h = c = lt.zeros(batch, self.hidden)
        loss = 0.0
        for t in range(seq):
            h, c = self.cell(xs[t], (h, c))
            loss = loss + lt.nll_loss(lt.log_softmax(self.out(h), axis=1), ys[t], reduction="sum")
        return loss


def build(weights, cfg) -> LanternTrainer:
    model = CharLSTM(cfg.vocab, cfg.hidden)
    model.load_state_dict(weights)

    def loss_fn(model, xs: lt.Tensor[cfg.seq, cfg.batch, cfg.vocab], ys: lt.Tensor[cfg.seq, cfg.batch, "int32"]):
        return model(xs, ys)

    opt = lt.optim.Adagrad(model.parameters(), lr=cfg.lr, eps=cfg.eps)
    step = lt.train_step(model, loss_fn, opt, clip_grad_norm=cfg.clip, name="lstm_step")
    return LanternTrainer(model, step, lambda batch: (batch.xs, batch.ys))


if __name__ == "__main__":
    main("lstm", build)
