"""Higher-order differentiation: forward mode, grad of grad, jvp of grad,
Jacobians and Hessians, through every op and every control-flow construct.

Second order over the op table (test_ops.CASES): for every differentiable
row, with loss = sum(fn(*x) * w), fixed random directions v and tangents t:
  * jvp(fn, x, t)                         vs torch.func.jvp (float64) and
                                          central differences of numpy float64
  * grad(sum(grad(loss)(x) * v))          reverse over reverse (recomputation)
  * jvp(grad(loss), x, v)                 forward over reverse
both Hessian-vector products against PyTorch float64 double backward and
central differences of PyTorch's float64 gradient.  Rows are compiled in
groups (one g++ run per group), once per session.
"""
from __future__ import annotations

import zlib
from functools import cache

import numpy as np
import pytest

import lantern_stage as lt
from test_ops import CASES, NumpyRef, TorchRef, _f64, case_data

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-3, 1e-4
EPS = 1e-6
GROUP = 24


def _close(actual, desired, what):
    desired = np.asarray(desired, np.float64)
    scale = 1.0 + (float(np.max(np.abs(desired))) if desired.size else 0.0)
    np.testing.assert_allclose(actual, desired, rtol=RTOL, atol=ATOL * scale, err_msg=what)


def _np(t):
    """A torch result as numpy (torch's double backward may give a ZeroTensor)."""
    return t.detach().numpy(force=True)


def _differentiable(case):
    _, weights, _ = case_data(case)
    return weights is not None


SECOND = [c for c in CASES if _differentiable(c)]
GROUPS = [SECOND[i:i + GROUP] for i in range(0, len(SECOND), GROUP)]
GROUP_OF = {c.name: g for g, grp in enumerate(GROUPS) for c in grp}
# At a tie (or a kink) derivatives are conventions (ties share), not limits:
# no finite differences there.
_KINKS = ("ties", "tied_max")


def _floats(case):
    return [i for i, a in enumerate(case.args) if a.is_float]


@cache
def directions(case):
    """(v, t): a direction per float input for the Hessian, a tangent per float input."""
    inputs, _, _ = case_data(case)
    rng = np.random.default_rng(zlib.crc32(case.name.encode()) + 7)
    fl = _floats(case)
    v = [rng.standard_normal(inputs[i].shape).astype(np.float32) for i in fl]
    t = [rng.standard_normal(inputs[i].shape).astype(np.float32) for i in fl]
    return v, t


def _stage_second(case, reps, w, vs, ts):
    fl = _floats(case)
    nums = tuple(range(len(fl)))

    def fn(*xs):
        args = list(reps)
        for i, x in zip(fl, xs):
            args[i] = x
        return case.fn(lt, *args)

    def loss(*xs):
        return lt.sum(fn(*xs) * w)

    def pairing(*xs):
        total = 0.0
        for g, v in zip(lt.grad(loss, argnums=nums)(*xs), vs):
            total = total + lt.sum(g * v)
        return total

    xs = tuple(reps[i] for i in fl)
    _, tangent = lt.jvp(fn, xs, tuple(ts))
    _, hv_fwd = lt.jvp(lambda *x: lt.grad(loss, argnums=nums)(*x), xs, tuple(vs))
    hv_rev = lt.grad(pairing, argnums=nums)(*xs)
    return tangent, tuple(hv_fwd), tuple(hv_rev)


