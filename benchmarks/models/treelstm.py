"""Binary TreeLSTM over one SST tree in lantern_stage (the paper's fourth benchmark).

A staged recursive function walks the tree (`@lt.recursive` + `lt.cond` on
the IntArray of left children): under `value_and_grad` each call's
continuation is reified, so backpropagation runs on the C++ call stack, one
frame per node (the paper's Figure 4).  Leaves read a fixed embedding row;
every node predicts its sentiment and the tree's loss is the sum of the
nodes' cross-entropies.  Adagrad lr 0.05, eps 1e-10, no clipping.
"""
import numpy as np

import lantern_stage as lt
from lantern_stage import nn

from benchmarks.models import LanternTrainer, main


class TreeLSTM(nn.Module):
    def __init__(self, embedding: np.ndarray, hidden: int, classes: int):
        super().__init__()
        H, E, C = hidden, embedding.shape[1], classes
        self.hidden = H
        self.W_leaf = nn.Parameter(np.zeros((3 * H, E), np.float32))
        self.b_leaf = nn.Parameter(np.zeros(3 * H, np.float32))
        self.U = nn.Parameter(np.zeros((5 * H, 2 * H), np.float32))
        self.b_inner = nn.Parameter(np.zeros(5 * H, np.float32))
        self.W_out = nn.Parameter(np.zeros((C, H), np.float32))
        self.b_out = nn.Parameter(np.zeros(C, np.float32))
        self.register_buffer("embedding", np.asarray(embedding, np.float32), persistent=False)

    def leaf(self, word, label):
        i, o, u = lt.split(lt.linear(lt.embedding(self.embedding, word), self.W_leaf, self.b_leaf), self.hidden)
        c = lt.sigmoid(i) * lt.tanh(u)
        h = lt.sigmoid(o) * lt.tanh(c)
        return h, c, lt.cross_entropy(lt.linear(h, self.W_out, self.b_out), label)

    def inner(self, hl, cl, hr, cr, label):
        z = lt.linear(lt.concat([hl, hr]), self.U, self.b_inner)
        i, fl, fr, o, u = lt.split(z, self.hidden)
        c = lt.sigmoid(i) * lt.tanh(u) + lt.sigmoid(fl) * cl + lt.sigmoid(fr) * cr
        h = lt.sigmoid(o) * lt.tanh(c)
        return h, c, lt.cross_entropy(lt.linear(h, self.W_out, self.b_out), label)

    def forward(self, labels, words, lch, rch):
        """The summed loss of the tree given as int32 arrays (node 0 the root)."""

        @lt.recursive
        def node(n):
            def leaf():
                return self.leaf(words[n], labels[n])

            def inner():
                hl, cl, loss_l = node(lch[n])
                hr, cr, loss_r = node(rch[n])
                h, c, loss = self.inner(hl, cl, hr, cr, labels[n])
                return h, c, loss_l + loss_r + loss

            return lt.cond(lch[n] < 0, leaf, inner)

        return node(0)[2]


def tree_step(weights, cfg, **options):
    """The model loaded with `weights` and its Adagrad train step over one
    tree; `options` go to `lt.train_step` (name, accumulate)."""
    model = TreeLSTM(cfg.embedding, cfg.hidden, cfg.classes)
    model.load_state_dict(weights)

    def loss_fn(model, labels: lt.IntArray, words: lt.IntArray, lch: lt.IntArray, rch: lt.IntArray):
        return model(labels, words, lch, rch)

    opt = lt.optim.Adagrad(model.parameters(), lr=cfg.lr, eps=cfg.eps)
    return model, lt.train_step(model, loss_fn, opt, clip_grad_norm=cfg.clip, **options)


def build(weights, cfg) -> LanternTrainer:
    model, step = tree_step(weights, cfg, name="treelstm_step")
    return LanternTrainer(model, step, lambda tree: (tree.labels, tree.words, tree.lch, tree.rch))


if __name__ == "__main__":
    main("treelstm", build)
