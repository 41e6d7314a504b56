"""Elementwise fusion of maps that are not adjacent (passes/fusion.py): a map
joins an earlier one of its shape past maps of other shapes with which it
shares no written buffer - and not past one that reads what it writes."""
# No `from __future__ import annotations`: the staged annotations use local sizes.
import re

import numpy as np

import lantern_stage as lt
from lantern_stage.ops.registry import as_rep

N, M = 40, 7
# rtol 1e-6: exp_f and tanh_f are within 8.3e-8 and 2.8e-7 relative of
# float64 (cpp_runtime/math.h), and each result takes at most 3 more float32
# roundings (6e-8 each); the momentum update's results are at least half
# of the weights' size, so its 3 roundings stay under 4e-7 of them.
RTOL = 1e-6


def loops_over(src: str, n: int) -> int:
    return len(re.findall(rf"for \(long i0 = 0; i0 < {n}; \+\+i0\)", src))


def test_a_map_joins_an_earlier_one_past_an_independent_map_of_another_shape():
    def f(a: lt.Tensor[N], b: lt.Tensor[M]):
        s = lt.exp(a)          # over N
        t = lt.tanh(b) * 3.0   # over M, touches nothing of s
        return s * a + 1.0, t  # over N again: joins s's loop, s's buffer goes

    fn = lt.compile(f)
    assert loops_over(fn.cpp_source, N) == 1
    a = np.linspace(-1, 1, N, dtype=np.float32)
    b = np.linspace(-2, 2, M, dtype=np.float32)
    got_s, got_t = fn(a, b)
    np.testing.assert_allclose(got_s, np.exp(a.astype(np.float64)) * a + 1, rtol=RTOL)
    np.testing.assert_allclose(got_t, np.tanh(b.astype(np.float64)) * 3, rtol=RTOL)


def test_a_map_does_not_move_past_a_map_that_reads_what_it_writes():
    def f(a: lt.Tensor[N], b: lt.Tensor[M]):
        s = lt.exp(a)           # over N, writes s
        t = s[:M] * b           # over M, reads s: s's map cannot move below it
        return s * a + 1.0, t

    fn = lt.compile(f)
    assert loops_over(fn.cpp_source, N) == 2
    a = np.linspace(-1, 1, N, dtype=np.float32)
    b = np.linspace(-2, 2, M, dtype=np.float32)
    got_s, got_t = fn(a, b)
    s = np.exp(a.astype(np.float64))
    np.testing.assert_allclose(got_s, s * a + 1, rtol=RTOL)
    np.testing.assert_allclose(got_t, s[:M] * b, rtol=RTOL)


def test_an_optimiser_update_is_one_loop_per_parameter():
    """SGD with momentum on two parameters of different sizes, staged as the
    level-batched TreeLSTM's update is: every gradient scaled first, then each
    parameter's velocity and update, then the gradient buffers' reset.  Each
    parameter's maps share one loop, and the weights follow the float64 update."""
    w1, w2 = np.linspace(-1, 1, N, dtype=np.float32), np.linspace(0.5, 2, M, dtype=np.float32)
    g1, g2 = np.full(N, 0.25, np.float32), np.full(M, -0.5, np.float32)
    v1, v2 = np.zeros(N, np.float32), np.zeros(M, np.float32)

    def step():
        scaled = [as_rep(g) * 0.5 for g in (g1, g2)]
        for w, v, s in ((w1, v1, scaled[0]), (w2, v2, scaled[1])):
            velocity = as_rep(v) * 0.9 + s
            lt.assign(v, velocity)
            lt.assign(w, as_rep(w) - velocity * 0.1)
        for g in (g1, g2):
            lt.assign(g, 0.0)
        return lt.sum(as_rep(w1)) + lt.sum(as_rep(w2))

    fn = lt.compile(step)
    assert loops_over(fn.cpp_source, N) == 1 and loops_over(fn.cpp_source, M) == 1
    want1, want2 = w1.astype(np.float64) - 0.1 * 0.125, w2.astype(np.float64) + 0.1 * 0.25
    fn()
    np.testing.assert_allclose(w1, want1, rtol=RTOL)
    np.testing.assert_allclose(w2, want2, rtol=RTOL)
    assert not g1.any() and not g2.any()
