"""Staged control flow: values and gradients through cond, loops and recursion,
against PyTorch autograd in float64; the CPS shape of the IR; robustness."""
from __future__ import annotations

import re

import numpy as np
import pytest

import lantern_stage as lt

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-4


def t64(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def close(actual, expected, rtol=RTOL):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(initial=0.0), 1e-6)
    err = np.abs(actual - expected).max(initial=0.0) / scale
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}\nactual   {actual}\nexpected {expected}"


# ---------------------------------------------------------------- one module, many constructs
@lt.compile
def control_suite(x: lt.Tensor[5], w: lt.Tensor[5], n: lt.Int, limit: lt.Float):
    def loss(w):
        # cond with a data-dependent predicate
        a = lt.cond(lt.sum(x) > 0, lambda: lt.tanh(x * w), lambda: w * w - x)
        # fori_loop with a run-time trip count
        b = lt.fori_loop(0, n, lambda i, c: lt.sigmoid(c * w) + c * 0.5, a)
        # while_loop with a data-dependent exit, carrying a tuple
        c, steps = lt.while_loop(lambda s: lt.sum(s[0] * s[0]) < limit,
                                 lambda s: (s[0] * 1.3 + w * 0.1, s[1] + 1), (b, 0))
        # a cond inside a loop body
        d = lt.fori_loop(0, 3, lambda i, v: lt.cond(i % 2 == 0, lambda: v * w, lambda: v + w), c)
        return lt.sum(d * x), steps

    (value, steps), g = lt.value_and_grad(loss, has_aux=True)(w)
    return value, steps, g


def control_reference(x, w, n, limit):
    tw = t64(w, True)
    tx = t64(x)
    a = torch.tanh(tx * tw) if tx.sum() > 0 else tw * tw - tx
    b = a
    for _ in range(n):
        b = torch.sigmoid(b * tw) + b * 0.5
    c, steps = b, 0
    while (c * c).sum() < limit:
        c, steps = c * 1.3 + tw * 0.1, steps + 1
    d = c
    for i in range(3):
        d = d * tw if i % 2 == 0 else d + tw
    value = (d * tx).sum()
    value.backward()
    return value.item(), steps, tw.grad.numpy()


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_cond_loops_values_and_gradients(sign, n):
    rng = np.random.default_rng(n)
    x = (sign * np.abs(rng.standard_normal(5))).astype(np.float32)
    w = rng.uniform(-0.9, 0.9, 5).astype(np.float32)
    value, steps, g = control_suite(x, w, n, 40.0)
    ref_value, ref_steps, ref_g = control_reference(x, w, n, 40.0)
    assert int(steps) == ref_steps
    close(value, ref_value)
    close(g, ref_g)


def test_inference_mode_control_flow_is_direct():
    @lt.compile
    def f(x: lt.Tensor[4], n: lt.Int):
        total = lt.fori_loop(0, n, lambda i, acc: acc + i, 0)
        fib = lt.while_loop(lambda c: c[1] < 50, lambda c: (c[1], c[0] + c[1]), (0, 1))
        y = lt.cond(total > 10, lambda: x * 2.0, lambda: x - 1.0)
        swapped = lt.fori_loop(0, n, lambda i, c: (c[1], c[0]), (x, y))
        return total, fib, y, swapped

    x = np.arange(4, dtype=np.float32)
    total, fib, y, swapped = f(x, 5)
    assert int(total) == 10
    assert (int(fib[0]), int(fib[1])) == (34, 55)
    np.testing.assert_array_equal(y, x - 1.0)
    np.testing.assert_array_equal(swapped[0], y)  # odd number of swaps
    np.testing.assert_array_equal(swapped[1], x)
    total, _, y, _ = f(x, 6)
    assert int(total) == 15
    np.testing.assert_array_equal(y, x * 2.0)
    # No CPS needed outside differentiation: plain loops, no staged functions.
    assert "fun " not in f.ir and "while (true)" in f.cpp_source