def _compile(cases, name):
    params, layout = [], []
    for ci, case in enumerate(cases):
        inputs, weights, _ = case_data(case)
        v, t = directions(case)
        names = [f"c{ci}_{j}" for j in range(len(inputs))]
        params += [(n, a.type) for n, a in zip(names, case.args)]
        extra = [f"c{ci}_w"] + [f"c{ci}_v{k}" for k in range(len(v))] + [f"c{ci}_t{k}" for k in range(len(t))]
        params += [(extra[0], lt.Tensor[weights.shape])]
        params += [(n, lt.Tensor[x.shape]) for n, x in zip(extra[1:], v + t)]
        layout.append((case, names, extra, len(v)))

    def body(**r):
        out = []
        for case, names, extra, nv in layout:
            vs = [r[n] for n in extra[1:1 + nv]]
            ts = [r[n] for n in extra[1 + nv:]]
            out.append(_stage_second(case, [r[n] for n in names], r[extra[0]], vs, ts))
        return tuple(out)

    arglist = ", ".join(n for n, _ in params)
    ns = {"body": body}
    exec(f"def {name}({arglist}):\n    return body({', '.join(f'{n}={n}' for n, _ in params)})\n", ns)
    ns[name].__annotations__ = dict(params)
    return lt.compile(ns[name])


def _args(cases):
    out = []
    for case in cases:
        inputs, weights, _ = case_data(case)
        v, t = directions(case)
        out += list(inputs) + [weights] + v + t
    return out


@cache
def group_results(g):
    cases = GROUPS[g]
    try:
        outs = _compile(cases, f"second_group_{g}")(*_args(cases))
        return {c.name: o for c, o in zip(cases, outs)}
    except Exception:
        if len(cases) == 1:
            raise
    res = {}
    for k, case in enumerate(cases):
        try:
            res[case.name] = _compile([case], f"second_group_{g}_row_{k}")(*_args([case]))[0]
        except Exception as e:  # reported by that row
            res[case.name] = e
    return res


def _torch_inputs(case, inputs):
    return [torch.tensor(_f64(x), requires_grad=True) if a.is_float else torch.from_numpy(x)
            for a, x in zip(case.args, inputs)]


def _torch_fn(case, inputs):
    fl = _floats(case)
    base = _torch_inputs(case, inputs)

    def fn(*xs):
        args = list(base)
        for i, x in zip(fl, xs):
            args[i] = x
        return case.fn(TorchRef, *args)

    return fn, [base[i] for i in fl]


def torch_gradient(case, inputs, weights):
    fn, xs = _torch_fn(case, inputs)
    loss = torch.sum(fn(*xs) * torch.tensor(weights, dtype=torch.float64))
    if not loss.requires_grad:
        return [torch.zeros_like(x) for x in xs], xs, loss
    gs = torch.autograd.grad(loss, xs, create_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs)], xs, loss


def torch_hvp(case, inputs, weights, vs):
    gs, xs, _ = torch_gradient(case, inputs, weights)
    s = sum(torch.sum(g * torch.tensor(v, dtype=torch.float64)) for g, v in zip(gs, vs))
    if not s.requires_grad:
        return [np.zeros(x.shape) for x in xs]
    hs = torch.autograd.grad(s, xs, allow_unused=True)
    return [np.zeros(x.shape) if h is None else _np(h) for x, h in zip(xs, hs)]


def fd_hvp(case, inputs, weights, vs):
    """Central differences of PyTorch's float64 gradient along v."""
    fl = _floats(case)

    def grads_at(sign):
        moved = list(inputs)
        for i, v in zip(fl, vs):
            moved[i] = _f64(inputs[i]) + sign * 1e-5 * v.astype(np.float64)
        gs, _, _ = torch_gradient(case, moved, weights)
        return [_np(g) for g in gs]

    up, down = grads_at(1.0), grads_at(-1.0)
    return [(u - d) / 2e-5 for u, d in zip(up, down)]


def fd_jvp(case, inputs, ts):
    fl = _floats(case)

    def at(sign):
        moved = [_f64(x) for x in inputs]
        for i, t in zip(fl, ts):
            moved[i] = moved[i] + sign * EPS * t.astype(np.float64)
        return np.asarray(case.fn(NumpyRef, *moved), np.float64)

    return (at(1.0) - at(-1.0)) / (2 * EPS)


@pytest.fixture(scope="session")
def second_results():
    def get(case):
        r = group_results(GROUP_OF[case.name])[case.name]
        if isinstance(r, Exception):
            raise r
        return r

    yield get
    group_results.cache_clear()


