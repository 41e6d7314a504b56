"""lt.nn ops, modules, initialisers, optimizers and lt.train_step.

Ops (conv2d, pooling, embedding, linear) are checked, value and gradient,
against a float64 numpy reference, central finite differences of it, and
PyTorch in float64; dropout by its mask statistics and by the mask being the
same in the forward and the backward pass.  Optimizers are checked against
torch.optim step by step.  Each compiled function is one g++ run, so the
checks are grouped into a few compiled functions.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import lantern_stage as lt
from lantern_stage import nn

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-4, 1e-5


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- float64 numpy references
def np_conv2d(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, f, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]  # n, c, oh, ow
            y += np.einsum("ncuv,fc->nfuv", patch, w[:, :, i, j])
    return y if b is None else y + b[None, :, None, None]


def np_pool(x, k, s, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    windows = np.stack([x[:, :, i:i + s * oh:s, j:j + s * ow:s] for i in range(k) for j in range(k)])
    return reduce(windows, axis=0)


def finite_difference(f, arrays, eps=1e-6):
    """Central differences of the float64 scalar f(*arrays) w.r.t. each array."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        flat, gflat = a.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = f(*arrays)
            flat[i] = old - eps
            down = f(*arrays)
            flat[i] = old
            gflat[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


# ---------------------------------------------------------------- conv2d, pooling, embedding, linear
CONVS = [  # (stride, padding, bias)
    ((1, 1), (0, 0), True),
    ((2, 2), (1, 1), True),
    ((2, 1), (0, 2), False),
]
X_SHAPE, W_SHAPE = (2, 3, 7, 6), (4, 3, 3, 2)


@pytest.fixture(scope="module")
def op_case():
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, *X_SHAPE), rand(rng, *W_SHAPE), rand(rng, 4)
    outs = [np_conv2d(x.astype(np.float64), w, b if bias else None, s, p).shape for s, p, bias in CONVS]
    r_conv = [rand(rng, *s) for s in outs]
    px = rand(rng, 2, 3, 8, 7)
    r_max, r_max3, r_avg = rand(rng, 2, 3, 4, 3), rand(rng, 2, 3, 3, 3), rand(rng, 2, 3, 7, 6)
    table, idx = rand(rng, 6, 5), np.array([[1, 4, 1], [0, 5, 1]], np.int32)
    r_emb = rand(rng, 2, 3, 5)
    lx, lw, lb, r_lin = rand(rng, 2, 3, 4), rand(rng, 5, 4), rand(rng, 5), rand(rng, 2, 3, 5)
    vx, r_vec = rand(rng, 4), rand(rng, 5)

    @lt.compile
    def ops(x: lt.Tensor[X_SHAPE], w: lt.Tensor[W_SHAPE], b: lt.Tensor[4], px: lt.Tensor[2, 3, 8, 7],
            table: lt.Tensor[6, 5], idx: lt.Tensor[2, 3, "int32"], lx: lt.Tensor[2, 3, 4],
            lw: lt.Tensor[5, 4], lb: lt.Tensor[5], vx: lt.Tensor[4]):
        results = {}
        for k, (s, p, bias) in enumerate(CONVS):
            def loss(x, w, b, s=s, p=p, bias=bias, k=k):
                y = lt.conv2d(x, w, b if bias else None, stride=s, padding=p)
                return lt.sum(y * r_conv[k]), y
            results[f"conv{k}"] = lt.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, w, b)

        def pools(px):
            m2, m3, a2 = lt.max_pool2d(px, 2), lt.max_pool2d(px, 3, stride=2), lt.avg_pool2d(px, (2, 2), stride=1)
            return lt.sum(m2 * r_max) + lt.sum(m3 * r_max3) + lt.sum(a2 * r_avg), (m2, m3, a2)
        results["pool"] = lt.value_and_grad(pools, has_aux=True)(px)

        def emb(table):
            e = lt.embedding(table, idx)
            return lt.sum(e * r_emb), e
        results["emb"] = lt.value_and_grad(emb, has_aux=True)(table)

        def lin(lx, lw, lb, vx):
            y, v = lt.linear(lx, lw, lb), lt.linear(vx, lw)
            return lt.sum(y * r_lin) + lt.sum(v * r_vec), (y, v)
        results["lin"] = lt.value_and_grad(lin, argnums=(0, 1, 2, 3), has_aux=True)(lx, lw, lb, vx)
        return results

    got = ops(x, w, b, px, table, idx, lx, lw, lb, vx)
    return dict(got=got, src=ops.cpp_source, x=x, w=w, b=b, r_conv=r_conv, px=px, r_max=r_max, r_max3=r_max3, r_avg=r_avg,
                table=table, idx=idx, r_emb=r_emb, lx=lx, lw=lw, lb=lb, vx=vx, r_lin=r_lin, r_vec=r_vec)