# ---------------------------------------------------------------- recursion over trees
def random_tree(rng, n_leaves, vocab):
    """lch/rch/words/labels arrays of a random binary tree, node 0 the root."""
    lch, rch = [-1], [-1]
    todo = [(0, n_leaves)]
    while todo:
        node, leaves = todo.pop()
        if leaves == 1:
            continue
        k = int(rng.integers(1, leaves))
        for side, count in ((lch, k), (rch, leaves - k)):
            side[node] = len(lch)
            lch.append(-1)
            rch.append(-1)
            todo.append((side[node], count))
    lch, rch = np.array(lch, np.int32), np.array(rch, np.int32)
    words = np.where(lch < 0, rng.integers(0, vocab, len(lch)), -1).astype(np.int32)
    labels = rng.integers(0, 5, len(lch)).astype(np.int32)
    return words, lch, rch, labels


H, E, VOCAB = 6, 4, 11


@lt.compile
def rnn_tree(words: lt.IntArray, lch: lt.IntArray, rch: lt.IntArray, labels: lt.IntArray,
             emb: lt.Tensor[VOCAB, E], W: lt.Tensor[H, E], U: lt.Tensor[H, 2 * H], V: lt.Tensor[5, H]):
    # The example, verbatim in structure.
    def loss(W, U, V):
        @lt.recursive
        def node(i):
            def leaf():
                h = lt.tanh(W @ emb[words[i]])
                return h, lt.cross_entropy(V @ h, labels[i])

            def inner():
                hl, ll = node(lch[i])
                hr, lr = node(rch[i])
                h = lt.tanh(U @ lt.concat([hl, hr], 0))
                return h, ll + lr + lt.cross_entropy(V @ h, labels[i])

            return lt.cond(lch[i] < 0, leaf, inner)

        return node(0)[1]

    return lt.value_and_grad(loss, argnums=(0, 1, 2))(W, U, V)


def rnn_tree_reference(tree, emb, W, U, V):
    words, lch, rch, labels = tree
    tW, tU, tV = (t64(a, True) for a in (W, U, V))
    temb = t64(emb)

    def node(i):
        target = torch.tensor([int(labels[i])])
        if lch[i] < 0:
            h = torch.tanh(tW @ temb[words[i]])
            return h, F.cross_entropy((tV @ h)[None], target)
        hl, ll = node(lch[i])
        hr, lr = node(rch[i])
        h = torch.tanh(tU @ torch.cat([hl, hr]))
        return h, ll + lr + F.cross_entropy((tV @ h)[None], target)

    loss = node(0)[1]
    loss.backward()
    return loss.item(), [t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in (tW, tU, tV)]


def test_recursion_over_random_trees():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((VOCAB, E)).astype(np.float32)
    W, U, V = ((rng.standard_normal(s) * 0.4).astype(np.float32) for s in ((H, E), (H, 2 * H), (5, H)))
    for n_leaves in (1, 2, 3, 8, 25):
        tree = random_tree(rng, n_leaves, VOCAB)
        value, grads = rnn_tree(*tree, emb, W, U, V)
        ref_value, ref_grads = rnn_tree_reference(tree, emb, W, U, V)
        close(value, ref_value)
        for g, r in zip(grads, ref_grads):
            close(g, r)


@lt.compile
def gated_tree(words: lt.IntArray, lch: lt.IntArray, rch: lt.IntArray, labels: lt.IntArray,
               emb: lt.Tensor[VOCAB, E], W: lt.Tensor[2 * H, E], U: lt.Tensor[3 * H, 2 * H], V: lt.Tensor[5, H]):
    """A TreeLSTM-like cell: gates are slices of one product, and the inner
    node's gate loop reads the children's cells (continuation parameters)."""
    def loss(W, U, V):
        @lt.recursive
        def node(i):
            def leaf():
                a, b = lt.split(W @ emb[words[i]], H)
                c = lt.sigmoid(a) * lt.tanh(b)
                h = lt.tanh(c)
                return h, c, lt.cross_entropy(V @ h, labels[i])

            def inner():
                hl, cl, ll = node(lch[i])
                hr, cr, lr = node(rch[i])
                g, f, u = lt.split(U @ lt.concat([hl, hr], 0), H)
                c = lt.sigmoid(g) * lt.tanh(u) + lt.sigmoid(f) * (cl + cr)
                h = lt.tanh(c)
                return h, c, ll + lr + lt.cross_entropy(V @ h, labels[i])

            return lt.cond(lch[i] < 0, leaf, inner)

        return node(0)[2]

    return lt.value_and_grad(loss, argnums=(0, 1, 2))(W, U, V)


