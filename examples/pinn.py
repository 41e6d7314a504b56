"""Train a physics-informed network on the 2-D Poisson problem with lantern_stage.

    python examples/pinn.py [--steps 20000] [--target 1e-2] [--out pinn] [--laplacian jvp|grad]

The problem: u_xx + u_yy = f on the unit square, u = 0 on its boundary, with
f = -2 pi^2 sin(pi x) sin(pi y), whose solution is u = sin(pi x) sin(pi y).
The network u(x, y) is an MLP 2 -> 64 -> 64 -> 64 -> 1 with tanh; every step
draws 1,024 fresh interior points and 256 boundary points and minimises

    mean((u_xx + u_yy - f)^2) + 100 mean(u(boundary)^2)

with Adam (lr 1e-3); the boundary weight 100 balances the two terms (the
Laplacian amplifies a smooth error by 2 pi^2; `benchmarks.spec.make_config`
has the measurements). The Laplacian is forward mode over the network (nested
`lt.jvp` along x and along y) inside the loss; `lt.train_step` differentiates
the whole loss again with respect to the weights and compiles forward,
input derivatives, backward and the Adam update into one C++ call per step.
A separately compiled predictor shares the weights and measures the relative
L2 error against the exact solution on a 101 x 101 grid.

Writes <out>_loss.png (loss and error curves) and <out>_solution.png
(network, exact solution, error).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lantern_stage as lt  # noqa: E402

from benchmarks.data import poisson_batch, poisson_exact, poisson_grid, relative_l2  # noqa: E402
from benchmarks.frameworks import Unsupported  # noqa: E402
from benchmarks.models.pinn import LAPLACIANS, PoissonPINN, require_higher_order  # noqa: E402
from benchmarks.spec import make_config  # noqa: E402
from benchmarks.weights import init_weights  # noqa: E402

GRID = 101                       # evaluation grid: GRID x GRID points
CFG = make_config("pinn")        # the harness's hyper-parameters
N, M = CFG.batch, CFG.boundary   # interior and boundary points per step (module level: annotations)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10000, help="most training steps (default 10000)")
    p.add_argument("--target", type=float, default=1e-2,
                   help="stop once the relative L2 error is below this (default 1e-2; 0: never)")
    p.add_argument("--eval-every", type=int, default=250, help="steps between error evaluations")
    p.add_argument("--laplacian", choices=LAPLACIANS, default="jvp",
                   help="jvp: forward over forward (default); grad: nested reverse mode")
    p.add_argument("--out", default="pinn", help="prefix of the PNG files (default: pinn)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG files")
    args = p.parse_args(argv)

    try:
        require_higher_order(args.laplacian)
    except Unsupported as e:
        sys.exit(f"examples/pinn.py: {e}")

    model = PoissonPINN(CFG.hidden, args.laplacian, CFG.boundary_weight)
    model.load_state_dict(init_weights(CFG))      # the harness's initial weights

    def loss_fn(model, xi: lt.Tensor[N, 2], f: lt.Tensor[N, 1], xb: lt.Tensor[M, 2], g: lt.Tensor[M, 1]):
        return model(xi, f, xb, g)

    step = lt.train_step(model, loss_fn, lt.optim.Adam(model.parameters(), lr=CFG.lr))
    grid = poisson_grid(GRID)

    @lt.compile
    def predict(x: lt.Tensor[GRID * GRID, 2]):
        return model.u(x)

    t0 = time.perf_counter()
    step.entry, predict.entry  # noqa: B018 - stage, generate C++, build (or find in the cache)
    print(f"compiled the training step ({args.laplacian} Laplacian) and the predictor "
          f"in {time.perf_counter() - t0:.1f} s")

    from tqdm import tqdm

    losses, errors = [], []                      # errors: (step, relative L2)
    errors.append((0, relative_l2(predict(grid), grid)))
    bar = tqdm(range(args.steps), desc="pinn", unit="step", dynamic_ncols=True)
    t_train = 0.0
    for k in bar:
        batch = poisson_batch(k, N, M)
        t1 = time.perf_counter()
        losses.append(step(*batch))
        t_train += time.perf_counter() - t1
        if (k + 1) % args.eval_every == 0 or k + 1 == args.steps:
            errors.append((k + 1, relative_l2(predict(grid), grid)))
            bar.set_postfix(loss=f"{losses[-1]:.3g}", rel_l2=f"{errors[-1][1]:.2e}")
            if errors[-1][1] < args.target:
                break
    bar.close()
    steps_run = len(losses)
    err = errors[-1][1]
    print(f"{steps_run} steps in {t_train:.1f} s ({t_train / steps_run * 1e3:.2f} ms/step): "
          f"loss {losses[0]:.4g} -> {losses[-1]:.4g}, relative L2 error {err:.2e}"
          + (f" (target {args.target:g} reached)" if err < args.target else f" (target {args.target:g} not reached)"))
    if not args.no_plot:
        plot(args.out, losses, errors, predict(grid), grid)
    return {"losses": losses, "errors": errors, "relative_l2": err, "ms_per_step": t_train / steps_run * 1e3}


def plot(prefix, losses, errors, u_pred, grid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(np.arange(1, len(losses) + 1), losses, lw=0.6, label="training loss")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss: residual² + 100 · boundary error²")
    ax2 = ax.twinx()
    s, e = zip(*errors)
    ax2.semilogy(s, e, color="C3", marker=".", lw=1.2, label="relative L2 error")
    ax2.set_ylabel("relative L2 error vs the exact solution", color="C3")
    ax.set_title("PINN for u_xx + u_yy = f on the unit square (lantern_stage)")
    fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.88), fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{prefix}_loss.png", dpi=120)
    plt.close(fig)

    shape = (GRID, GRID)
    u = np.asarray(u_pred, np.float64).reshape(shape)
    exact = poisson_exact(grid).reshape(shape)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, z, title in zip(axes, [u, exact, np.abs(u - exact)],
                            ["network u(x, y)", "exact sin(πx) sin(πy)", "|error|"]):
        im = ax.imshow(z, origin="lower", extent=(0, 1, 0, 1), cmap="viridis" if title != "|error|" else "magma")
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.tight_layout()
    fig.savefig(f"{prefix}_solution.png", dpi=120)
    plt.close(fig)
    print(f"wrote {prefix}_loss.png and {prefix}_solution.png")


if __name__ == "__main__":
    main()
