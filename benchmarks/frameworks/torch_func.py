"""PyTorch's `torch.func` on the PINN: the Laplacian as `vmap(hessian(u))`.

The network is the eager twin (`torch_models.PoissonPINN`, same weights) as a
function of one point; `torch.func.hessian` (jacfwd over jacrev) gives each
point's 2x2 Hessian and `vmap` batches it over the interior points. The weights
are captured, so the weights' gradient is the ordinary `loss.backward()` through
the transformed code (torch.func composes with autograd), then `torch.optim.Adam`.
Only the PINN has input derivatives, so the other models are not run here.
"""
from __future__ import annotations

from benchmarks.frameworks import Unsupported, torch_eager

available = torch_eager.available
configure_threads = torch_eager.configure_threads
versions = torch_eager.versions


def pinn_loss(net):
    """loss(xi, f, xb, g) of `net` (a `PoissonPINN`) with the Laplacian by torch.func."""
    from torch.func import hessian, vmap

    def u_point(p):                                             # p: [2] -> scalar
        return net.u(p[None])[0, 0]

    hess = vmap(hessian(u_point))

    def loss(xi, f, xb, g):
        h = hess(xi)                                            # [n, 2, 2]
        residual = (h[:, 0, 0] + h[:, 1, 1])[:, None] - f
        return (residual ** 2).mean() + net.boundary_weight * ((net.u(xb) - g) ** 2).mean()

    return loss


def build(model, weights, cfg):
    if model != "pinn":
        raise Unsupported("torch.func transforms are benchmarked on the PINN only (no input derivatives here)")
    from benchmarks.frameworks.torch_models import TorchTrainer, from_weights
    net = from_weights(model, weights, cfg)
    return TorchTrainer(model, net, cfg, forward=pinn_loss(net))