@pytest.mark.parametrize("case", SECOND, ids=[c.name for c in SECOND])
def test_second_order(case, second_results):
    inputs, weights, ref = case_data(case)
    vs, ts = directions(case)
    tangent, hv_fwd, hv_rev = second_results(case)
    kink = any(a.kind in _KINKS for a in case.args)

    assert tangent.shape == ref.shape and tangent.dtype == np.float32
    assert len(hv_fwd) == len(hv_rev) == len(vs)
    # forward mode: the tangent against the reverse-mode pairing, then references
    gs, _, _ = torch_gradient(case, inputs, weights) if case.torch else (None, None, None)
    if gs is not None:
        pairing = sum(float(np.sum(_np(g) * t.astype(np.float64))) for g, t in zip(gs, ts))
        _close(np.sum(tangent.astype(np.float64) * weights), pairing, "jvp . w vs <torch grad, t>")
    if not kink:
        _close(tangent, fd_jvp(case, inputs, ts), "jvp vs central differences (numpy float64)")
    if case.torch:
        fn, xs = _torch_fn(case, inputs)
        try:
            _, t_ref = torch.func.jvp(fn, tuple(x.detach() for x in xs),
                                      tuple(torch.tensor(t, dtype=torch.float64) for t in ts))
        except (RuntimeError, NotImplementedError):  # an op without forward AD in torch
            t_ref = None
        if t_ref is not None and not kink:
            _close(tangent, _np(t_ref), "jvp vs torch.func.jvp")

    # second order: reverse over reverse and forward over reverse
    if case.torch:
        want = torch_hvp(case, inputs, weights, vs)
        for k, (a, b, h) in enumerate(zip(hv_rev, hv_fwd, want)):
            assert a.shape == h.shape and a.dtype == np.float32
            _close(a, h, f"grad(sum(grad(loss) * v)) of input {k} vs torch double backward")
            _close(b, h, f"jvp(grad(loss)) of input {k} vs torch double backward")
        if not kink:
            for k, (a, h) in enumerate(zip(hv_rev, fd_hvp(case, inputs, weights, vs))):
                _close(a, h, f"Hessian-vector product of input {k} vs central differences")
    else:
        for k, (a, b) in enumerate(zip(hv_rev, hv_fwd)):
            _close(a, b, f"reverse over reverse vs forward over reverse, input {k}")


# ---------------------------------------------------------------- control flow
def _random_tree(rng, leaves):
    """A random binary tree as (lch, rch) int32 arrays, node 0 the root."""
    lch, rch = [], []

    def build(n):
        i = len(lch)
        lch.append(-1)
        rch.append(-1)
        if n > 1:
            k = int(rng.integers(1, n))
            lch[i] = build(k)
            rch[i] = build(n - k)
        return i

    build(leaves)
    return np.array(lch, np.int32), np.array(rch, np.int32)


def _cf_loss_lt(x, w, n, lch, rch):
    """A loss over every construct: fori_loop, cond, while_loop (data-dependent
    trip count) and @recursive over a tree."""
    h = lt.fori_loop(0, n, lambda i, h: lt.tanh(w @ h + 0.5 * x), x)
    h = lt.cond(lt.sum(h) > 0.0, lambda: h * h, lambda: lt.sigmoid(h) * 2.0)
    _, h = lt.while_loop(lambda c: lt.sum(c[1] * c[1]) > 0.5, lambda c: (c[0] + 1, c[1] * 0.7), (0, h + 1.0))

    @lt.recursive
    def node(i):
        def leaf():
            return lt.tanh(h * x)

        def inner():
            return lt.tanh(w @ (node(lch[i]) + node(rch[i])))

        return lt.cond(lch[i] < 0, leaf, inner)

    return lt.sum(node(0) * h)


def _cf_loss_torch(x, w, n, lch, rch):
    h = x
    for _ in range(n):
        h = torch.tanh(w @ h + 0.5 * x)
    h = h * h if torch.sum(h) > 0 else torch.sigmoid(h) * 2.0
    h = h + 1.0
    while torch.sum(h * h) > 0.5:
        h = h * 0.7

    def node(i):
        if lch[i] < 0:
            return torch.tanh(h * x)
        return torch.tanh(w @ (node(lch[i]) + node(rch[i])))

    return torch.sum(node(0) * h)