def test_gated_tree_gate_loops_are_restrict_and_correct():
    """Loop functions whose shared or parameter pointers are only read are
    __restrict (so that g++ vectorises the gates' sigmoid and tanh), and the
    gradients still match PyTorch's."""
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((VOCAB, E)).astype(np.float32)
    W, U, V = ((rng.standard_normal(s) * 0.4).astype(np.float32) for s in ((2 * H, E), (3 * H, 2 * H), (5, H)))
    for n_leaves in (1, 5, 17):
        words, lch, rch, labels = tree = random_tree(rng, n_leaves, VOCAB)
        value, grads = gated_tree(*tree, emb, W, U, V)
        tW, tU, tV = (t64(a, True) for a in (W, U, V))
        temb = t64(emb)

        def node(i):
            target = torch.tensor([int(labels[i])])
            if lch[i] < 0:
                a, b = torch.split(tW @ temb[words[i]], H)
                c = torch.sigmoid(a) * torch.tanh(b)
            else:
                hl, cl, ll = node(lch[i])
                hr, cr, lr = node(rch[i])
                g, f, u = torch.split(tU @ torch.cat([hl, hr]), H)
                c = torch.sigmoid(g) * torch.tanh(u) + torch.sigmoid(f) * (cl + cr)
            h = torch.tanh(c)
            loss = F.cross_entropy((tV @ h)[None], target)
            return h, c, loss if lch[i] < 0 else ll + lr + loss

        ref = node(0)[2]
        ref.backward()
        close(value, ref.item())
        for got, t in zip(grads, (tW, tU, tV)):   # a one-leaf tree does not use U
            close(got, t.grad.numpy() if t.grad is not None else np.zeros(t.shape))
    gate_loops = [fn for fn in re.findall(r"void lt_loop\d+\(([^)]*)\) \{\n(.*?)\n\}\n", gated_tree.cpp_source, re.S)
                  if "sigmoid_f" in fn[1]]
    assert len(gate_loops) >= 2, gated_tree.cpp_source   # the leaf's and the inner node's
    for params, _ in gate_loops:
        assert "__restrict" in params, params


def test_loop_inside_recursive_function():
    @lt.compile
    def f(lch: lt.IntArray, rch: lt.IntArray, w: lt.Tensor[3], n: lt.Int):
        def loss(w):
            @lt.recursive
            def depth_sum(i):
                def leaf():
                    return lt.fori_loop(0, n, lambda k, v: lt.tanh(v * w + 0.1), w)

                def inner():
                    return depth_sum(lch[i]) * 0.5 + depth_sum(rch[i]) * w

                return lt.cond(lch[i] < 0, leaf, inner)

            return lt.sum(depth_sum(0))

        return lt.value_and_grad(loss)(w)

    rng = np.random.default_rng(1)
    _, lch, rch, _ = random_tree(rng, 6, 3)
    w = np.array([0.3, -0.6, 0.9], np.float32)
    value, g = f(lch, rch, w, 4)

    tw = t64(w, True)

    def ref(i):
        if lch[i] < 0:
            v = tw
            for _ in range(4):
                v = torch.tanh(v * tw + 0.1)
            return v
        return ref(lch[i]) * 0.5 + ref(rch[i]) * tw

    out = ref(0).sum()
    out.backward()
    close(value, out.item())
    close(g, tw.grad.numpy())


# ---------------------------------------------------------------- the paper's TreeLSTM
TH, TE = 150, 300