@pytest.mark.parametrize("k", range(len(CONVS)))
def test_conv2d_value_and_gradients(op_case, k):
    c = op_case
    stride, padding, bias = CONVS[k]
    (value, y), grads = c["got"][f"conv{k}"]
    x, w, b = (c[n].astype(np.float64) for n in "xwb")

    def ref(x, w, b):
        return np.sum(np_conv2d(x, w, b if bias else None, stride, padding) * c["r_conv"][k])

    close(y, np_conv2d(x, w, b if bias else None, stride, padding))
    close(value, ref(x, w, b), rtol=1e-5)
    fd = finite_difference(ref, [x.copy(), w.copy(), b.copy()])
    for g, want in zip(grads, fd):
        close(g, want, rtol=1e-4, atol=1e-4)
    tx, tw, tb = t64(x, True), t64(w, True), t64(b, True)
    ty = F.conv2d(tx, tw, tb if bias else None, stride=stride, padding=padding)
    (ty * t64(c["r_conv"][k])).sum().backward()
    for g, t in zip(grads, (tx, tw, tb)):
        close(g, t.grad.numpy() if t.grad is not None else np.zeros(t.shape))
    if not bias:
        assert not grads[2].any()


def test_max_and_avg_pool_value_and_gradients(op_case):
    c = op_case
    (value, (m2, m3, a2)), g = c["got"]["pool"]
    px = c["px"].astype(np.float64)

    def ref(px):
        return (np.sum(np_pool(px, 2, 2, np.max) * c["r_max"]) + np.sum(np_pool(px, 3, 2, np.max) * c["r_max3"])
                + np.sum(np_pool(px, 2, 1, np.mean) * c["r_avg"]))

    close(m2, np_pool(px, 2, 2, np.max), rtol=0, atol=0)  # a max is exact
    close(m3, np_pool(px, 3, 2, np.max), rtol=0, atol=0)
    close(a2, np_pool(px, 2, 1, np.mean))
    close(value, ref(px), rtol=1e-5)
    close(g, finite_difference(ref, [px.copy()])[0], atol=1e-4)
    tp = t64(px, True)
    (((F.max_pool2d(tp, 2) * t64(c["r_max"])).sum() + (F.max_pool2d(tp, 3, 2) * t64(c["r_max3"])).sum()
      + (F.avg_pool2d(tp, 2, 1) * t64(c["r_avg"])).sum())).backward()
    close(g, tp.grad.numpy())
    # passes/pool_values: the pooled values are the argmax kernel's, not a second gather
    assert c["src"].count("lt::max_pool2d_argmax(") == 2 and "lt::gather_plane(" not in c["src"]


# Gradients whose first write is conv2d's or max pooling's backward kernel: assigned, an
# image or plane at a time, instead of zero-filled and added into (passes/first_write.py).
# The kernels' operands are intermediate values (x / 2, 2 w, 4 b, 2 px: exact scalings,
# so the only round-off is the kernels' own): an input's gradient is first written
# outside the scope.  Called twice: a buffer left unzeroed would carry the first call's
# arena contents.
FIRST_WRITE_CONVS = [  # (x shape, w shape, stride, padding): direct exact rows, direct padded copy, im2col
    ((2, 3, 10, 10), (4, 3, 3, 3), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3, 2), 1, 1),
    ((2, 3, 9, 8), (5, 3, 3, 3), 2, 1),
]
U = 2.0 ** -24   # float32 unit round-off


def within_float32_bound(got, want, abs_sum, terms):
    """|got - want| <= (terms + 1) u sum|terms|: a float32 sum of `terms` products in
    any order, and its rounding; `abs_sum` is the float64 sum of the terms' magnitudes."""
    err = np.abs(np.asarray(got, np.float64) - want)
    bound = (terms + 1) * U * abs_sum
    assert np.all(err <= bound), f"max error {err.max():.3g}, worst error / bound {np.max(err / (bound + 1e-300)):.3g}"


