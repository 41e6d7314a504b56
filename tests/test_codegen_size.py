"""Generated code must not grow per step of a present-stage (unrolled) loop
beyond one line per statement: identical step bodies share loop functions,
and a long straight-line body is still correct when compiled unoptimised."""
# No `from __future__ import annotations`: the staged annotations use local sizes.

import re

import numpy as np
import pytest
import torch

import lantern_stage as lt
from lantern_stage import program as lt_program
from lantern_stage.types import views_cover_once, views_disjoint

H, B = 8, 4


def unrolled_rnn(steps: int):
    """value_and_grad of an RNN unrolled `steps` times, as an lt.compile'd function."""

    def loss(w, u, xs):
        h = lt.zeros(B, H)
        total = 0.0
        for t in range(steps):
            h = lt.tanh(h @ w + xs[t] @ u)
            total = total + lt.sum(lt.sigmoid(h) * h)
        return total

    def step(w: lt.Tensor[H, H], u: lt.Tensor[H, H], xs: lt.Tensor[steps, B, H]):
        return lt.value_and_grad(loss, argnums=(0, 1))(w, u, xs)

    step.__name__ = f"rnn{steps}"
    return lt.compile(step)


def torch_reference(w, u, xs):
    w, u = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (w, u))
    h = torch.zeros(B, H, dtype=torch.float64)
    total = 0.0
    for x in torch.tensor(xs, dtype=torch.float64):
        h = torch.tanh(h @ w + x @ u)
        total = total + (torch.sigmoid(h) * h).sum()
    total.backward()
    return float(total.detach()), w.grad.numpy(), u.grad.numpy()


def loop_functions(src: str) -> int:
    return len(re.findall(r"static __attribute__\(\(noinline\)\) void lt_loop\d+", src))


def test_loop_functions_do_not_grow_with_the_trip_count():
    short, long = unrolled_rnn(3).cpp_source, unrolled_rnn(12).cpp_source
    assert loop_functions(short) == loop_functions(long) > 0
    # what grows is the body, by a bounded number of lines per step
    per_step = (long.count("\n") - short.count("\n")) / 9
    assert per_step < 60, per_step


def test_a_long_unrolled_body_compiles_unoptimised_and_matches_torch():
    steps = 60
    f = unrolled_rnn(steps)
    src = f.cpp_source
    body_lines = src.split(f"static void rnn{steps}_body")[1].count("\n")
    assert body_lines > lt_program.UNOPTIMISED_BODY_LINES
    assert '__attribute__((optimize("O0")))' in src
    assert '__attribute__((optimize("O0")))' not in unrolled_rnn(3).cpp_source
    rng = np.random.default_rng(0)
    w, u = (0.3 * rng.standard_normal((H, H))).astype(np.float32), (0.3 * rng.standard_normal((H, H))).astype(np.float32)
    xs = rng.standard_normal((steps, B, H)).astype(np.float32)
    value, (gw, gu) = f(w, u, xs)
    ref_value, ref_gw, ref_gu = torch_reference(w, u, xs)
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-4)
    scale = max(np.abs(ref_gw).max(), np.abs(ref_gu).max())
    np.testing.assert_allclose(gw, ref_gw, atol=1e-4 * scale)
    np.testing.assert_allclose(gu, ref_gu, atol=1e-4 * scale)