@lt.compile
def treelstm_loss(words: lt.IntArray, lch: lt.IntArray, rch: lt.IntArray, labels: lt.IntArray,
                  emb: lt.Tensor[5267, TE], W_leaf: lt.Tensor[3 * TH, TE], b_leaf: lt.Tensor[3 * TH],
                  U: lt.Tensor[5 * TH, 2 * TH], b_inner: lt.Tensor[5 * TH],
                  W_out: lt.Tensor[5, TH], b_out: lt.Tensor[5]):
    def loss(params):
        W_leaf, b_leaf, U, b_inner, W_out, b_out = params

        @lt.recursive
        def node(i):
            def leaf():
                z = W_leaf @ emb[words[i]] + b_leaf
                i_g, o_g, u = lt.sigmoid(z[:TH]), lt.sigmoid(z[TH:2 * TH]), lt.tanh(z[2 * TH:])
                c = i_g * u
                h = o_g * lt.tanh(c)
                return h, c, lt.cross_entropy(W_out @ h + b_out, labels[i])

            def inner():
                hl, cl, ll = node(lch[i])
                hr, cr, lr = node(rch[i])
                z = U @ lt.concat([hl, hr], 0) + b_inner
                i_g, fl, fr, o_g = (lt.sigmoid(z[k * TH:(k + 1) * TH]) for k in range(4))
                u = lt.tanh(z[4 * TH:])
                c = i_g * u + fl * cl + fr * cr
                h = o_g * lt.tanh(c)
                return h, c, ll + lr + lt.cross_entropy(W_out @ h + b_out, labels[i])

            return lt.cond(lch[i] < 0, leaf, inner)

        return node(0)[2]

    return lt.value_and_grad(loss)((W_leaf, b_leaf, U, b_inner, W_out, b_out))


def _treelstm_node_math(lib, z_leaf=None, z_inner=None, cl=None, cr=None):
    if z_leaf is not None:
        i_g, o_g, u = lib.sigmoid(z_leaf[..., :TH]), lib.sigmoid(z_leaf[..., TH:2 * TH]), lib.tanh(z_leaf[..., 2 * TH:])
        c = i_g * u
    else:
        i_g, fl, fr, o_g = (lib.sigmoid(z_inner[..., k * TH:(k + 1) * TH]) for k in range(4))
        u = lib.tanh(z_inner[..., 4 * TH:])
        c = i_g * u + fl * cl + fr * cr
    return o_g * lib.tanh(c), c


def treelstm_reference(trees, emb, params):
    """PyTorch float64, a recursive function per tree, as a PyTorch user writes it."""
    tp = [t64(p, True) for p in params]
    W_leaf, b_leaf, U, b_inner, W_out, b_out = tp
    temb = t64(emb)
    total = 0.0
    for words, lch, rch, labels in trees:
        def node(i):
            target = torch.tensor([int(labels[i])])
            if lch[i] < 0:
                h, c = _treelstm_node_math(torch, z_leaf=W_leaf @ temb[int(words[i])] + b_leaf)
                return h, c, F.cross_entropy((W_out @ h + b_out)[None], target)
            hl, cl, ll = node(lch[i])
            hr, cr, lr = node(rch[i])
            h, c = _treelstm_node_math(torch, z_inner=U @ torch.cat([hl, hr]) + b_inner, cl=cl, cr=cr)
            return h, c, ll + lr + F.cross_entropy((W_out @ h + b_out)[None], target)

        loss = node(0)[2]
        loss.backward()
        total += loss.item()
    return total, [p.grad.numpy() for p in tp]