def test_conv_and_pool_gradients_assigned_by_their_first_write_match_pytorch():
    rng = np.random.default_rng(3)
    shapes = [(x, w, (w[0],)) for x, w, _, _ in FIRST_WRITE_CONVS]
    r_conv = [rand(rng, *F.conv2d(torch.zeros(x), torch.zeros(w), stride=s, padding=p).shape)
              for x, w, s, p in FIRST_WRITE_CONVS]
    r_pool = rand(rng, 2, 3, 3, 3)

    def f(arrays):
        out = []
        for k, (_, _, s, p) in enumerate(FIRST_WRITE_CONVS):
            def loss(x, w, b, s=s, p=p, k=k):
                return lt.sum(lt.conv2d(x * 0.5, w * 2.0, b * 4.0, stride=s, padding=p) * r_conv[k])
            out.append(lt.grad(loss, argnums=(0, 1, 2))(*arrays[3 * k:3 * k + 3]))
        out.append(lt.grad(lambda px: lt.sum(lt.max_pool2d(px * 2.0, 3, stride=2) * r_pool))(arrays[-1]))
        return out

    def torch_grads(arrays, r, fn):
        ts = [t64(a, True) for a in arrays]
        (fn(*ts) * t64(r)).sum().backward()
        return [t.grad.numpy() for t in ts]

    args = [a for shape in shapes for a in shape] + [(2, 3, 8, 7)]
    g = lt.compile(f, name="first_write_convs")
    for call in range(2):
        inputs = [rand(rng, *a) for a in args]
        got = g(inputs)
        assert len(re.findall(r"lt::conv2d_backward\([^;]*, arena, false\);", g.cpp_source)) == 3 * len(FIRST_WRITE_CONVS)
        assert re.search(r"lt::gather_plane_backward\([^;]*, false\);", g.cpp_source)
        for k, ((n, _, _, _), (f_, _, kh, kw), s, p) in enumerate(FIRST_WRITE_CONVS):
            conv = lambda x, w, b, s=s, p=p: F.conv2d(x * 0.5, w * 2, b * 4, stride=s, padding=p)
            mine = inputs[3 * k:3 * k + 3]
            want = torch_grads(mine, r_conv[k], conv)
            abs_sum = torch_grads([np.abs(a) for a in mine], np.abs(r_conv[k]), conv)  # same sums of |terms|
            oh, ow = r_conv[k].shape[2:]
            for got_i, want_i, abs_i, terms in zip(got[k], want, abs_sum, (f_ * kh * kw, n * oh * ow, n * oh * ow)):
                within_float32_bound(got_i, want_i, abs_i, terms)   # dx over (f, kh, kw); dw, db over (n, oh, ow)
        pool = lambda px: F.max_pool2d(px * 2, 3, 2)   # windows overlap: an input is the max of up to 4
        (want,), (abs_sum,) = (torch_grads([inputs[-1]], r, pool) for r in (r_pool, np.abs(r_pool)))
        within_float32_bound(got[-1], want, abs_sum, 4)


def test_embedding_gathers_rows_and_scatter_adds_gradients(op_case):
    c = op_case
    (_, e), g = c["got"]["emb"]
    np.testing.assert_array_equal(e, c["table"][c["idx"]])
    want = np.zeros_like(c["table"])
    np.add.at(want, c["idx"].ravel(), c["r_emb"].reshape(-1, 5))  # row 1 is used three times
    close(g, want)
    tt = t64(c["table"], True)
    (F.embedding(torch.tensor(c["idx"]).long(), tt) * t64(c["r_emb"])).sum().backward()
    close(g, tt.grad.numpy())


def test_linear_matches_pytorch_on_batched_and_vector_inputs(op_case):
    c = op_case
    (_, (y, v)), grads = c["got"]["lin"]
    tx, tw, tb, tv = (t64(c[n], True) for n in ("lx", "lw", "lb", "vx"))
    ty, tvv = F.linear(tx, tw, tb), F.linear(tv, tw)
    ((ty * t64(c["r_lin"])).sum() + (tvv * t64(c["r_vec"])).sum()).backward()
    close(y, ty.detach().numpy())
    close(v, tvv.detach().numpy())
    for g, t in zip(grads, (tx, tw, tb, tv)):
        close(g, t.grad.numpy())


