"""Entry points with every kind of input, compiled once by tests/test_fuzz.py
(`lantern compile`) and fed random arguments: float, int32 index and bool
tensors, a 0-d int and a 0-d float, an IntArray, captured arrays, a training step, and
arithmetic on NaN, infinities, denormals and integer divisors of 0."""
import numpy as np

import lantern_stage as lt
from lantern_stage import nn

TABLE = (np.arange(24, dtype=np.float32).reshape(6, 4) - 12) / 10  # captured: 6 rows


@lt.export
def mix(x: lt.Tensor[3, 4], idx: lt.Tensor[5, "int32"], k: lt.Int, labels: lt.Tensor[3, "int32"],
        mask: lt.Tensor[4, "bool"]):
    rows = lt.embedding(TABLE, idx)  # idx in [0, 6)
    r = lt.where(mask, x[k], 0.0)  # k in [-3, 3)
    nll = lt.cross_entropy(x, labels)  # labels in [0, 4)
    return rows * r + nll, lt.sum(x, axis=0)


@lt.export
def pick(a: lt.IntArray, i: lt.Int, v: lt.Tensor[2, 3]):
    return v * lt.cast(a[i], "float32")  # i in [-len(a), len(a)): checked in C++


@lt.export
def scale(s: lt.Float, x: lt.Tensor[3]):
    return x * s  # s: a 0-d float32, also passed as a Python or numpy scalar


@lt.export
def arith(x: lt.Tensor[4], y: lt.Tensor[4], a: lt.Tensor[4, "int32"], b: lt.Tensor[4, "int32"]):
    # NaN through relu/maximum/minimum, exp underflow, integer // and % by zero
    return lt.relu(x), lt.maximum(x, y), lt.minimum(x, y), lt.exp(x), a // b, a % b


lt.manual_seed(0)
model = nn.Linear(4, 3)
optimizer = lt.optim.SGD(model.parameters(), lr=0.1)


def loss_fn(model, x: lt.Tensor[2, 4], y: lt.Tensor[2, "int32"]):
    return lt.cross_entropy(model(x), y)


lt.export(lt.train_step(model, loss_fn, optimizer), name="train")