def test_gradient_buffers_written_whole_first_are_not_zero_filled():
    """A gradient's first write through a reshape view (a gemm), by a
    transposed copy, or by a batched gemm covering it assigns: no zero fill
    (passes/first_write.py); only the argument's gradient, which the
    function returns, and the scalar loss seed are zeroed."""
    def loss(w, x, c):
        t = lt.transpose(lt.reshape(lt.tanh(x @ w), (2, 2, 6)), (1, 0, 2))
        return lt.sum(lt.softmax(lt.einsum("bij,bkj->bik", t, t), axis=-1) * c)

    f = lt.compile(lambda w, x, c: lt.grad(loss)(w, x, c))
    rng = np.random.default_rng(3)
    w, x, c = (rng.standard_normal(s).astype(np.float32) for s in [(3, 6), (4, 3), (2, 2, 2)])
    grad = f(w, x, c)
    zeroed = re.findall(r"float\* (\w+) = arena\.alloc_zeroed<float>\((\d+)\)", f.cpp_source)
    assert [n for name, n in zeroed if not name.startswith("d_in_") and n != "1"] == [], zeroed

    tw, tx, tc = (torch.tensor(a, dtype=torch.float64) for a in (w, x, c))
    tw.requires_grad_(True)
    t = torch.tanh(tx @ tw).reshape(2, 2, 6).permute(1, 0, 2)
    (torch.softmax(t @ t.transpose(1, 2), -1) * tc).sum().backward()
    np.testing.assert_allclose(grad, tw.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_split_gradients_are_written_into_their_blocks_without_zero_fill():
    """The backward of `split` adds each gate's gradient into its own column
    block of the gates' gradient: the elementwise loops fuse across those
    disjoint blocks (passes/fusion.py), which together cover the buffer, so
    it is assigned and not zero-filled (the second `assign first writes`)."""
    def loss(w, x, c):
        gates = x @ w
        i, f, g, o = lt.split(gates, 5, axis=-1)
        c2 = lt.sigmoid(f) * c + lt.sigmoid(i) * lt.tanh(g)
        return lt.sum(lt.sigmoid(o) * lt.tanh(c2))

    f = lt.compile(lambda w, x, c: lt.grad(loss)(w, x, c))
    rng = np.random.default_rng(5)
    w, x, c = (rng.standard_normal(s).astype(np.float32) for s in [(3, 20), (4, 3), (4, 5)])
    grad = f(w, x, c)
    zeroed = re.findall(r"float\* (\w+) = arena\.alloc_zeroed<float>\((\d+)\)", f.cpp_source)
    assert [n for name, n in zeroed if not name.startswith("d_in_") and n != "1"] == [], zeroed

    tw, tx, tc = (torch.tensor(a, dtype=torch.float64) for a in (w, x, c))
    tw.requires_grad_(True)
    ti, tf, tg, to = torch.split(tx @ tw, 5, dim=-1)
    tc2 = torch.sigmoid(tf) * tc + torch.sigmoid(ti) * torch.tanh(tg)
    (torch.sigmoid(to) * torch.tanh(tc2)).sum().backward()
    np.testing.assert_allclose(grad, tw.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, a, b, disjoint", [
    ((4, 5), (0, (20, 1)), (5, (20, 1)), True),      # two gate column blocks of rows of 20
    ((4, 5), (0, (20, 1)), (3, (20, 1)), False),     # overlapping column ranges
    ((4, 5), (0, (20, 1)), (20, (20, 1)), False),    # one row down: rows 1-3 shared
    ((4, 5), (0, (5, 1)), (20, (5, 1)), True),       # consecutive packed blocks
    ((3, 4), (0, (1, 3)), (1, (4, 1)), False),       # a transposed view over the same 12
    ((6,), (0, (2,)), (1, (2,)), True),              # even and odd elements
])
def test_views_disjoint(shape, a, b, disjoint):
    assert views_disjoint(shape, a, b) is disjoint
    assert views_disjoint(shape, b, a) is disjoint


@pytest.mark.parametrize("views, size, covered", [
    ([(0, (20, 1)), (5, (20, 1)), (10, (20, 1)), (15, (20, 1))], 80, True),
    ([(0, (20, 1)), (5, (20, 1)), (10, (20, 1))], 80, False),                  # a block missing
    ([(0, (20, 1)), (5, (20, 1)), (5, (20, 1)), (15, (20, 1))], 80, False),    # a block twice
    ([(0, (2,)), (1, (2,))], 12, True),
])
def test_views_cover_once(views, size, covered):
    shape = (4, 5) if len(views[0][1]) == 2 else (6,)
    assert views_cover_once(shape, views, size) is covered