def test_embedding_index_out_of_range_is_an_index_error():
    table = np.zeros((3, 2), np.float32)

    @lt.compile
    def f(i: lt.Tensor[2, "int32"]):
        return lt.embedding(table, i)

    np.testing.assert_array_equal(f(np.array([2, 0], np.int32)), np.zeros((2, 2)))
    with pytest.raises(IndexError, match="embedding index: index 3 out of range"):
        f(np.array([1, 3], np.int32))


def test_nn_shape_errors_name_the_op_and_the_line():
    with pytest.raises(lt.StagingError, match=r"conv2d: input has 2 channels but the weight expects 3(.|\n)*test_nn.py"):
        @lt.compile
        def f(x: lt.Tensor[1, 2, 5, 5], w: lt.Tensor[4, 3, 3, 3]):
            return lt.conv2d(x, w)

        f.ir  # noqa: B018
    with pytest.raises(lt.StagingError, match="max_pool2d: only square kernels"):
        def g(x: lt.Tensor[1, 1, 4, 4]):
            return lt.max_pool2d(x, (2, 3))

        lt.compile(g).ir  # noqa: B018


# ---------------------------------------------------------------- dropout
N_DROP, P_DROP = 20000, 0.3


@pytest.fixture(scope="module")
def dropout_fn():
    w = np.random.default_rng(5).standard_normal(N_DROP).astype(np.float32)

    @lt.compile
    def f(x: lt.Tensor[N_DROP]):
        def loss(x):
            y = lt.dropout(x, P_DROP)
            return lt.sum(y * w), y
        (_, y), g = lt.value_and_grad(loss, has_aux=True)(x)
        return y, g

    return f, w


def test_dropout_mask_statistics(dropout_fn):
    f, _ = dropout_fn
    lt.manual_seed(1)
    y, _ = f(np.ones(N_DROP, np.float32))
    dropped = np.mean(y == 0)
    sigma = math.sqrt(P_DROP * (1 - P_DROP) / N_DROP)
    assert abs(dropped - P_DROP) < 5 * sigma
    np.testing.assert_array_equal(np.unique(y), [0.0, np.float32(1 / (1 - P_DROP))])
    assert abs(y.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation


def test_dropout_uses_the_same_mask_forward_and_backward(dropout_fn):
    f, w = dropout_fn
    x = np.random.default_rng(2).uniform(0.5, 1.5, N_DROP).astype(np.float32)
    y, g = f(x)
    mask = y / x
    np.testing.assert_allclose(g, mask * w, rtol=1e-6)
    assert (g[y == 0] == 0).all() and (g[y != 0] != 0).all()


def test_dropout_is_reproducible_from_the_seed_and_checkpointable(dropout_fn):
    f, _ = dropout_fn
    x = np.ones(N_DROP, np.float32)
    gen = lt.manual_seed(123)
    assert gen.initial_seed() == 123 and gen.draws == 0
    first, _ = f(x)
    state = gen.get_state()
    second, _ = f(x)
    assert gen.draws == 2
    assert not np.array_equal(first, second)  # a new mask every call
    lt.manual_seed(123)
    np.testing.assert_array_equal(f(x)[0], first)
    gen.set_state(state)  # resume from a saved state: the same next mask
    np.testing.assert_array_equal(f(x)[0], second)
    lt.manual_seed(124)
    assert not np.array_equal(f(x)[0], first)


def test_dropout_off_in_eval_and_edge_probabilities():
    x = np.arange(1, 9, dtype=np.float32)
    drop = nn.Dropout(0.5).eval()
    gen = lt.Generator(9)

    @lt.compile
    def f(x: lt.Tensor[8]):
        return drop(x), lt.dropout(x, 0.0), lt.dropout(x, 1.0, generator=gen), lt.dropout(x, 0.5, training=False)

    a, b, c, d = f(x)
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, x)
    np.testing.assert_array_equal(c, np.zeros(8))
    np.testing.assert_array_equal(d, x)
    assert f.ir.count("dropout_mask(") == 1  # eval mode, p=0 and training=False draw nothing
    assert gen.draws == 1  # only p=1.0 drew, from its own generator
    with pytest.raises(ValueError, match="not in"):
        nn.Dropout(1.5)


