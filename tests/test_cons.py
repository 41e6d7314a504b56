"""Hash-consing of pure staged ops (staging.py, ops/registry.py): the same op
on the same operand values is staged once - and nothing that only looks the
same is merged: random draws, reads on either side of an in-place write,
values inside loop bodies that rerun, a cond branch's values outside it,
constants that compare equal but compute differently."""
# No `from __future__ import annotations`: the staged annotations are evaluated.
from functools import cache

import numpy as np

import lantern_stage as lt

X = np.array([0.3, -1.2, 0.8], np.float32)


@cache
def program():
    written = np.array([0.5, -1.0, 2.0], np.float32)  # assigned in straight-line code
    looped = np.array([0.1, 0.2, 0.3], np.float32)    # assigned by a loop body

    def f(x: lt.Tensor[3]):
        a, b = lt.tanh(x * 2.0), lt.tanh(x * 2.0)           # one value
        d1, d2 = lt.dropout(x, 0.5), lt.dropout(x, 0.5)     # two draws
        before = lt.exp(written)
        lt.assign(written, lt.add(written, 1.0))
        after = lt.exp(written)                  # the new value

        def body(i, c):
            e = lt.exp(looped)                   # this iteration's value
            lt.assign(looped, lt.add(looped, 1.0))
            return c + e

        e0 = lt.exp(looped)
        summed = lt.fori_loop(0, 3, body, lt.zeros(3))
        branch = lt.cond(lt.sum(x) > 0.0, lambda: lt.sin(x) * 2.0, lambda: lt.cos(x) * 2.0)
        outside = lt.sin(x) * 2.0                           # not the branch's value
        zero, negative_zero = lt.full((3,), 0.0), lt.full((3,), -0.0)
        return a, b, d1, d2, before, after, e0, summed, branch, outside, 1.0 / zero, 1.0 / negative_zero

    return lt.compile(f), written, looped


def test_consing_merges_pure_ops_and_nothing_else():
    f, written, looped = program()
    written0, looped0 = written.copy(), looped.copy()
    lt.manual_seed(7)
    a, b, d1, d2, before, after, e0, summed, branch, outside, inf, neg_inf = f(X)
    assert f.ir.count("lt::tanh_f(") == 1  # x * 2.0 and its tanh are staged once
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(d1, d2)  # p = 0.5 on 3 elements: equal with probability 1/64 - seed 7 differs
    np.testing.assert_allclose(before, np.exp(written0), rtol=1e-6)
    np.testing.assert_allclose(after, np.exp(written0 + 1.0), rtol=1e-6)
    np.testing.assert_allclose(e0, np.exp(looped0), rtol=1e-6)
    np.testing.assert_allclose(summed, sum(np.exp(looped0 + k) for k in range(3)), rtol=1e-6)
    np.testing.assert_allclose(branch, 2.0 * np.cos(X), rtol=1e-6)  # sum(X) < 0
    np.testing.assert_allclose(outside, 2.0 * np.sin(X), rtol=1e-6)
    assert (inf == np.inf).all() and (neg_inf == -np.inf).all()


@cache
def grad_program():
    def loss(x):
        t = lt.tanh(x)
        u = lt.tanh(x)  # the same value: one gradient buffer with two uses
        inner = lt.cond(lt.sum(x) > 0.0, lambda: lt.tanh(x) * 3.0, lambda: lt.tanh(x) * lt.tanh(x))
        return lt.sum(t * u) + lt.sum(inner)

    def f(x: lt.Tensor[3]):
        return lt.value_and_grad(loss)(x)

    return lt.compile(f)


def test_gradients_through_consed_values_and_branches():
    for x in (X, -X):
        value, g = grad_program()(x)
        t = np.tanh(x.astype(np.float64))
        dt = 1.0 - t * t
        if x.sum() > 0:
            ref_value, ref_g = np.sum(t * t) + np.sum(3.0 * t), 2.0 * t * dt + 3.0 * dt
        else:
            ref_value, ref_g = 2.0 * np.sum(t * t), 4.0 * t * dt
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        np.testing.assert_allclose(g, ref_g, rtol=1e-5, atol=1e-6)


def test_a_consed_value_with_two_uses_sums_its_gradient_in_registers():
    """tanh(x) used twice is one value whose gradient buffer gets two
    contributions; fusion sums them in the backward loop's registers
    (passes/fusion.py), so no gradient buffer of tanh is left in memory."""
    w1 = np.linspace(-1.0, 1.0, 64).astype(np.float32)
    w2 = np.cos(np.arange(64)).astype(np.float32)

    @lt.compile
    def f(x: lt.Tensor[64]):
        return lt.value_and_grad(lambda x: lt.sum(lt.tanh(x) * w1) + lt.sum(lt.tanh(x) * w2))(x)

    x = np.linspace(-2.0, 2.0, 64).astype(np.float32)
    value, g = f(x)
    src = f.cpp_source
    assert src.count("lt::tanh_f(") == 1 and "d_tanh" not in src
    t = np.tanh(x.astype(np.float64))
    np.testing.assert_allclose(value, np.sum(t * w1) + np.sum(t * w2), rtol=1e-5)
    np.testing.assert_allclose(g, (w1 + w2) * (1.0 - t * t), rtol=1e-5, atol=1e-6)