CF_TREES = 4


def _tgrad(out, inputs, **kw):
    """torch.autograd.grad with zeros for inputs the output does not use."""
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(out, inputs, allow_unused=True, **kw)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gs)]


@cache
def control_flow_data():
    rng = np.random.default_rng(11)
    x = rng.standard_normal(5).astype(np.float32) * 0.8
    w = (rng.standard_normal((5, 5)) * 0.4).astype(np.float32)
    v = rng.standard_normal(5).astype(np.float32)
    vw = rng.standard_normal((5, 5)).astype(np.float32)
    trees = [_random_tree(rng, int(rng.integers(1, 7))) for _ in range(CF_TREES)]
    return x, w, v, vw, trees


@cache
def control_flow_program():
    def f(x: lt.Tensor[5], w: lt.Tensor[5, 5], v: lt.Tensor[5], vw: lt.Tensor[5, 5], n: lt.Int,
          lch: lt.IntArray, rch: lt.IntArray):
        def loss(x, w):
            return _cf_loss_lt(x, w, n, lch, rch)

        value, t = lt.jvp(loss, (x, w), (v, vw))  # forward through everything
        gx, gw = lt.grad(loss, argnums=(0, 1))(x, w)
        # reverse over reverse, w.r.t. both arguments
        hx, hw = lt.grad(lambda x, w: lt.sum(lt.grad(loss)(x, w) * v), argnums=(0, 1))(x, w)
        # forward over reverse: H (v, vw)
        _, (fx, fw) = lt.jvp(lambda x, w: lt.grad(loss, argnums=(0, 1))(x, w), (x, w), (v, vw))
        # grad of a function of the gradient w.r.t. a closed-over value
        cw = lt.grad(lambda w: lt.sum(lt.grad(lambda x: loss(x, w))(x) ** 2))(w)
        return value, t, gx, gw, hx, hw, fx, fw, cw

    return lt.compile(f)


@pytest.mark.parametrize("tree", range(CF_TREES))
@pytest.mark.parametrize("n", [0, 3])
def test_control_flow_second_order_against_torch(tree, n):
    x, w, v, vw, trees = control_flow_data()
    lch, rch = trees[tree]
    value, t, gx, gw, hx, hw, fx, fw, cw = control_flow_program()(x, w, v, vw, np.int32(n), lch, rch)

    X = torch.tensor(_f64(x), requires_grad=True)
    W = torch.tensor(_f64(w), requires_grad=True)
    V, VW = torch.tensor(_f64(v)), torch.tensor(_f64(vw))
    lc, rc = lch.tolist(), rch.tolist()
    loss = _cf_loss_torch(X, W, n, lc, rc)
    _close(value, loss.item(), "value")
    _, t_ref = torch.func.jvp(lambda a, b: _cf_loss_torch(a, b, n, lc, rc), (X.detach(), W.detach()), (V, VW))
    _close(t, t_ref.item(), "jvp through fori_loop, cond, while_loop and @recursive")
    g_x, g_w = _tgrad(loss, (X, W), create_graph=True)
    _close(gx, g_x.detach().numpy(), "grad x")
    _close(gw, g_w.detach().numpy(), "grad w")
    h_x, h_w = _tgrad(torch.sum(g_x * V), (X, W), retain_graph=True)
    _close(hx, h_x.detach().numpy(), "grad of grad, x")
    _close(hw, h_w.detach().numpy(), "grad of grad, w")
    f_x, f_w = _tgrad(torch.sum(g_x * V) + torch.sum(g_w * VW), (X, W), retain_graph=True)
    _close(fx, f_x.detach().numpy(), "jvp of grad, x")
    _close(fw, f_w.detach().numpy(), "jvp of grad, w")
    c_w, = _tgrad(torch.sum(g_x ** 2), (W,))
    _close(cw, c_w.detach().numpy(), "grad w.r.t. a closed-over value of a function of an inner grad")