# ---------------------------------------------------------------- modules
def test_module_names_layouts_and_state_dict_match_pytorch():
    lt.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4))
    twin = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(27, 4))
    ours = model.state_dict()
    theirs = twin.state_dict()
    assert list(ours) == list(theirs) == [n for n, _ in model.named_parameters()]
    assert {k: v.shape for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    cell, tcell = nn.LSTMCell(5, 7), torch.nn.LSTMCell(5, 7)
    assert [(n, p.shape) for n, p in cell.named_parameters()] == [(n, tuple(p.shape)) for n, p in tcell.named_parameters()]
    emb = nn.Embedding(10, 3)
    assert list(emb.state_dict()) == ["weight"] and emb.weight.shape == (10, 3)
    assert len(list(model.parameters())) == 4 and model[3] is list(model.children())[3]
    assert "Linear(in_features=27, out_features=4, bias=True)" in repr(model)


def test_modules_compute_what_pytorch_computes():
    lt.manual_seed(1)
    rng = np.random.default_rng(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Tanh(), nn.Flatten())
            self.emb = nn.Embedding(6, 4)
            self.cell = nn.LSTMCell(4 + 8, 5)
            self.head = nn.Linear(5, 3)

        def forward(self, img, ids):
            z = lt.concat([self.features(img), self.emb(ids)], axis=1)
            h, c = self.cell(z)
            h, c = self.cell(z, (h, c))
            return lt.log_softmax(self.head(h), axis=1), c

    net = Net()

    @lt.compile
    def run(img: lt.Tensor[2, 1, 6, 6], ids: lt.Tensor[2, "int32"]):
        return net(img, ids)

    img, ids = rand(rng, 2, 1, 6, 6), np.array([5, 2], np.int32)
    out, c = run(img, ids)

    tf = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), torch.nn.Tanh(), torch.nn.Flatten())
    temb, tcell, thead = torch.nn.Embedding(6, 4), torch.nn.LSTMCell(12, 5), torch.nn.Linear(5, 3)
    state = {k: torch.from_numpy(v.copy()) for k, v in net.state_dict().items()}
    for prefix, m in (("features.", tf), ("emb.", temb), ("cell.", tcell), ("head.", thead)):
        m.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    with torch.no_grad():
        z = torch.cat([tf(torch.from_numpy(img)), temb(torch.from_numpy(ids).long())], 1)
        h, tc = tcell(z)
        h, tc = tcell(z, (h, tc))
        close(out, F.log_softmax(thead(h), 1).numpy())
        close(c, tc.numpy())


def test_default_initialisation_follows_pytorch_and_the_seed():
    lt.manual_seed(3)
    lin = nn.Linear(400, 300)
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(400) and np.abs(lin.bias.data).max() <= 1 / math.sqrt(400)
    assert np.abs(lin.weight.data).max() > 0.95 / math.sqrt(400)
    conv = nn.Conv2d(4, 8, 3)
    assert np.abs(conv.weight.data).max() <= 1 / math.sqrt(36)
    cell = nn.LSTMCell(10, 20)
    assert all(np.abs(p.data).max() <= 1 / math.sqrt(20) for p in cell.parameters())
    emb = nn.Embedding(1000, 50)
    assert abs(emb.weight.data.std() - 1) < 0.02 and abs(emb.weight.data.mean()) < 0.02
    lt.manual_seed(3)
    np.testing.assert_array_equal(nn.Linear(400, 300).weight.data, lin.weight.data)

    w = np.empty((200, 300), np.float32)
    nn.init.xavier_uniform_(w, gain=2.0)
    assert abs(w.std() - 2.0 * math.sqrt(2 / 500)) < 0.01 * 2.0 * math.sqrt(2 / 500) * 3
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    assert abs(w.std() - math.sqrt(2 / 300)) < 0.02 * math.sqrt(2 / 300)
    nn.init.xavier_normal_(w)
    assert abs(w.std() - math.sqrt(2 / 500)) < 0.02 * math.sqrt(2 / 500)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    assert np.abs(w).max() <= 1 / math.sqrt(300)
    nn.init.zeros_(w)
    assert not w.any()
    assert nn.init.calculate_gain("tanh") == pytest.approx(5 / 3)


