"""A small MLP classifier of three interleaved 2-D spirals, exported for the
`lantern` command:

    lantern run examples/mlp.py --steps 300       train it, with a progress bar
    lantern compile examples/mlp.py -o out        an importable package out/mlp/

Two entry points: `train_step(x, y) -> loss` (forward, backward and the SGD
momentum update, one C++ function) and `predict(x) -> logits`.  Both use the
same parameters, so after `mlp.train_step(...)` calls, `mlp.predict` sees the
trained weights; `mlp.params["fc1.weight"]` reads or writes them.
"""
import numpy as np

import lantern_stage as lt
from lantern_stage import nn

BATCH, FEATURES, HIDDEN, CLASSES = 32, 2, 32, 3


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        h = lt.tanh(self.fc1(x))
        h = lt.relu(self.fc2(h))
        return self.out(h)


lt.manual_seed(0)
model = MLP()
optimizer = lt.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def loss_fn(model, x: lt.Tensor[BATCH, FEATURES], y: lt.Tensor[BATCH, "int32"]):
    """Mean cross-entropy of the batch."""
    return lt.cross_entropy(model(x), y)


train_step = lt.export(lt.train_step(model, loss_fn, optimizer), name="train_step")


@lt.export
def predict(x: lt.Tensor[BATCH, FEATURES]):
    """Class logits of a batch of points."""
    return model(x)


def spirals(n_per_class: int, seed: int = 0):
    """Three interleaved spirals, one per class: (points float32[N, 2], labels int32[N])."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(CLASSES):
        r = np.linspace(0.05, 1.0, n_per_class)
        theta = np.linspace(c * 4.0, (c + 1) * 4.0, n_per_class) + rng.normal(0, 0.2, n_per_class)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))
        ys.append(np.full(n_per_class, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32)


def batches(data_path=None):
    """One epoch of (x, y) batches, shuffled.  `data_path`: an .npz with arrays
    x float32[N, 2] and y int32[N] (labels 0..2); default: the spirals."""
    if data_path is None:
        x, y = spirals(320)
    else:
        with np.load(data_path) as f:
            x, y = f["x"].astype(np.float32), f["y"].astype(np.int32)
    order = np.random.default_rng(len(y)).permutation(len(y))
    for i in range(0, len(y) - BATCH + 1, BATCH):
        idx = order[i:i + BATCH]
        yield x[idx], y[idx]