def _blocked_loops(src: str) -> int:
    """Loops run as overlapped vector blocks (codegen/cpp.py, `TAIL_BLOCK`)."""
    return len(re.findall(r"for \(long i\d+b = 0;", src))


# Relative errors of cpp_runtime/math.h's functions against float64 (its header).
TANH_ERR, SIGMOID_ERR = 2.8e-7, 1.5e-7
U = 2.0 ** -24   # float32 unit round-off


@pytest.mark.parametrize("case", ["flat 300", "gate columns of rows of 64", "gradient sums"])
def test_loops_with_a_remainder_run_in_overlapped_blocks_with_the_same_result(case):
    """A loop whose trip count is not a multiple of 8 runs its last block of 8
    moved back over elements already done, where that is harmless (plain
    stores, nothing written is read): each element's value is what running
    it once gives, within the float32 error of its expression."""
    rng = np.random.default_rng(11)
    if case == "flat 300":
        x, y = (rng.standard_normal((6, 50)).astype(np.float32) for _ in range(2))
        f = lt.compile(lambda x: (lt.tanh(x[0]) * x[1] + x[0], lt.sigmoid(x[1])))
        got = f(np.stack([x, y]))
        x, y = x.astype(np.float64), y.astype(np.float64)
        ty, s = np.tanh(x) * y, 1 / (1 + np.exp(-y))
        want = (ty + x, s)
        bounds = ((TANH_ERR + U) * np.abs(ty) + U * np.abs(ty + x), (SIGMOID_ERR + U) * s)
        blocked = True
    elif case == "gate columns of rows of 64":
        g = rng.standard_normal((4, 64)).astype(np.float32)
        f = lt.compile(lambda g: lt.sigmoid(g[:, 3:53]) * lt.tanh(g[:, 7:57]))
        got = (f(g),)
        g64 = g.astype(np.float64)
        prod_ = 1 / (1 + np.exp(-g64[:, 3:53])) * np.tanh(g64[:, 7:57])
        want, bounds = (prod_,), ((SIGMOID_ERR + TANH_ERR + U) * np.abs(prod_),)
        blocked = True
    else:
        x = rng.standard_normal((5, 13)).astype(np.float32)
        f = lt.compile(lambda x: lt.grad(lambda x: lt.sum(x * x) + lt.sum(lt.tanh(x)))(x))
        got = (f(x),)
        x = x.astype(np.float64)
        t2 = np.tanh(x) ** 2
        want = (2 * x + 1 - t2,)
        bounds = ((2 * TANH_ERR + U) * t2 + 3 * U * (2 * np.abs(x) + 1 + t2),)
        blocked = None  # whichever loops qualify: the values must be right
    for a, b, bound in zip(got, want, bounds):
        # twice the first-order bound: its terms are rounded to first order
        assert (np.abs(a - b) <= 2 * bound).all(), np.max(np.abs(a - b) / bound)
    if blocked:
        assert _blocked_loops(f.cpp_source) >= 1, f.cpp_source


def test_loops_that_read_what_they_write_or_add_into_memory_are_not_rerunnable():
    """`a = a * 2 + 1` in place, or `b += a`: running part of either twice
    would apply it twice, so neither gets the overlapped tail; `b = a * 2` may."""
    from lantern_stage import ir
    from lantern_stage.codegen import cpp
    from lantern_stage.types import TensorType

    a = ir.Var("a", TensorType((50,), "float32"))
    view = ir.View(a, 0, (1,))
    stores = [ir.Assign(view, False, ("fmt", "({0} * 2.0f + 1.0f)", [("load", view)]))]
    assert not cpp._rerunnable(ir.Map((50,), stores), {})
    plain = ir.Var("b", TensorType((50,), "float32"))
    copy = [ir.Assign(ir.View(plain, 0, (1,)), False, ("fmt", "({0} * 2.0f)", [("load", view)]))]
    assert cpp._rerunnable(ir.Map((50,), copy), {})
    added = [ir.Assign(ir.View(plain, 0, (1,)), True, ("load", view))]
    assert not cpp._rerunnable(ir.Map((50,), added), {})
