"""Train a small MLP on generated data (three interleaved spirals) with a
compiled training step: forward, backward (CPS, at staging time) and the loss
run as one C++ function; the Python loop only feeds batches and updates the
weights in numpy.

    python examples/train_mlp.py [--epochs 40] [--hidden 64]
"""
import argparse
import time

import numpy as np
from tqdm import tqdm

import lantern_stage as lt

CLASSES, FEATURES = 3, 2


def spirals(n_per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Three interleaved 2-D spirals, one per class (the classic toy problem)."""
    xs, ys = [], []
    for c in range(CLASSES):
        r = np.linspace(0.05, 1.0, n_per_class)
        theta = np.linspace(c * 4.0, (c + 1) * 4.0, n_per_class) + rng.normal(0, 0.2, n_per_class)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(n_per_class, c))
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int32)
    order = rng.permutation(len(y))
    return x[order], y[order]


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x, y = spirals(300, rng)
    B, H = args.batch, args.hidden
    steps_per_epoch = len(y) // B

    @lt.compile
    def train_step(xb: lt.Tensor[B, FEATURES], yb: lt.Tensor[B, "int32"],
                   w1: lt.Tensor[FEATURES, H], b1: lt.Tensor[H], w2: lt.Tensor[H, H], b2: lt.Tensor[H],
                   w3: lt.Tensor[H, CLASSES], b3: lt.Tensor[CLASSES]):
        def loss(p):
            h = lt.tanh(xb @ p["w1"] + p["b1"])
            h = lt.relu(h @ p["w2"] + p["b2"])
            return lt.cross_entropy(h @ p["w3"] + p["b3"], yb)

        return lt.value_and_grad(loss)(dict(w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3))

    N = len(y)

    @lt.compile
    def logits_of(xs: lt.Tensor[N, FEATURES], w1: lt.Tensor[FEATURES, H], b1: lt.Tensor[H],
                  w2: lt.Tensor[H, H], b2: lt.Tensor[H], w3: lt.Tensor[H, CLASSES], b3: lt.Tensor[CLASSES]):
        h = lt.relu(lt.tanh(xs @ w1 + b1) @ w2 + b2)
        return h @ w3 + b3

    def init(fan_in, fan_out):
        return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    params = dict(w1=init(FEATURES, H), b1=np.zeros(H, np.float32), w2=init(H, H), b2=np.zeros(H, np.float32),
                  w3=init(H, CLASSES), b3=np.zeros(CLASSES, np.float32))
    velocity = {k: np.zeros_like(v) for k, v in params.items()}

    start = time.perf_counter()
    train_step(x[:B], y[:B], **params)  # stage, generate C++, compile (or load from the cache)
    print(f"compiled train_step in {time.perf_counter() - start:.2f} s (cache: LANTERN_CACHE_DIR)")

    bar = tqdm(range(args.epochs * steps_per_epoch), desc="training", unit="step")
    running = None
    for step in bar:
        i = step % steps_per_epoch
        if i == 0:
            order = rng.permutation(N)
            x, y = x[order], y[order]
        loss, grads = train_step(x[i * B:(i + 1) * B], y[i * B:(i + 1) * B], **params)
        for k in params:  # SGD with momentum, in numpy
            velocity[k] = 0.9 * velocity[k] + grads[k]
            params[k] -= args.lr * 0.1 * velocity[k]
        running = float(loss) if running is None else 0.95 * running + 0.05 * float(loss)
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)

    logits = logits_of(x, **params)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    z = logits - logits.max(axis=1, keepdims=True)
    full_loss = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(N), y]))
    print(f"final loss {full_loss:.4f}, training accuracy {accuracy:.1%} on {N} points")
    return full_loss


if __name__ == "__main__":
    main()
