"""A physics-informed network in lantern_stage (issue 11's workload).

The 2-D Poisson problem u_xx + u_yy = f on the unit square with the known
solution u = sin(pi x) sin(pi y) (so f = -2 pi^2 u and u = 0 on the boundary);
the network is an MLP 2 -> 64 -> 64 -> 64 -> 1 with tanh, and the loss of one
step is mean((u_xx + u_yy - f)^2) over 1024 interior points plus 100 mean((u - g)^2)
over 256 boundary points (`benchmarks.data.poisson_batch`; the weight 100 is
`Config.boundary_weight`, see `benchmarks.spec.make_config`); Adam lr 1e-3.

The Laplacian is a derivative of the network with respect to its input inside
the loss, which `lt.train_step` differentiates again with respect to the
weights. Two formulations, the same numbers:

- "jvp" (the default, for speed): forward over forward along each coordinate
  direction e, u_ee = jvp(x -> jvp(u, x, e)[1], x, e)[1], every row of x being
  an independent point; the training step's reverse mode runs over that
  forward code (reverse over forward over forward);
- "grad": nested reverse mode, u_ee = d/dx sum(e * d/dx sum(u)) per direction
  (reverse over reverse over reverse), kept as a cross-check.
"""
# No `from __future__ import annotations`: the staged inputs' annotations
# are computed from the config when the loss function is defined.
import lantern_stage as lt
from lantern_stage import nn

from benchmarks.frameworks import Unsupported
from benchmarks.models import LanternTrainer, main

LAPLACIANS = ("jvp", "grad")


class PoissonPINN(nn.Module):
    def __init__(self, hidden: int = 64, laplacian: str = "jvp", boundary_weight: float = 100.0):
        super().__init__()
        if laplacian not in LAPLACIANS:
            raise ValueError(f"laplacian must be one of {LAPLACIANS}, got {laplacian!r}")
        self.laplacian_mode = laplacian
        self.boundary_weight = float(boundary_weight)
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.fc4 = nn.Linear(hidden, 1)

    def u(self, x):
        """The network at points x [n, 2] -> [n, 1]."""
        h = lt.tanh(self.fc1(x))
        h = lt.tanh(self.fc2(h))
        h = lt.tanh(self.fc3(h))
        return self.fc4(h)

    @staticmethod
    def directions(n: int):
        """The coordinate directions as tangents of n points: [n, 2] each."""
        one, zero = lt.ones(n, 1), lt.zeros(n, 1)
        return [lt.concat([one, zero], axis=1), lt.concat([zero, one], axis=1)]

    def laplacian(self, x):
        """u_xx + u_yy at points x [n, 2] -> [n, 1]."""
        lap = 0.0
        for e in self.directions(x.shape[0]):
            if self.laplacian_mode == "jvp":
                du_e = lambda y, e=e: lt.jvp(self.u, (y,), (e,))[1]          # [n, 1]: du/de per point
                u_ee = lt.jvp(du_e, (x,), (e,))[1]
            else:
                du = lambda y: lt.grad(lambda z: lt.sum(self.u(z)))(y)        # [n, 2]
                u_ee = lt.sum(lt.grad(lambda y, e=e: lt.sum(du(y) * e))(x) * e, axis=1, keepdims=True)
            lap = lap + u_ee
        return lap

    def forward(self, xi, f, xb, g):
        residual = self.laplacian(xi) - f
        return lt.mean(residual * residual) + self.boundary_weight * lt.mean((self.u(xb) - g) ** 2)


def require_higher_order(laplacian: str = "jvp") -> None:
    """Raise `Unsupported` naming what this lantern_stage lacks for the PINN."""
    if laplacian == "jvp" and not hasattr(lt, "jvp"):
        raise Unsupported("this lantern_stage has no forward mode (lt.jvp), which the PINN's "
                          "Laplacian needs (issue 11: higher-order differentiation)")


def build(weights, cfg, laplacian: str = "jvp") -> LanternTrainer:
    require_higher_order(laplacian)
    model = PoissonPINN(cfg.hidden, laplacian, cfg.boundary_weight)
    model.load_state_dict(weights)
    n, m = cfg.batch, cfg.boundary

    def loss_fn(model, xi: lt.Tensor[n, 2], f: lt.Tensor[n, 1], xb: lt.Tensor[m, 2], g: lt.Tensor[m, 1]):
        return model(xi, f, xb, g)

    opt = lt.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.eps)
    step = lt.train_step(model, loss_fn, opt, name=f"pinn_{laplacian}_step")
    return LanternTrainer(model, step, tuple)


if __name__ == "__main__":
    main("pinn", build)