def test_parameters_state_dict_round_trip_is_in_place():
    lt.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    weight_array = b.weight.data
    b.load_state_dict(a.state_dict())
    assert b.weight.data is weight_array  # compiled code keeps pointing at the same memory
    assert np.asarray(b.weight) is weight_array and np.asarray(b.weight, np.float64) is not weight_array
    np.testing.assert_array_equal(b.weight.data, a.weight.data)
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict({"weight": a.weight.data})
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict({"weight": np.zeros((2, 4)), "bias": np.zeros(2)})
    m = nn.Module()
    m.register_buffer("stats", np.zeros(3, np.float32))
    m.register_buffer("scratch", np.zeros(3, np.float32), persistent=False)
    assert list(m.state_dict()) == ["stats"]
    assert m.train() is m and m.training and not m.eval().training
    with pytest.raises(AttributeError, match="outside staged code"):
        a.weight.reshape(6)


def test_functional_call_and_weight_sharing_with_an_inference_function():
    lt.manual_seed(0)
    lin = nn.Linear(3, 2)

    @lt.compile
    def predict(x: lt.Tensor[3]):
        return lin(x)

    @lt.compile
    def with_weights(x: lt.Tensor[3], w: lt.Tensor[2, 3]):
        return nn.functional_call(lin, {"weight": w}, x)

    x = np.array([1.0, 2.0, 3.0], np.float32)
    close(predict(x), lin.weight.data @ x + lin.bias.data)
    lin.weight.data[...] = 1.0  # in place: the compiled function reads the new values
    close(predict(x), 6.0 + lin.bias.data)
    w = np.full((2, 3), 2.0, np.float32)
    close(with_weights(x, w), 12.0 + lin.bias.data)
    with pytest.raises(KeyError, match="no parameters"):
        nn.functional_call(lin, {"nope": w}, x)


def test_assign_writes_a_captured_array_in_place():
    counter = np.zeros(3, np.float32)

    @lt.compile
    def bump(x: lt.Tensor[3]):
        lt.assign(counter, counter + x)
        return lt.sum(x)

    bump(np.ones(3, np.float32))
    bump(np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(counter, [1, 2, 3])

    with pytest.raises(lt.StagingError, match="must be a captured array"):
        @lt.compile
        def bad(x: lt.Tensor[3]):
            lt.assign(x * 2, x)
            return x

        bad.ir  # noqa: B018


# ---------------------------------------------------------------- optimizers against torch.optim
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(lt.tanh(self.fc1(x)))


def mlp_loss(model, x: lt.Tensor[10, 6], y: lt.Tensor[10, "int32"]):
    return lt.cross_entropy(model(x), y)


def torch_twin(model):
    twin = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    names = {"fc1.weight": "0.weight", "fc1.bias": "0.bias", "fc2.weight": "2.weight", "fc2.bias": "2.bias"}
    twin.load_state_dict({names[k]: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    return twin, names


OPTIMIZERS = {
    "sgd": (lambda p: lt.optim.SGD(p, lr=0.2, momentum=0.9, weight_decay=0.01, nesterov=True),
            lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9, weight_decay=0.01, nesterov=True),
            dict(clip_grad_value=0.05)),
    "adagrad": (lambda p: lt.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.001, initial_accumulator_value=0.1),
                lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.001, initial_accumulator_value=0.1),
                dict(clip_grad_norm=0.5)),
    "adam": (lambda p: lt.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.01),
             dict(clip_grad_norm=0.3)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_and_clipping_match_torch(name):
    make, make_torch, clip = OPTIMIZERS[name]
    lt.manual_seed(0)
    model = MLP()
    twin, names = torch_twin(model)
    step = lt.train_step(model, mlp_loss, make(model.parameters()), **clip)
    topt = make_torch(twin.parameters())
    rng = np.random.default_rng(0)
    for i in range(15):
        x, y = rand(rng, 10, 6), rng.integers(0, 3, 10).astype(np.int32)
        loss = step(x, y)
        topt.zero_grad()
        tloss = F.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y).long())
        tloss.backward()
        if "clip_grad_norm" in clip:
            torch.nn.utils.clip_grad_norm_(twin.parameters(), clip["clip_grad_norm"])
        else:
            torch.nn.utils.clip_grad_value_(twin.parameters(), clip["clip_grad_value"])
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-5), i
    theirs = twin.state_dict()
    for k, v in model.state_dict().items():
        close(v, theirs[names[k]].numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- train_step mechanics
@pytest.fixture(scope="module")
def adam_step():
    lt.manual_seed(0)
    model = MLP()
    step = lt.train_step(model, mlp_loss, lt.optim.Adam(model.named_parameters(), lr=0.01), clip_grad_norm=1.0)
    rng = np.random.default_rng(1)
    data = [(rand(rng, 10, 6), rng.integers(0, 3, 10).astype(np.int32)) for _ in range(6)]
    return model, step, data


def test_train_step_state_dict_save_and_load(adam_step, tmp_path):
    model, step, data = adam_step
    keys = list(step.state_dict())
    assert keys[:4] == ["model.fc1.weight", "model.fc1.bias", "model.fc2.weight", "model.fc2.bias"]
    assert {"optimizer.lr", "optimizer.step", "optimizer.0.exp_avg", "optimizer.3.exp_avg_sq"} <= set(keys)
    for x, y in data[:3]:
        step(x, y)
    assert float(step.state_dict()["optimizer.step"]) == 3
    path = tmp_path / "ckpt.npz"
    step.save(path)
    after = [step(x, y) for x, y in data[3:]]
    weights = {k: v.copy() for k, v in model.state_dict().items()}
    step.load(path)
    assert float(step.optimizer.state_dict()["step"]) == 3
    assert [step(x, y) for x, y in data[3:]] == after  # bit for bit
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, weights[k])
    with pytest.raises(KeyError):
        step.load_state_dict({"model.fc1.weight": weights["fc1.weight"]})


