"""Second-order AD and a transformer layer through `lantern compile`: the
package's entry points (a PINN-style train step whose loss holds a nested-jvp
Laplacian and a gradient penalty by an inner `lt.grad`, a Hessian-vector
product, a causal transformer train step) give the numbers of the same model
run in process, and the `--standalone` programs train the PINN step and the
transformer step with the package's losses."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from test_cli import lantern, ok, python

MODEL = '''
import numpy as np

import lantern_stage as lt
from lantern_stage import nn

N, D, S, E, B = 16, 8, 6, 8, 2

lt.manual_seed(0)
net = nn.Sequential(nn.Linear(2, D), nn.Tanh(), nn.Linear(D, D), nn.Tanh(), nn.Linear(D, 1))


def u(x):
    return net(x)


def laplacian(x):
    lap = 0.0
    for e in (lt.concat([lt.ones(N, 1), lt.zeros(N, 1)], 1), lt.concat([lt.zeros(N, 1), lt.ones(N, 1)], 1)):
        du_e = lambda y: lt.jvp(u, (y,), (e,))[1]
        lap = lap + lt.jvp(du_e, (x,), (e,))[1]
    return lap


def pinn_loss(net, x: lt.Tensor[N, 2], f: lt.Tensor[N, 1]):
    r = laplacian(x) - f
    slope = lt.grad(lambda y: lt.sum(u(y)))(x)  # a gradient penalty: reverse mode inside the loss
    return lt.mean(r * r) + 0.1 * lt.mean(slope * slope)


pinn_step = lt.export(lt.train_step(net, pinn_loss, lt.optim.Adam(net.parameters(), lr=1e-2)), name="pinn_step")


@lt.export
def hvp(x: lt.Tensor[N, 2], v: lt.Tensor[N, 2]):
    """Hessian-vector product of the summed network output w.r.t. its input."""
    return lt.jvp(lt.grad(lambda y: lt.sum(u(y))), (x,), (v,))[1]


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(E, 2, 16, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.head = nn.Linear(E, 5)

    def forward(self, x):
        future = lt.triu(lt.ones(S, S), 1) > 0.5
        return self.head(self.layer(x, src_mask=future))


lm = LM()


def lm_loss(lm, x: lt.Tensor[B, S, E], y: lt.Tensor[B * S, "int32"]):
    return lt.cross_entropy(lt.reshape(lm(x), (B * S, 5)), y)


lm_step = lt.export(lt.train_step(lm, lm_loss, lt.optim.Adam(lm.parameters(), lr=1e-2)), name="lm_step")
'''

RUN = """
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    {imports}
    data = sys.argv[2]
    x, f = np.load(data + "/x.npy"), np.load(data + "/f.npy")
    out = {{"pinn": [float(m.pinn_step(x[i], f[i])) for i in range(len(x))]}}
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((16, 2)).astype(np.float32)
    vs = rng.standard_normal((16, 2)).astype(np.float32)
    out["hvp"] = np.asarray(m.hvp(xs, vs)).tolist()
    lx = rng.standard_normal((2, 6, 8)).astype(np.float32)
    ly = rng.integers(0, 5, 12).astype(np.int32)
    out["lm"] = [float(m.lm_step(lx, ly)) for _ in range(3)]
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("higher")
    (root / "higher_model.py").write_text(MODEL)
    ok(lantern("compile", root / "higher_model.py", "-o", root / "out", "--standalone",
               "--entry", "pinn_step", "--steps", "3"))
    return root


def test_package_matches_the_model_run_in_process(compiled):
    data = compiled / "out" / "higher_model" / "standalone" / "data"
    package = json.loads(ok(python(RUN.format(imports="import higher_model as m"),
                                   args=(compiled / "out", data))).stdout)
    in_process = json.loads(ok(python(RUN.format(imports="import higher_model as m"),
                                      args=(compiled, data))).stdout)
    assert len(package["pinn"]) == 3 and np.all(np.isfinite(package["pinn"]))
    for key in ("pinn", "hvp", "lm"):  # the same C++ built the same way: the same bits
        np.testing.assert_array_equal(package[key], in_process[key], err_msg=key)
    assert package["lm"][2] < package["lm"][0]  # the transformer step trains


def test_standalone_program_trains_the_pinn_step_with_the_packages_losses(compiled):
    folder = compiled / "out" / "higher_model" / "standalone"
    ok(subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True, timeout=600))
    ok(subprocess.run(["./higher_model", "--steps", "3", "--out", "trained"], cwd=folder, capture_output=True,
                      text=True, timeout=120))
    losses = np.load(folder / "trained" / "losses.npy")
    package = json.loads(ok(python(RUN.format(imports="import higher_model as m"),
                                   args=(compiled / "out", folder / "data"))).stdout)
    np.testing.assert_array_equal(losses, np.float32(package["pinn"]))


def test_standalone_program_trains_the_transformer_step_with_the_packages_losses(compiled):
    out = compiled / "out_lm"
    ok(lantern("compile", compiled / "higher_model.py", "-o", out, "--standalone", "--entry", "lm_step", "--steps", "3"))
    folder = out / "higher_model" / "standalone"
    ok(subprocess.run(["make", "-C", str(folder)], capture_output=True, text=True, timeout=600))
    ok(subprocess.run(["./higher_model", "--steps", "3", "--out", "trained"], cwd=folder, capture_output=True,
                      text=True, timeout=120))
    losses = np.load(folder / "trained" / "losses.npy")
    package = json.loads(ok(python("""
        import json, sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        import higher_model as m
        x, y = np.load(sys.argv[2] + "/x.npy"), np.load(sys.argv[2] + "/y.npy")
        print(json.dumps([float(m.lm_step(x[i], y[i])) for i in range(len(x))]))
    """, args=(out, folder / "data"))).stdout)
    assert len(package) == 3
    np.testing.assert_array_equal(losses, np.float32(package))