def treelstm_reference_by_level(trees, emb, params):
    """The same recursion in PyTorch float64, scheduled by node height over
    the whole forest at once (children before parents): the recursive
    reference takes minutes for 1101 trees, this takes seconds."""
    tp = [t64(p, True) for p in params]
    W_leaf, b_leaf, U, b_inner, W_out, b_out = tp
    words, lch, rch, labels, offset = [], [], [], [], 0
    for w, l, r, y in trees:
        words.append(w)
        lch.append(np.where(l >= 0, l + offset, -1))
        rch.append(np.where(r >= 0, r + offset, -1))
        labels.append(y)
        offset += len(w)
    words, lch, rch, labels = (np.concatenate(a) for a in (words, lch, rch, labels))
    n = len(words)
    height = np.zeros(n, np.int64)
    for i in range(n - 1, -1, -1):  # children are numbered after their parents
        if lch[i] >= 0:
            height[i] = 1 + max(height[lch[i]], height[rch[i]])
    H = torch.zeros(n, TH, dtype=torch.float64)
    C = torch.zeros(n, TH, dtype=torch.float64)
    temb = t64(emb)
    for level in range(height.max() + 1):
        idx = np.nonzero(height == level)[0]
        if level == 0:
            h, c = _treelstm_node_math(torch, z_leaf=temb[words[idx]] @ W_leaf.T + b_leaf)
        else:
            l, r = torch.tensor(lch[idx]), torch.tensor(rch[idx])
            z = torch.cat([H[l], H[r]], 1) @ U.T + b_inner
            h, c = _treelstm_node_math(torch, z_inner=z, cl=C[l], cr=C[r])
        t = torch.tensor(idx)
        H = H.index_copy(0, t, h)
        C = C.index_copy(0, t, c)
    loss = F.cross_entropy(H @ W_out.T + b_out, torch.tensor(labels, dtype=torch.long), reduction="sum")
    loss.backward()
    return loss.item(), [p.grad.numpy() for p in tp]


def test_treelstm_on_sst_matches_pytorch():
    from benchmarks.data import embedding_table, load_trees

    trees = [(t.words, t.lch, t.rch, t.labels) for t in load_trees()]
    assert len(trees) == 1101
    emb = embedding_table()
    rng = np.random.default_rng(0)
    shapes = [((3 * TH, TE), TE), ((3 * TH,), TE), ((5 * TH, 2 * TH), 2 * TH), ((5 * TH,), 2 * TH),
              ((5, TH), TH), ((5,), TH)]
    params = [(rng.uniform(-1, 1, s) / np.sqrt(fan)).astype(np.float32) for s, fan in shapes]
    total, grads = 0.0, [np.zeros(p.shape) for p in params]
    for tree in trees:
        value, g = treelstm_loss(*tree, emb, *params)
        total += float(value)
        for acc, gi in zip(grads, g):
            acc += gi
    ref_total, ref_grads = treelstm_reference_by_level(trees, emb, params)
    close(total, ref_total)
    for g, r in zip(grads, ref_grads):
        close(g, r)
    # ... and the level schedule is the recursion: on the first trees, against
    # the recursive PyTorch reference and the compiled code tree by tree.
    some = trees[:8]
    rec_total, rec_grads = treelstm_reference(some, emb, params)
    lvl_total, lvl_grads = treelstm_reference_by_level(some, emb, params)
    close(lvl_total, rec_total, 1e-10)
    for a, b in zip(lvl_grads, rec_grads):
        close(a, b, 1e-10)


# ---------------------------------------------------------------- shape of the code
def test_ir_shows_reified_continuations():
    text = rnn_tree.ir
    assert "fun node_" in text and "lam k" in text and "call node_" in text and "jump k" in text
    src = rnn_tree.cpp_source
    assert "lt::FnRef<void(" in src and "lt::Runtime::Frame guard(rt);" in src


def _looping(n):
    def body(x: lt.Tensor[4]):
        def loss(x):
            return lt.sum(lt.fori_loop(0, n, lambda i, c: lt.tanh(c) * x, x))

        return lt.value_and_grad(loss)(x)

    return lt.compile(body, name="looping")


def test_generated_code_does_not_grow_with_trip_count():
    small, large = _looping(10), _looping(10_000)
    # The trip count is the only difference in the source: one literal.
    assert small.cpp_source.replace("10000", "10") == large.cpp_source.replace("10000", "10")
    assert len(large.cpp_source) - len(small.cpp_source) == 3
    x = np.full(4, 0.5, np.float32)
    value, _ = large(x)
    v = np.full(4, 0.5)
    for _ in range(10_000):
        v = np.tanh(v) * 0.5
    close(value, v.sum())