# ---------------------------------------------------------------- Jacobians, Hessians, vjp
def _small(x):
    return lt.tanh(x) * lt.sum(x * x) + lt.exp(x[::-1] * 0.3)


def _small_torch(x):
    return torch.tanh(x) * torch.sum(x * x) + torch.exp(torch.flip(x, (0,)) * 0.3)


def _scalar(x):
    return lt.sum(lt.sigmoid(x) * x ** 3) + lt.max(x) * x[0]


def _scalar_torch(x):
    return torch.sum(torch.sigmoid(x) * x ** 3) + torch.max(x) * x[0]


def _two(x, y):
    """[4] from x [4] and y [3] (the same formula in lt and torch)."""
    return x * (y * y).sum() + (x[::-1] * y[0]).sin()


def _two_scalar(x, y):
    return (x.tanh() * (y * y).sum()).sum() + (y * x[1:]).sum() * x[0]


def _two_torch(x, y):
    return x * (y * y).sum() + (torch.flip(x, (0,)) * y[0]).sin()


@cache
def jacobian_program():
    def f(x: lt.Tensor[4], ct: lt.Tensor[4], m: lt.Tensor[2, 3], y: lt.Tensor[3]):
        jf = lt.jacfwd(_small)(x)
        jr = lt.jacrev(_small)(x)
        h = lt.hessian(_scalar)(x)
        out, vjp_fn = lt.vjp(_small, x)
        (vj,) = vjp_fn(ct)
        hm = lt.hessian(lambda m: lt.sum(lt.tanh(m @ m.T)))(m)  # a 2-D argument
        # tuples of argnums: a tuple of Jacobians (a nesting of them for hessian), as JAX's
        jf2 = lt.jacfwd(_two, argnums=(0, 1))(x, y)
        jr2 = lt.jacrev(_two, argnums=(1, 0))(x, y)
        gr2 = lt.jacrev(_two_scalar, argnums=(0, 1))(x, y)
        h2 = lt.hessian(_two_scalar, argnums=(0, 1))(x, y)
        return jf, jr, h, out, vj, hm, jf2, jr2, gr2, h2

    return lt.compile(f)


def test_jacobians_hessian_vjp_against_torch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(4).astype(np.float32)
    ct = rng.standard_normal(4).astype(np.float32)
    m = rng.standard_normal((2, 3)).astype(np.float32)
    y3 = rng.standard_normal(3).astype(np.float32)
    jf, jr, h, out, vj, hm, jf2, jr2, gr2, h2 = jacobian_program()(x, ct, m, y3)
    X = torch.tensor(_f64(x))
    J = torch.autograd.functional.jacobian(_small_torch, X).numpy()
    _close(jf, J, "jacfwd vs torch.autograd.functional.jacobian")
    _close(jr, J, "jacrev vs torch.autograd.functional.jacobian")
    _close(h, torch.autograd.functional.hessian(_scalar_torch, X).numpy(), "hessian vs torch")
    y, vjp_ref = torch.autograd.functional.vjp(_small_torch, X, torch.tensor(_f64(ct)))
    _close(out, y.numpy(), "vjp primal output")
    _close(vj, vjp_ref.numpy(), "vjp vs torch.autograd.functional.vjp")
    H = torch.autograd.functional.hessian(lambda a: torch.sum(torch.tanh(a @ a.T)), torch.tensor(_f64(m)))
    assert hm.shape == (2, 3, 2, 3)
    _close(hm, H.numpy(), "hessian of a 2-D argument vs torch")
    X, Y = torch.tensor(_f64(x)), torch.tensor(_f64(y3))
    for got, ref, what in [
        (jf2, torch.func.jacfwd(_two_torch, argnums=(0, 1))(X, Y), "jacfwd argnums=(0, 1)"),
        (jr2, torch.func.jacrev(_two_torch, argnums=(1, 0))(X, Y), "jacrev argnums=(1, 0)"),
        (gr2, torch.func.jacrev(_two_scalar, argnums=(0, 1))(X, Y), "jacrev of a scalar, argnums=(0, 1)"),
        (h2[0], torch.func.hessian(_two_scalar, argnums=(0, 1))(X, Y)[0], "hessian argnums=(0, 1), row 0"),
        (h2[1], torch.func.hessian(_two_scalar, argnums=(0, 1))(X, Y)[1], "hessian argnums=(0, 1), row 1"),
    ]:
        assert isinstance(got, tuple) and len(got) == 2, what
        for k, (g, r) in enumerate(zip(got, ref)):
            assert g.shape == tuple(r.shape), (what, k, g.shape, r.shape)
            _close(g, r.numpy(), f"{what} [{k}] vs torch.func")


