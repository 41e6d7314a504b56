"""The paper's first model: a vanilla character-level RNN (min-char-rnn), as
in Wang et al. 2018, Section 6: hidden size 50, 20 time steps, batches of 20
sequences, Adagrad (lr 0.1), gradient-norm clipping at 5.

    lantern run examples/char_rnn.py --steps 2000 [--data text.txt]
    lantern compile examples/char_rnn.py -o out     # then: import char_rnn

h_t = tanh(i2h([x_t, h_{t-1}])), loss = sum_t cross_entropy(h2o(h_t), y_t).
The Python loop over the 20 time steps unrolls while staging, so the compiled
step is straight-line C++: forward, then backward in reverse (CPS), then the
update.  The vocabulary is the 26 lowercase letters: a text file given with
--data is lowercased and everything else in it dropped; without one, the text
is generated from a small word list (learnable: the loss falls well below
log(26) = 3.26 per character).
"""
import numpy as np

import lantern_stage as lt
from lantern_stage import nn

VOCAB, HIDDEN, SEQ, BATCH = 26, 50, 20, 20
LETTERS = "abcdefghijklmnopqrstuvwxyz"


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


lt.manual_seed(0)
model = CharRNN(VOCAB, HIDDEN)
optimizer = lt.optim.Adagrad(model.parameters(), lr=0.1, eps=1e-10)


def loss_fn(model, xs: lt.Tensor[SEQ, BATCH, VOCAB], ys: lt.Tensor[SEQ, BATCH, "int32"]):
    """Summed cross-entropy of the next character over SEQ steps of BATCH one-hot sequences."""
    return model(xs, ys)


train_step = lt.export(lt.train_step(model, loss_fn, optimizer, clip_grad_norm=5.0), name="train_step")


WORDS = ("the of and to in is was that for it with as his on be at by had are but from or have an they which "
         "one you were all we her she there would their will when who him been has more if no out so said what "
         "up its about into than them can only other new some could time these two may first then do any like "
         "my now over such our man me even most made after also did many before must through back years where "
         "much your way well down should because each just those people how too little state good very make "
         "world still own see men work long get here between both life being under never day same another know").split()


def generated_text(n_chars: int = 20000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words, size = [], 0
    while size < n_chars:
        w = WORDS[min(int(rng.zipf(1.3)) - 1, len(WORDS) - 1)]  # frequent words often, as in English
        words.append(w)
        size += len(w)
    return "".join(words)


def batches(data_path=None):
    """One pass over the text: (one-hot xs float32[SEQ, BATCH, 26], next-letter ys int32[SEQ, BATCH]).

    As in the paper's benchmark, iteration p reads sequence j of the batch
    from offset p + j*SEQ; p advances by SEQ until the batch would run off the end."""
    if data_path is None:
        text = generated_text()
    else:
        with open(data_path, encoding="utf-8", errors="replace") as f:
            text = "".join(c for c in f.read().lower() if c in LETTERS)
    ids = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int32) - ord("a")
    if len(ids) < SEQ * BATCH + 1:
        raise ValueError(f"{data_path}: {len(ids)} letters, need at least {SEQ * BATCH + 1}")
    eye = np.eye(VOCAB, dtype=np.float32)
    for p in range(0, len(ids) - SEQ * BATCH, SEQ):
        idx = p + np.arange(BATCH)[None, :] * SEQ + np.arange(SEQ)[:, None]  # [SEQ, BATCH]
        yield eye[ids[idx]], ids[idx + 1]
