"""Entry points for tests/test_hardening.py, compiled once into a package:
names that are not plain C identifiers (or clash with the runtime's own
symbols), a loop and a recursion that can run forever (for Ctrl-C), and a
training step (checkpoints)."""
import numpy as np

import lantern_stage as lt
from lantern_stage import nn


@lt.export(name="módulo")
def plain(x: lt.Tensor[3]):
    return x * 2.0


@lt.export
def configure(x: lt.Tensor[3], _ENTRIES: lt.Tensor[3]):  # lantern_configure is the runtime's
    return x + _ENTRIES


@lt.export
def walk(nxt: lt.IntArray, start: lt.Int):
    """Steps along a linked list until -1: forever on a cyclic one."""
    def body(c):
        i, n = c
        return nxt[i], n + 1

    return lt.while_loop(lambda c: c[0] >= 0, body, (start, lt.full((), 0, "int32")))[1]


@lt.recursive
def _fan(n):
    """2**n leaves, n levels deep: long-running without a deep stack."""
    return lt.cond(n <= 0, lambda: lt.full((), 1.0), lambda: _fan(n - 1) + _fan(n - 1))


@lt.export
def fan(n: lt.Int):
    return _fan(n)


@lt.export
def big(a: lt.Tensor[600, 600]):
    return lt.sum(lt.tanh(a @ a) @ a)  # straight-line code: no loop or call to poll at


lt.manual_seed(0)
model = nn.Linear(3, 2)
optimizer = lt.optim.Adam(model.parameters(), lr=0.01)


def loss_fn(model, x: lt.Tensor[4, 3], y: lt.Tensor[4, "int32"]):
    return lt.cross_entropy(model(x), y)


lt.export(lt.train_step(model, loss_fn, optimizer), name="train")