def test_train_step_learning_rate_and_inference_share_state(adam_step):
    model, step, data = adam_step

    @lt.compile
    def predict(x: lt.Tensor[10, 6]):
        return model(x)

    x, y = data[0]
    before = predict(x)
    step.optimizer.lr = 0.0  # a captured array: no recompilation
    step(x, y)
    np.testing.assert_array_equal(predict(x), before)
    step.optimizer.lr = 0.01
    step(x, y)
    assert not np.array_equal(predict(x), before)  # the predictor sees the updated weights
    assert step.last_peak_bytes > 0
    assert "value_and_grad" in step.ir and "cap_fc1_weight" in step.cpp_source


def test_train_step_checks_its_arguments():
    lt.manual_seed(0)
    model, other = MLP(), MLP()
    with pytest.raises(ValueError, match="not parameters of the model"):
        lt.train_step(model, mlp_loss, lt.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="no annotation"):
        lt.train_step(model, lambda m, x: lt.sum(m(x)), lt.optim.SGD(model.parameters(), lr=0.1)).ir  # noqa: B018
    with pytest.raises(TypeError, match="Parameter"):
        lt.optim.SGD([np.zeros(3)], lr=0.1)


def test_train_step_with_aux_and_frozen_parameters():
    lt.manual_seed(0)
    model = MLP()
    frozen = model.fc1.weight.data.copy()
    opt = lt.optim.SGD([model.fc1.bias, model.fc2.weight, model.fc2.bias], lr=0.5)

    def loss_fn(model, x: lt.Tensor[10, 6], y: lt.Tensor[10, "int32"]):
        logits = model(x)
        return lt.cross_entropy(logits, y), lt.max(logits)

    step = lt.train_step(model, loss_fn, opt, has_aux=True)
    rng = np.random.default_rng(0)
    loss, top = step(rand(rng, 10, 6), rng.integers(0, 3, 10).astype(np.int32))
    assert isinstance(loss, float) and top.shape == ()
    np.testing.assert_array_equal(model.fc1.weight.data, frozen)  # not in the optimizer: not updated


def test_cross_entropy_of_one_row_with_a_python_int_or_staged_int_target():
    """A 0-d target is a literal (Python int) or a staged int held by value:
    both reach the nll kernels, forward and backward, as a 1-element buffer."""

    @lt.compile
    def f(x: lt.Tensor[5], k: lt.Int):
        literal = lt.value_and_grad(lambda v: lt.cross_entropy(v, 2))(x)
        staged = lt.value_and_grad(lambda v: lt.cross_entropy(v * 2.0, k, reduction="sum"))(x)
        return literal, staged

    x = np.array([0.5, -1.0, 2.0, 0.1, -0.3], np.float32)
    (v1, g1), (v2, g2) = f(x, 4)
    for value, grad, scale, target in ((v1, g1, 1.0, 2), (v2, g2, 2.0, 4)):
        t = torch.tensor(x.astype(np.float64), requires_grad=True)
        ref = torch.nn.functional.cross_entropy(t * scale, torch.tensor(target))
        ref.backward()
        np.testing.assert_allclose(value, ref.item(), rtol=1e-5)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- transposed weight copies
