"""Deferred weight gradients (passes/defer_outer.py): a weight used at every
inner node of a staged recursion gets its gradient as one product over the
logged rows, which also assigns the gradient instead of adding into a zero
fill (passes/first_write.py) - so a call in which the weight is never used
(a tree that is one leaf) must still give an exact zero gradient."""
# No `from __future__ import annotations`: the staged annotations use local sizes.

import numpy as np
import pytest

import lantern_stage as lt

H, NODES = 6, 9
rng = np.random.default_rng(11)
EMBED = rng.standard_normal((NODES, H)).astype(np.float32)


def root_sum(w, lch: lt.IntArray, rch: lt.IntArray):
    @lt.recursive
    def node(n):
        def leaf():
            return lt.embedding(EMBED, n)

        def inner():
            return lt.tanh(lt.linear(lt.concat([node(lch[n]), node(rch[n])]), w))

        return lt.cond(lch[n] < 0, leaf, inner)

    return lt.sum(node(0) * np.arange(1, H + 1, dtype=np.float32))


def reference(w, lch, rch):
    """(value, dW) in float64 by explicit backpropagation over the tree."""
    w = w.astype(np.float64)
    cache = {}

    def fwd(n):
        if lch[n] < 0:
            return EMBED[n].astype(np.float64)
        x = np.concatenate([fwd(lch[n]), fwd(rch[n])])
        h = np.tanh(w @ x)
        cache[n] = (x, h)
        return h

    dw = np.zeros_like(w)

    def bwd(n, dh):
        if lch[n] < 0:
            return
        x, h = cache[n]
        dz = dh * (1 - h * h)
        dw[...] += np.outer(dz, x)
        dx = w.T @ dz
        bwd(lch[n], dx[:H])
        bwd(rch[n], dx[H:])

    weights = np.arange(1, H + 1, dtype=np.float64)
    value = float(fwd(0) @ weights)
    bwd(0, weights)
    return value, dw


TREES = {
    # node 0 the root; -1 marks a leaf
    "balanced": ([1, 3, 5, -1, -1, -1, -1], [2, 4, 6, -1, -1, -1, -1]),
    "left spine": ([1, 2, 3, -1, -1, -1, -1], [6, 5, 4, -1, -1, -1, -1]),
    "one leaf": ([-1], [-1]),
}


@pytest.fixture(scope="module")
def step():
    return lt.compile(lt.value_and_grad(root_sum))


@pytest.mark.parametrize("name", list(TREES))
def test_recursive_weight_gradient_matches_float64(step, name):
    lch, rch = (np.array(a, np.int32) for a in TREES[name])
    w = (rng.standard_normal((H, 2 * H)) * 0.4).astype(np.float32)
    for _ in range(2):   # twice: the second call must not see the first one's rows
        value, dw = step(w, lch, rch)
        want_value, want_dw = reference(w, lch, rch)
        np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-5)
    if name == "one leaf":
        assert not np.any(dw), "an unused weight's gradient is exactly zero"


def test_the_recursion_logs_and_assigns_the_gradient(step):
    step(np.zeros((H, 2 * H), np.float32), *(np.array(a, np.int32) for a in TREES["balanced"]))
    source = step.cpp_source
    flushes = [line.strip() for line in source.splitlines() if ".flush(" in line]
    assert ".append(" in source and flushes and all(line.endswith(", false);") for line in flushes), flushes
