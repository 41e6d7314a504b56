"""Issue 12's modules against their PyTorch twins, PyTorch's weights loaded
into lantern_stage with load_state_dict: GRUCell, LayerNorm,
MultiheadAttention (causal and padding masks, bool and float), and
TransformerEncoderLayer (pre- and post-norm, relu and gelu).

Each check: the forward value and the gradients of loss = sum(out * w) with
respect to every parameter and every float input, against PyTorch in
float64.  lantern computes in float32: values and gradients agree to
rtol 1e-4 / atol 1e-5 (inputs and weights are O(1)).  All modules of a test
are staged into one compiled function (one g++ run)."""
from __future__ import annotations

import numpy as np
import pytest

import lantern_stage as lt
from lantern_stage import nn

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-4, 1e-5


def close(got, want, what):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=RTOL, atol=ATOL,
                               err_msg=what)


def loaded(ours: nn.Module, twin: "torch.nn.Module", seed: int) -> nn.Module:
    """Randomise the twin's parameters (so LayerNorm's ones and zeros are not
    special), then load its state_dict (tensor.numpy() arrays) into ours."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
    ours.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    twin.double()
    return ours


class Check:
    """One module call: `call(module, *inputs) -> tensor`, the same for both frameworks."""

    def __init__(self, name, ours, twin, call, inputs, float_inputs=None):
        self.name, self.twin, self.call, self.inputs = name, twin, call, inputs
        self.ours = loaded(ours, twin, seed=len(name))
        self.float_inputs = [i for i, x in enumerate(inputs) if x.dtype == np.float32] \
            if float_inputs is None else float_inputs
        rng = np.random.default_rng(len(name))
        with torch.no_grad():
            out = self.call(twin, *[torch.from_numpy(x) for x in self._torch_inputs()])
        self.weights = rng.standard_normal(tuple(out.shape)).astype(np.float32)

    def _torch_inputs(self):
        return [x.astype(np.float64) if i in self.float_inputs else x for i, x in enumerate(self.inputs)]

    def staged(self, reps):
        params = [p for _, p in self.ours.named_parameters()]

        def objective(values, floats):
            args = list(reps)
            for i, r in zip(self.float_inputs, floats):
                args[i] = r
            model = nn.bind(self.ours, {id(p): v for p, v in zip(params, values)})
            out = self.call(model, *args)
            return lt.sum(out * self.weights), out

        (loss, out), (gp, gx) = lt.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
            params, [reps[i] for i in self.float_inputs])
        return out, loss, list(gp), list(gx)

    def verify(self, result):
        out, loss, gp, gx = result
        inputs = [torch.tensor(x, requires_grad=i in self.float_inputs) if i in self.float_inputs
                  else torch.from_numpy(x) for i, x in enumerate(self._torch_inputs())]
        self.twin.zero_grad()
        t_out = self.call(self.twin, *inputs)
        t_loss = torch.sum(t_out * torch.from_numpy(self.weights.astype(np.float64)))
        t_loss.backward()
        close(out, t_out.detach().numpy(), f"{self.name}: value")
        close(loss, t_loss.item(), f"{self.name}: loss")
        for (n, p), g in zip(self.twin.named_parameters(), gp):
            want = np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy()  # None: not used
            close(g, want, f"{self.name}: gradient of {n}")
        for i, g in zip(self.float_inputs, gx):
            close(g, inputs[i].grad.numpy(), f"{self.name}: gradient of input {i}")


def run_checks(checks, name):
    """Stage every check into one compiled function, run it, verify each."""
    params, layout = [], []
    for ci, c in enumerate(checks):
        names = [f"c{ci}_{j}" for j in range(len(c.inputs))]
        params += [(n, lt.Tensor[x.shape + (() if x.dtype == np.float32 else (str(x.dtype),))])
                   for n, x in zip(names, c.inputs)]
        layout.append(names)

    def body(**reps):
        return tuple(c.staged([reps[n] for n in names]) for c, names in zip(checks, layout))

    arglist = ", ".join(n for n, _ in params)
    namespace = {"body": body}
    exec(f"def {name}({arglist}):\n    return body({', '.join(f'{n}={n}' for n, _ in params)})\n", namespace)
    fn = namespace[name]
    fn.__annotations__ = dict(params)
    results = lt.compile(fn)(*[x for c in checks for x in c.inputs])
    for c, r in zip(checks, results):
        c.verify(r)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def causal(n):
    return np.triu(np.ones((n, n), dtype=bool), 1)  # True: not allowed (the future)


# ---------------------------------------------------------------- names and layouts
def test_state_dict_keys_and_shapes_are_pytorchs():
    pairs = [
        (nn.GRUCell(5, 7), torch.nn.GRUCell(5, 7)),
        (nn.LayerNorm(6), torch.nn.LayerNorm(6)),
        (nn.LayerNorm((2, 3), elementwise_affine=False), torch.nn.LayerNorm((2, 3), elementwise_affine=False)),
        (nn.MultiheadAttention(8, 2, batch_first=True), torch.nn.MultiheadAttention(8, 2, batch_first=True)),
        (nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True),
         torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, norm_first=True)),
        (nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)),
        (nn.BatchNorm2d(3, affine=False), torch.nn.BatchNorm2d(3, affine=False)),
    ]
    for ours, theirs in pairs:
        mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert mine == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}, type(ours).__name__
        missing, unexpected = ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
        assert not missing and not unexpected
        for k, v in theirs.state_dict().items():
            np.testing.assert_array_equal(ours.state_dict()[k], v.numpy())


# ---------------------------------------------------------------- GRUCell, LayerNorm
def test_gru_cell_and_layer_norm_match_pytorch():
    rng = np.random.default_rng(0)
    checks = [
        Check("GRUCell", nn.GRUCell(5, 4), torch.nn.GRUCell(5, 4), lambda m, x, h: m(x, h),
              [rand(rng, 3, 5), rand(rng, 3, 4)]),
        Check("GRUCell two steps from zeros", nn.GRUCell(3, 6), torch.nn.GRUCell(3, 6),
              lambda m, x: m(x[1], m(x[0])), [rand(rng, 2, 4, 3)]),
        Check("LayerNorm", nn.LayerNorm(6), torch.nn.LayerNorm(6), lambda m, x: m(x), [rand(rng, 2, 3, 6, scale=2.0)]),
        Check("LayerNorm two axes, eps", nn.LayerNorm((3, 4), eps=0.1), torch.nn.LayerNorm((3, 4), eps=0.1),
              lambda m, x: m(x), [rand(rng, 2, 3, 4)]),
    ]
    run_checks(checks, "gru_layer_norm")


# ---------------------------------------------------------------- attention
def test_multihead_attention_matches_pytorch():
    rng = np.random.default_rng(1)
    B, L, S, E, H = 2, 5, 4, 8, 2
    padding = np.array([[False, False, False, True, True], [False] * 5])
    float_mask = rand(rng, L, L)

    def mha():
        return nn.MultiheadAttention(E, H, batch_first=True), torch.nn.MultiheadAttention(E, H, batch_first=True)

    checks = [
        Check("self-attention, causal and padding masks", *mha(),
              lambda m, x, am, kpm: m(x, x, x, attn_mask=am, key_padding_mask=kpm)[0],
              [rand(rng, B, L, E), causal(L), padding]),
        Check("self-attention weights averaged over heads", *mha(),
              lambda m, x, am: m(x, x, x, attn_mask=am)[1], [rand(rng, B, L, E), causal(L)]),
        Check("float mask, per-head weights", *mha(),
              lambda m, x, am: m(x, x, x, attn_mask=am, average_attn_weights=False)[1],
              [rand(rng, B, L, E), float_mask]),
        Check("cross-attention, [B*H, L, S] bool mask", *mha(),
              lambda m, q, kv, am: m(q, kv, kv, attn_mask=am)[0],
              [rand(rng, B, L, E), rand(rng, B, S, E), rng.random((B * H, L, S)) < 0.3]),
        Check("no need_weights, sequence first", nn.MultiheadAttention(E, H), torch.nn.MultiheadAttention(E, H),
              lambda m, q, k, v: m(q, k, v, need_weights=False)[0],
              [rand(rng, L, B, E), rand(rng, S, B, E), rand(rng, S, B, E)]),
    ]
    # a [B*H, L, S] mask row that is all True would give NaN in both; keep one allowed key per row
    checks[3].inputs[2][..., 0] = False
    run_checks(checks, "multihead_attention")


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_transformer_encoder_layer_matches_pytorch(norm_first):
    rng = np.random.default_rng(2)
    B, S, E = 2, 5, 8
    checks = []
    for act in ("relu", "gelu"):
        kw = dict(dim_feedforward=16, dropout=0.0, activation=act, batch_first=True, norm_first=norm_first)
        checks.append(Check(f"{act}, causal", nn.TransformerEncoderLayer(E, 2, **kw),
                            torch.nn.TransformerEncoderLayer(E, 2, **kw),
                            lambda m, x, am: m(x, src_mask=am), [rand(rng, B, S, E), causal(S)]))
    kw = dict(dim_feedforward=12, dropout=0.0, batch_first=True, norm_first=norm_first, layer_norm_eps=1e-3)
    checks.append(Check("padding mask, stacked twice", nn.TransformerEncoderLayer(E, 4, **kw),
                        torch.nn.TransformerEncoderLayer(E, 4, **kw),
                        lambda m, x, kpm: m(m(x, src_key_padding_mask=kpm), src_key_padding_mask=kpm),
                        [rand(rng, B, S, E), np.array([[False] * 4 + [True], [False] * 5])]))
    run_checks(checks, f"encoder_layer_{'pre' if norm_first else 'post'}")


def test_attention_errors_name_what_is_wrong():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def f(x: lt.Tensor[2, 5, 8], m: lt.Tensor[4, 4, "bool"]):
        return mha(x, x, x, attn_mask=m)[0]

    with pytest.raises(lt.StagingError, match=r"attn_mask must be \[5, 5\]"):
        lt.compile(f).ir
    with pytest.raises(ValueError, match="not divisible"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="activation"):
        nn.TransformerEncoderLayer(8, 2, activation="tanh")


# ---------------------------------------------------------------- BatchNorm: running statistics, train/eval
def _bn_nets():
    def make(m):
        class Net(m.Module):
            def __init__(self):
                super().__init__()
                self.conv = m.Conv2d(2, 3, 3)
                self.bn2 = m.BatchNorm2d(3, momentum=0.3)
                self.fc = m.Linear(48, 5)
                self.bn1 = m.BatchNorm1d(5, momentum=None)  # a cumulative average
                self.out = m.Linear(5, 3)

        return Net()

    ours, twin = make(nn), make(torch.nn)
    ours.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    return ours, twin


def _bn_logits(fns, net, x):
    h = fns.relu(net.bn2(net.conv(x)))
    return net.out(fns.relu(net.bn1(net.fc(h.reshape(x.shape[0], 48)))))


def test_batch_norm_running_statistics_in_the_train_step_and_eval_mode():
    ours, twin = _bn_nets()

    def loss_fn(model, x: lt.Tensor[6, 2, 6, 6], y: lt.Tensor[6, "int32"]):
        return lt.cross_entropy(_bn_logits(lt, model, x), y)

    step = lt.train_step(ours, loss_fn, lt.optim.SGD(ours.parameters(), lr=0.1))
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)

    @lt.compile
    def predict(x: lt.Tensor[6, 2, 6, 6]):
        return _bn_logits(lt, ours, x)

    rng = np.random.default_rng(5)
    data = [(rand(rng, 6, 2, 6, 6) + 0.5, rng.integers(0, 3, 6).astype(np.int32)) for _ in range(4)]
    for x, y in data:
        loss = step(x, y)
        opt.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(_bn_logits(torch, twin, torch.from_numpy(x)),
                                                   torch.from_numpy(y).long())
        t_loss.backward()
        opt.step()
        assert loss == pytest.approx(t_loss.item(), rel=1e-4)
    theirs = twin.state_dict()
    for k, v in ours.state_dict().items():  # weights, running_mean/var (unbiased), num_batches_tracked
        close(v, theirs[k].numpy(), k)
    assert int(ours.bn1.num_batches_tracked) == 4 and ours.bn1.num_batches_tracked.dtype == np.int32

    x = data[0][0]
    with torch.no_grad():
        close(predict(x), _bn_logits(torch, twin, torch.from_numpy(x)).numpy(), "train mode: batch statistics")
        train_program = predict.program
        ours.eval()
        twin.eval()
        close(predict(x), _bn_logits(torch, twin, torch.from_numpy(x)).numpy(), "eval mode: running statistics")
        assert predict.program is not train_program  # eval staged its own entry
        running = ours.bn2.running_mean.copy()
        predict(x)
        np.testing.assert_array_equal(ours.bn2.running_mean, running)  # eval does not update them
        ours.train()
        predict(x)
        assert predict.program is train_program  # and training mode finds its entry again


def test_new_ops_reject_bad_arguments_naming_the_op():
    cases = [
        (lambda x: lt.gelu(x, approximate="fast"), "gelu: approximate must be"),
        (lambda x: lt.layer_norm(x, (5,)), r"layer_norm: normalized_shape \(5,\) is not the end"),
        (lambda x: lt.batch_norm(x[:1], None, None, training=True), "more than one value per channel"),
        (lambda x: lt.batch_norm(x, None, None), "evaluation needs running_mean"),
        (lambda x: lt.one_hot(x, 3), "one_hot: indices must be int32"),
        (lambda x: lt.var(x, axis=2), "axis 2 out of range"),
        (lambda x: lt.tril(x[0]), "tril: needs at least 2 dimensions"),
        (lambda x: lt.arange(0, 4, 0), "arange: step must not be zero"),
    ]
    for fn, message in cases:
        def f(x: lt.Tensor[2, 4]):
            return fn(x)

        with pytest.raises(lt.StagingError, match=message):
            lt.compile(f).ir
    with pytest.raises(lt.StagingError, match="BatchNorm1d: expected 3 channels"):
        bn = nn.BatchNorm1d(3)

        def g(x: lt.Tensor[2, 4]):
            return bn(x)

        lt.compile(g).ir


def test_encoder_layer_dropout_follows_train_and_eval():
    """dropout=0.3: the identity in eval mode (then it is PyTorch's eval
    output), random masks in training mode; one compiled function, two entries."""
    lt.manual_seed(3)
    rng = np.random.default_rng(3)
    kw = dict(dim_feedforward=16, dropout=0.3, batch_first=True)
    ours, twin = nn.TransformerEncoderLayer(8, 2, **kw), torch.nn.TransformerEncoderLayer(8, 2, **kw)
    loaded(ours, twin, seed=3)
    x = rand(rng, 2, 5, 8)

    @lt.compile
    def run(x: lt.Tensor[2, 5, 8]):
        return ours(x)

    trained = [run(x), run(x)]
    assert not np.allclose(trained[0], trained[1])  # fresh masks every call
    ours.eval()
    twin.eval()
    with torch.no_grad():
        close(run(x), twin(torch.from_numpy(x.astype(np.float64))).numpy(), "eval mode: no dropout")
    assert not np.allclose(run(x), trained[0])
