"""lantern_stage: the benchmark models written in lantern_stage (`benchmarks.models.<name>`).

Each model file exposes ``build(weights: dict, cfg) -> trainer`` with the trainer
interface of `benchmarks.frameworks` (step(batch) -> float loss; optionally
weights(), prepare(batch), precompile(batches)). `build` stages and compiles the
model; the harness reports that time as lantern's compile time. Until the model
files exist this framework reports itself unavailable, like a missing peer.
"""
from __future__ import annotations

import importlib
import importlib.util

from benchmarks.frameworks import Unsupported
from benchmarks.frameworks._common import dist_version

MODELS_PACKAGE = "benchmarks.models"


def _model_module(model: str):
    name = f"{MODELS_PACKAGE}.{model}"
    try:
        if importlib.util.find_spec(MODELS_PACKAGE) is None or importlib.util.find_spec(name) is None:
            return None, f"{name} does not exist yet (lantern_stage model files not written)"
    except ModuleNotFoundError as e:
        return None, f"{name}: {e}"
    return importlib.import_module(name), ""


def available():
    try:
        import lantern_stage
    except Exception as e:
        return False, f"lantern_stage not importable ({type(e).__name__}: {e})"
    try:
        if importlib.util.find_spec(MODELS_PACKAGE) is None:
            return False, f"{MODELS_PACKAGE} does not exist yet (lantern_stage model files not written)"
    except ModuleNotFoundError as e:
        return False, str(e)
    version = getattr(lantern_stage, "__version__", None) or dist_version("lantern_stage")
    return True, str(version)


def configure_threads(**_) -> str:
    # The generated C++ is single-threaded; its OpenBLAS reads OPENBLAS_NUM_THREADS=1,
    # which the harness sets before this process starts.
    import os
    return f"generated C++ single-threaded; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}"


def versions() -> dict:
    ok, v = available()
    return {"lantern_stage": v if ok else "unavailable"}


def build(model, weights, cfg):
    module, reason = _model_module(model)
    if module is None:
        raise Unsupported(reason)
    if not hasattr(module, "build"):
        raise Unsupported(f"{module.__name__} has no build(weights, cfg)")
    return module.build(weights, cfg)


def build_level_batched(model, weights, cfg):
    from benchmarks.models.treelstm_mb25 import build_per_tree
    return build_per_tree(weights, cfg)


def variants(model, **_) -> dict:
    """Formulations timed side by side (label -> build); the faster counts as
    lantern_stage's time.  The batch-1 TreeLSTM as the paper's recursion over
    the nodes and level-batched (the tree's nodes of equal height in chunks,
    `benchmarks.models.treelstm_mb25.build_per_tree`): what DyNet's autobatching
    finds at run time and the TF and JAX twins are written as."""
    if model == "treelstm":
        return {"recursive": build, "level-batched": build_level_batched}
    return {}
