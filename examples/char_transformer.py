"""Train a small character-level transformer and let it write.

    python examples/char_transformer.py loss.png [--steps 600] [--data text.txt]

The model is written as in PyTorch: token embedding plus learned positions,
two pre-norm `nn.TransformerEncoderLayer`s (d_model 64, 4 heads,
feed-forward 256, GELU) with a causal mask, a final LayerNorm and a linear
head over the characters.  One compiled `lt.train_step` runs forward,
backward (by callbacks) and Adam (lr 3e-3) in C++ on batches of 16
sequences of 32 characters.  After training, a separately compiled
predictor - sharing the same weight arrays - gives the next character's
distribution after a 32-character context, and the script samples text
from it.  The loss curve goes to the PNG path given on the command line.

Text: --data, else ../shared/data/text/graham.txt beside the repository,
else a short built-in paragraph.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import lantern_stage as lt
from lantern_stage import nn

SEQ, BATCH, D_MODEL, HEADS, FF, LAYERS = 32, 16, 64, 4, 256, 2
GRAHAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "graham.txt"
FALLBACK = (
    "the staging compiler runs the model once in python and records what it does. "
    "reverse mode differentiation by callbacks turns every operation into its forward code, "
    "then the rest of the program, then its backward code. the generated c plus plus is compiled "
    "once and then trains with no python in the loop. "
) * 4


def load_text(path: str | None) -> tuple[str, str]:
    if path:
        return Path(path).read_text(), path
    if GRAHAM.is_file():
        return GRAHAM.read_text(), str(GRAHAM)
    return FALLBACK, "built-in paragraph"


class CharTransformer(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, D_MODEL)
        self.pos = nn.Parameter(0.02 * np.random.default_rng(0).standard_normal((SEQ, D_MODEL)))
        self.layers = nn.Sequential(*[
            nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(LAYERS)])
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, vocab)

    def logits(self, ids):
        """ids int32[B, SEQ] -> logits [B, SEQ, vocab]; position t sees positions <= t."""
        future = lt.triu(lt.ones(SEQ, SEQ), 1) > 0.5  # True above the diagonal: not attended to
        x = self.tok(ids) + self.pos
        for layer in self.layers:
            x = layer(x, src_mask=future)
        return self.head(self.norm(x))

    def forward(self, ids, ys):
        """Mean cross-entropy (nats per character) of predicting ys from ids, int32[B, SEQ]."""
        logits = self.logits(ids)
        return lt.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("png", help="where to write the loss curve (PNG)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--data", default=None, help="a text file to learn (default: graham.txt)")
    p.add_argument("--sample", type=int, default=300, help="characters to sample after training")
    p.add_argument("--temperature", type=float, default=0.7)
    args = p.parse_args(argv)

    from tqdm import tqdm

    text, source = load_text(args.data)
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], dtype=np.int32)
    V = len(chars)
    if len(data) < SEQ + 2:
        raise SystemExit(f"{source}: {len(data)} characters, need at least {SEQ + 2}")
    print(f"{len(text)} characters from {source}, vocabulary {V}")

    lt.manual_seed(0)
    model = CharTransformer(V)
    opt = lt.optim.Adam(model.parameters(), lr=3e-3)

    def loss_fn(model, ids: lt.Tensor[BATCH, SEQ, "int32"], ys: lt.Tensor[BATCH, SEQ, "int32"]):
        return model(ids, ys)

    step = lt.train_step(model, loss_fn, opt)

    @lt.compile
    def predict(ids: lt.Tensor[1, SEQ, "int32"]):
        return lt.softmax(model.logits(ids)[0, SEQ - 1], axis=-1)  # the next character after the context

    rng = np.random.default_rng(0)

    def sample(n: int) -> str:
        start = int(rng.integers(0, len(data) - SEQ))
        context = list(data[start:start + SEQ])
        out = []
        for _ in range(n):
            probs = predict(np.array([context[-SEQ:]], np.int32)).astype(np.float64)
            logp = np.log(probs + 1e-12) / args.temperature
            p_ = np.exp(logp - logp.max())
            x = int(rng.choice(V, p=p_ / p_.sum()))
            context.append(x)
            out.append(chars[x])
        return "".join(chars[c] for c in data[start:start + SEQ]) + " | " + "".join(out)

    t0 = time.perf_counter()
    step.entry, predict.entry  # noqa: B018 - stage, generate C++, build (or find in the cache)
    print(f"compiled the training step and the predictor in {time.perf_counter() - t0:.1f} s")

    losses = []
    bar = tqdm(range(args.steps), desc="char transformer", unit="step")
    t0 = time.perf_counter()
    for _ in bar:
        starts = rng.integers(0, len(data) - SEQ - 1, size=BATCH)
        idx = starts[:, None] + np.arange(SEQ)[None, :]
        losses.append(step(np.ascontiguousarray(data[idx]), np.ascontiguousarray(data[idx + 1])))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    elapsed = time.perf_counter() - t0
    print(f"{args.steps} steps in {elapsed:.1f} s ({elapsed / max(args.steps, 1) * 1e3:.2f} ms/step); "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f} nats/char")

    print("after training (context | sampled):")
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
    ax.set_title(f"char transformer in lantern_stage ({source.split('/')[-1]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"loss curve written to {args.png}")
    return losses


if __name__ == "__main__":
    main()