def test_weights_read_as_x_w_transposed_get_one_transposed_copy_per_step():
    """passes/transpose_weights: a Linear applied at 3 steps of 8 rows reads
    one [in, out] copy of its weight (no transposed-operand gemm); one applied
    once to 8 rows keeps the flag.  The trained weights still match PyTorch."""
    lt.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.Linear(5, 5)
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            h = x
            for _ in range(3):
                h = lt.tanh(self.cell(h))
            return self.head(h)

    def loss_fn(model, x: lt.Tensor[8, 5], y: lt.Tensor[8, "int32"]):
        return lt.cross_entropy(model(x), y)

    model = Net()
    twin = torch.nn.ModuleDict({"cell": torch.nn.Linear(5, 5), "head": torch.nn.Linear(5, 3)}).double()
    twin.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in model.state_dict().items()})
    step = lt.train_step(model, loss_fn, lt.optim.SGD(model.parameters(), lr=0.5))
    rng = np.random.default_rng(2)
    topt = torch.optim.SGD(twin.parameters(), lr=0.5)
    for _ in range(3):
        x, y = rand(rng, 8, 5), rng.integers(0, 3, 8).astype(np.int32)
        loss = step(x, y)
        topt.zero_grad()
        h = torch.from_numpy(x.astype(np.float64))
        for _ in range(3):
            h = torch.tanh(twin["cell"](h))
        tloss = F.cross_entropy(twin["head"](h), torch.from_numpy(y).long())
        tloss.backward()
        topt.step()
        assert loss == pytest.approx(tloss.item(), rel=1e-5)
    for k, v in model.state_dict().items():
        close(v, twin.state_dict()[k].numpy(), rtol=1e-5, atol=1e-6)
    src = step.cpp_source
    cell_w, head_w = (re.search(rf"float\* (cap_{n}_weight_\d+) =", src).group(1) for n in ("cell", "head"))
    assert f"{cell_w}_t = arena.alloc<float>(25)" in src
    assert not re.search(rf"lt::gemm\(false, true, [^;]*{cell_w}\b", src)
    assert len(re.findall(rf"lt::gemm\(false, false, 8, 5, 5, \w+, {cell_w}_t,", src)) == 3
    assert re.search(rf"lt::gemm\(false, true, 8, 3, 5, \w+, {head_w},", src)


def test_add_gradients_are_views_not_copies_and_an_lstm_still_trains_like_pytorch():
    """passes/copy_alias: add's backward gives both operands the cotangent;
    the LSTM's gate products read it in place (views), not copies of it."""
    lt.manual_seed(4)
    B, I, H, T = 3, 4, 5, 3
    cell = nn.LSTMCell(I, H)
    tcell = torch.nn.LSTMCell(I, H).double()
    tcell.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in cell.state_dict().items()})

    def loss_fn(model, xs: lt.Tensor[3, 3, 4]):  # [T, B, I]
        h = c = lt.zeros(B, H)
        total = 0.0
        for t in range(T):
            h, c = model(xs[t], (h, c))
            total = total + lt.sum(lt.tanh(h) * c)
        return total

    step = lt.train_step(cell, loss_fn, lt.optim.SGD(cell.parameters(), lr=0.3))
    topt = torch.optim.SGD(tcell.parameters(), lr=0.3)
    rng = np.random.default_rng(4)
    for _ in range(3):
        xs = rand(rng, T, B, I)
        loss = step(xs)
        topt.zero_grad()
        h = c = torch.zeros(B, H, dtype=torch.float64)
        total = 0.0
        for x in torch.from_numpy(xs.astype(np.float64)):
            h, c = tcell(x, (h, c))
            total = total + (torch.tanh(h) * c).sum()
        total.backward()
        topt.step()
        assert loss == pytest.approx(total.item(), rel=1e-5)
    for k, v in cell.state_dict().items():
        close(v, tcell.state_dict()[k].numpy(), rtol=1e-5, atol=1e-6)
    views = re.findall(r"float\* d_mm\d+_\d+ = d_add\d+_\d+ \+ 0;", step.cpp_source)
    assert len(views) >= 2 * (T - 1), views  # both products of each step after the first read d_gates in place