# ---------------------------------------------------------------- train_step
def test_train_step_with_an_input_gradient_penalty_matches_torch():
    """A loss that calls lt.grad on its input (a gradient penalty, as PINNs and
    WGAN-GP do), differentiated w.r.t. the weights inside one train_step call."""
    rng = np.random.default_rng(5)
    net = lt.nn.Sequential(lt.nn.Linear(3, 8), lt.nn.Tanh(), lt.nn.Linear(8, 1))
    init = {k: np.array(v) for k, v in net.state_dict().items()}

    def loss_fn(model, x: lt.Tensor[6, 3], y: lt.Tensor[6, 1]):
        u = lambda z: lt.sum(model(z))  # noqa: E731
        gx = lt.grad(u)(x)
        return lt.mean((model(x) - y) ** 2) + 0.1 * lt.mean(gx * gx)

    step = lt.train_step(net, loss_fn, lt.optim.SGD(net.parameters(), lr=0.1))
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    tnet.load_state_dict({k: torch.tensor(_f64(v)) for k, v in init.items()})
    opt = torch.optim.SGD(tnet.parameters(), lr=0.1)
    for _ in range(3):
        x = rng.standard_normal((6, 3)).astype(np.float32)
        y = rng.standard_normal((6, 1)).astype(np.float32)
        got = step(x, y)
        X = torch.tensor(_f64(x), requires_grad=True)
        out = tnet(X)
        gx, = torch.autograd.grad(out.sum(), X, create_graph=True)
        loss = torch.mean((out - torch.tensor(_f64(y))) ** 2) + 0.1 * torch.mean(gx * gx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _close(got, loss.item(), "loss")
    for k, v in net.state_dict().items():
        _close(np.array(v), tnet.state_dict()[k].numpy(), f"weight {k} after 3 steps")


# ---------------------------------------------------------------- TreeLSTM Hessian-vector product
TREES = 20


def _sst_trees():
    from benchmarks.data import load_trees

    return list(load_trees(None))[:TREES]


@cache
def treelstm_setup():
    import importlib

    from benchmarks.models import config_and_data
    from benchmarks.weights import init_weights

    cfg, _, _ = config_and_data("treelstm")
    weights = init_weights(cfg)
    mod = importlib.import_module("benchmarks.models.treelstm")
    model = mod.TreeLSTM(cfg.embedding, cfg.hidden, cfg.classes)
    model.load_state_dict(weights)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    rng = np.random.default_rng(9)
    vs = [rng.standard_normal(np.shape(p)).astype(np.float32) * 0.1 for p in params]
    from lantern_stage.nn.module import bind

    def hvp(labels: lt.IntArray, words: lt.IntArray, lch: lt.IntArray, rch: lt.IntArray):
        def loss(values):
            return bind(model, {id(p): v for p, v in zip(params, values)})(labels, words, lch, rch)

        _, hv = lt.jvp(lambda *ps: tuple(lt.grad(loss)(list(ps))), tuple(params), tuple(vs))
        return hv

    return cfg, weights, names, vs, lt.compile(hvp)


def test_treelstm_hessian_vector_product_matches_torch_double_backward():
    from benchmarks.frameworks.torch_models import from_weights, prepare_tree

    cfg, weights, names, vs, hvp = treelstm_setup()
    net = from_weights("treelstm", weights, cfg).double()
    tparams = dict(net.named_parameters())
    for tree in _sst_trees():
        got = hvp(tree.labels, tree.words, tree.lch, tree.rch)
        loss = net(prepare_tree(tree))
        ps = [tparams[n] for n in names]
        gs = torch.autograd.grad(loss, ps, create_graph=True)
        s = sum(torch.sum(g * torch.tensor(_f64(v))) for g, v in zip(gs, vs))
        want = torch.autograd.grad(s, ps)
        for n, a, b in zip(names, got, want):
            _close(a, b.numpy(), f"H v of {n} on a tree of {len(tree.lch)} nodes")


# ---------------------------------------------------------------- errors
def test_aux_of_an_inner_grad_cannot_carry_an_outer_gradient():
    def f(x: lt.Tensor[3]):
        def outer(x):
            (_, aux), g = lt.value_and_grad(lambda y: (lt.sum(y * x), x * 2.0), has_aux=True)(x)
            return lt.sum(aux * g)

        return lt.grad(outer)(x)

    with pytest.raises(lt.StagingError, match="aux output is not supported"):
        lt.compile(f)(np.ones(3, np.float32))


def test_value_and_grad_into_says_which_buffer_is_wrong_and_what_it_expected():
    """Staging only: a buffer that is no tensor in memory (a literal, a staged
    int) is named as such, not reported as a type mismatch it is not."""
    from lantern_stage.autodiff import value_and_grad_into

    def staged(buffers):
        def f(w: lt.Tensor[()], v: lt.Tensor[3], i: lt.Int):
            def loss(ps):
                return lt.sum(ps[0] * ps[1])

            return value_and_grad_into(loss, [w, v], buffers(w, v, i))

        with pytest.raises(lt.StagingError) as info:
            lt.compile(f).ir
        return str(info.value)

    message = staged(lambda w, v, i: [0.0, v * 1.0])
    assert "buffer 0 is the literal 0.0, not a tensor in memory" in message
    assert "expected a staged float32[]" in message
    assert "buffer 0 is a staged int32[] held by value" in staged(lambda w, v, i: [i, v * 1.0])
    assert "buffer 1 is float32[2]; expected float32[3], its parameter's type" in staged(
        lambda w, v, i: [w * 1.0, v[:2] * 1.0])


def test_jvp_rejects_bad_tangents_and_int_primals():
    def shape_mismatch(x: lt.Tensor[3]):
        return lt.jvp(lt.tanh, (x,), (np.ones(4, np.float32),))[1]

    with pytest.raises(lt.StagingError, match="jvp: tangent 0"):
        lt.compile(shape_mismatch)(np.ones(3, np.float32))

    def int_primal(i: lt.Tensor[3, "int32"]):
        return lt.jvp(lambda a: a * 2, (i,), (np.ones(3, np.float32),))[1]

    with pytest.raises(lt.StagingError, match="only float32 tensors have tangents"):
        lt.compile(int_primal)(np.ones(3, np.int32))


def test_jacobian_argnums_errors():
    def check(jac, argnums, match):
        def f(x: lt.Tensor[3], i: lt.Tensor[3, "int32"]):
            return jac(lambda a, b, c: a * b, argnums=argnums)(x, x, i)

        with pytest.raises(lt.StagingError, match=match):
            lt.compile(f)(np.ones(3, np.float32), np.ones(3, np.int32))

    for jac in (lt.jacfwd, lt.jacrev):
        check(jac, (0, 3), "argnums 3 out of range for 3 arguments")
        check(jac, (0, -3), "names argument 0 twice")
        check(jac, (), "argnums must be an int or a non-empty tuple of ints")
        check(jac, "0", "argnums must be an int or a non-empty tuple of ints")
        check(jac, (0, 2), "can only differentiate float32 tensors, argument 2 is int32")