@lt.compile
def chain(lch: lt.IntArray, w: lt.Tensor[2]):
    def loss(w):
        @lt.recursive
        def down(i):
            return lt.cond(lch[i] < 0, lambda: w, lambda: lt.tanh(down(lch[i]) * w))

        return lt.sum(down(0))

    return lt.value_and_grad(loss)(w)


def test_deep_recursion_and_long_loops_run_or_raise():
    depth = 10_000
    lch = np.append(np.arange(1, depth + 1, dtype=np.int32), np.int32(-1))
    value, g = chain(lch, np.array([0.5, 0.9], np.float32))
    assert np.isfinite(value) and np.all(np.isfinite(g))
    assert chain.last_peak_bytes > 0

    loop = _looping(100_000)
    value, g = loop(np.full(4, 0.5, np.float32))
    assert np.isfinite(value)
    # 100,000 live frames, each holding its four 64-byte-aligned buffers.
    assert 0 < loop.last_peak_bytes <= 4 * 64 * 100_000 + 4096


def test_recursion_budget_raises_a_python_exception():
    f = lt.compile(chain.fn, name="chain_budget", max_depth=1000)
    lch = np.append(np.arange(1, 5001, dtype=np.int32), np.int32(-1))
    with pytest.raises(RecursionError, match="budget"):
        f(lch, np.array([0.5, 0.9], np.float32))
    # A bad child index is an IndexError, not a crash.
    with pytest.raises(IndexError, match="out of range"):
        chain(np.array([5, -1], np.int32), np.array([0.5, 0.9], np.float32))
    # A cycle (i -> i) recurses until the budget: an exception, never a hang or crash.
    with pytest.raises(RecursionError):
        f(np.array([0], np.int32), np.array([0.5, 0.9], np.float32))


def test_peak_memory_is_the_live_frames_and_released_in_stack_order():
    # Backpropagation keeps every node's forward values until its backward
    # has run, so the peak grows with the tree; but a frame's buffers are
    # released with the frame: each call starts from an empty arena, and a
    # small tree after a large one peaks as low as before.
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((VOCAB, E)).astype(np.float32)
    W, U, V = ((rng.standard_normal(s) * 0.4).astype(np.float32) for s in ((H, E), (H, 2 * H), (5, H)))

    def balanced(k):
        n = 2 ** (k + 1) - 1
        lch = np.array([2 * i + 1 if 2 * i + 1 < n else -1 for i in range(n)], np.int32)
        rch = np.array([2 * i + 2 if 2 * i + 2 < n else -1 for i in range(n)], np.int32)
        words = np.where(lch < 0, 1, -1).astype(np.int32)
        return words, lch, rch, np.zeros(n, np.int32)

    rnn_tree(*balanced(3), emb, W, U, V)
    small = rnn_tree.last_peak_bytes
    rnn_tree(*balanced(9), emb, W, U, V)
    large = rnn_tree.last_peak_bytes
    nodes_ratio = (2 ** 10 - 1) / (2 ** 4 - 1)
    assert 0.5 * nodes_ratio < large / small < 1.5 * nodes_ratio
    rnn_tree(*balanced(3), emb, W, U, V)
    assert rnn_tree.last_peak_bytes == small


def test_branch_mismatch_is_a_staging_error():
    def bad(x: lt.Tensor[3]):
        return lt.cond(lt.sum(x) > 0, lambda: x, lambda: lt.concat([x, x], 0))

    with pytest.raises(lt.StagingError, match=r"true branch gives float32\[3\] but the false branch gives float32\[6\]"):
        lt.compile(bad).ir

    def bad_carry(x: lt.Tensor[3]):
        return lt.fori_loop(0, 3, lambda i, c: lt.sum(c), x)

    with pytest.raises(lt.StagingError, match="fori_loop"):
        lt.compile(bad_carry).ir


def test_recursive_result_needs_a_base_case():
    def f(x: lt.Tensor[3]):
        @lt.recursive
        def forever(i):
            return forever(i + 1)

        return forever(0)

    with pytest.raises(lt.StagingError, match="cannot infer the result type"):
        lt.compile(f).ir
