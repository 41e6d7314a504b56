"""PyTorch with `torch.compile` (default inductor backend) on the same twins.

rnn, lstm, cnn: the model is compiled (`torch.compile(net)`), as the PyTorch docs
show; forward and backward are compiled graphs, the optimizer step stays eager.

treelstm: only the two cells (leaf, inner; each with its node's loss) are
compiled, and the recursive Python function calls them: their shapes never
change, so they compile once (treelstm_mb25: the same, over the 25 trees of an
update). Compiling the whole recursive forward instead
specialises it to the tree's structure and recompiles for every new tree shape
(tens of seconds each here, and dynamo falls back to eager after its
recompile limit), so that variant is *reported* by `probe_whole_tree_recompile`
(``python -m benchmarks.run --probe-recompile``), not timed for an epoch.

pinn: not run; torch.compile does not support double backward (see `build`).
"""
from __future__ import annotations

import time

from benchmarks.frameworks import torch_eager
from benchmarks.frameworks._common import missing
from benchmarks.spec import TREE_MODELS


def available():
    try:
        import torch
        import torch._inductor  # noqa: F401  (inductor needs a C++ compiler at run time)
    except Exception as e:
        return False, missing("torch", e)
    import shutil
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return False, "no C++ compiler on PATH (inductor's CPU backend needs one)"
    return True, torch.__version__


configure_threads = torch_eager.configure_threads


def versions() -> dict:
    return {**torch_eager.versions(), "torch.compile backend": backend()}


# The harness's --smoke sets this to "aot_eager" (dynamo + AOTAutograd, no C++ codegen):
# inductor's cold compile of the unrolled RNN/LSTM takes minutes on this machine, and a
# smoke run only checks that the pipeline works. Timed runs always use inductor.
BACKEND_ENV = "LANTERN_BENCH_TORCH_BACKEND"


def backend() -> str:
    import os
    return os.environ.get(BACKEND_ENV, "inductor")


def build(model, weights, cfg):
    import torch
    from benchmarks.frameworks import Unsupported
    from benchmarks.frameworks.torch_models import TorchTrainer, from_weights
    if model == "pinn":
        # Measured with torch 2.13: torch.compile(net) runs forward and the inner
        # autograd.grad calls, then loss.backward() fails with "RuntimeError:
        # torch.compile with aot_autograd does not currently support double backward".
        raise Unsupported("torch.compile with aot_autograd does not support double backward, "
                          "which the PINN's loss.backward() through autograd.grad(create_graph=True) needs")
    net = from_weights(model, weights, cfg)
    if model in TREE_MODELS:
        leaf, inner = torch.compile(net.leaf, backend=backend()), torch.compile(net.inner, backend=backend())
        return TorchTrainer(model, net, cfg, forward=lambda *trees: net(*trees, leaf=leaf, inner=inner))
    return TorchTrainer(model, net, cfg, forward=torch.compile(net, backend=backend()))


def probe_whole_tree_recompile(trees, weights, cfg, n: int = 2) -> list:
    """Compile seconds of `torch.compile(whole recursive TreeLSTM)` (forward and
    backward) for each of the first `n` trees of distinct shape."""
    import torch
    import torch._dynamo
    from benchmarks.frameworks.torch_models import from_weights, prepare_tree
    net = from_weights("treelstm", weights, cfg)
    compiled = torch.compile(net)
    out, shapes = [], set()
    for t in trees:
        shape = (tuple(t.lch.tolist()), tuple(t.rch.tolist()))
        if shape in shapes:
            continue
        shapes.add(shape)
        t0 = time.perf_counter()
        compiled(prepare_tree(t)).backward()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled(prepare_tree(t)).backward()
        out.append({"nodes": int(len(t.labels)), "compile_s": first, "second_call_s": time.perf_counter() - t0})
        if len(out) >= n:
            break
    torch._dynamo.reset()
    return out
