"""Train a character-level LSTM and let it write.

    python examples/char_lstm.py loss.png [--steps 1500] [--data text.txt]

The model (embedding -> LSTMCell -> linear) is an `lt.nn.Module`; one
compiled `lt.train_step` runs forward, backward (by callbacks), gradient
clipping and Adam in C++.  The time loop is a staged `lt.fori_loop`, so the
C++ is one loop body however long the sequences are.  After training, a
separately compiled inference function - sharing the same weight arrays,
with no copy - predicts one character at a time and the script samples text
from it.  The loss curve goes to the PNG path given on the command line.

Text: --data, else the sentences of the SST dev set beside the repository
(../shared/data/sst/dev.txt), else a short built-in paragraph.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

import lantern_stage as lt
from lantern_stage import nn

SEQ, BATCH, EMBED, HIDDEN = 32, 32, 32, 128
SST = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst" / "dev.txt"
FALLBACK = (
    "the staging compiler runs the model once in python and records what it does. "
    "reverse mode differentiation by callbacks turns every operation into its forward code, "
    "then the rest of the program, then its backward code. the generated c plus plus is compiled "
    "once and then trains with no python in the loop. "
) * 20


def load_text(path: str | None) -> tuple[str, str]:
    if path:
        return Path(path).read_text(), path
    if SST.is_file():  # "(3 (2 It) (4 (2 's) ...)))" -> "it 's ..."
        lines = [" ".join(re.findall(r"\(\d ([^()\s]+)\)", ln)).lower() for ln in SST.read_text().splitlines()]
        return "\n".join(lines), str(SST)
    return FALLBACK, "built-in paragraph"


class CharLSTM(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBED)
        self.cell = nn.LSTMCell(EMBED, HIDDEN)
        self.out = nn.Linear(HIDDEN, vocab)

    def step(self, ids, state):
        """One character per sequence: ids int32[B] -> (logits [B, V], (h, c))."""
        h, c = self.cell(self.embed(ids), state)
        return self.out(h), (h, c)

    def forward(self, xs, ys):
        """Mean cross-entropy (nats per character) of predicting ys from xs, int32[SEQ, B]."""
        seq, batch = xs.shape
        zeros = lt.zeros(batch, HIDDEN)

        def body(t, carry):
            h, c, total = carry
            logits, (h, c) = self.step(xs[t], (h, c))
            return h, c, total + lt.cross_entropy(logits, ys[t], reduction="sum")

        _, _, total = lt.fori_loop(0, seq, body, (zeros, zeros, lt.zeros(())))
        return total / float(seq * batch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("png", help="where to write the loss curve (PNG)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--data", default=None, help="a text file to learn (default: SST sentences)")
    p.add_argument("--sample", type=int, default=400, help="characters to sample after training")
    p.add_argument("--temperature", type=float, default=0.7)
    args = p.parse_args(argv)

    text, source = load_text(args.data)
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int32)
    V = len(chars)
    print(f"{len(text)} characters from {source}, vocabulary {V}")

    lt.manual_seed(0)
    model = CharLSTM(V)
    opt = lt.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn(model, xs: lt.Tensor[SEQ, BATCH, "int32"], ys: lt.Tensor[SEQ, BATCH, "int32"]):
        return model(xs, ys)

    step = lt.train_step(model, loss_fn, opt, clip_grad_norm=5.0)

    @lt.compile
    def predict(x: lt.Tensor[1, "int32"], h: lt.Tensor[1, HIDDEN], c: lt.Tensor[1, HIDDEN]):
        logits, (h, c) = model.step(x, (h, c))
        return lt.softmax(logits, axis=-1), h, c

    rng = np.random.default_rng(0)

    def sample(n: int, prime: str = "the ") -> str:
        h = np.zeros((1, HIDDEN), np.float32)
        c = np.zeros((1, HIDDEN), np.float32)
        out = list(prime)
        for ch in prime[:-1]:
            _, h, c = predict(np.array([index.get(ch, 0)], np.int32), h, c)
        x = index.get(prime[-1], 0)
        for _ in range(n):
            probs, h, c = predict(np.array([x], np.int32), h, c)
            logp = np.log(probs[0].astype(np.float64) + 1e-12) / args.temperature
            p_ = np.exp(logp - logp.max())
            x = int(rng.choice(V, p=p_ / p_.sum()))
            out.append(chars[x])
        return "".join(out)

    t0 = time.perf_counter()
    step.entry, predict.entry  # noqa: B018 - stage, generate C++, build (or find in the cache)
    print(f"compiled the training step and the predictor in {time.perf_counter() - t0:.1f} s")
    print("before training:", repr(sample(80)))

    span = SEQ * BATCH + 1
    losses = []
    t0 = time.perf_counter()
    for it in range(args.steps):
        starts = rng.integers(0, len(data) - span, size=BATCH)
        idx = starts[None, :] + np.arange(SEQ)[:, None]
        losses.append(step(np.ascontiguousarray(data[idx]), np.ascontiguousarray(data[idx + 1])))
        if it % max(args.steps // 10, 1) == 0 or it == args.steps - 1:
            print(f"step {it:5d}  loss {losses[-1]:.3f} nats/char")
    elapsed = time.perf_counter() - t0
    print(f"{args.steps} steps in {elapsed:.1f} s ({elapsed / max(args.steps, 1) * 1e3:.2f} ms/step)")

    print("after training:")
    print(sample(args.sample))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses, lw=0.6, alpha=0.4, label="per step")
    k = max(len(losses) // 50, 1)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(len(smooth)) + k - 1, smooth, lw=2, label=f"mean of {k}")
    ax.axhline(np.log(V), color="gray", ls="--", lw=1, label=f"uniform guess, log {V}")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats / character)")
    ax.set_title(f"char-LSTM in lantern_stage ({source.split('/')[-1]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"loss curve written to {args.png}")
    return losses


if __name__ == "__main__":
    main()
