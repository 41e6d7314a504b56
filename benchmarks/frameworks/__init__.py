"""One module per framework, all with the same small interface.

A framework module exposes

    available(**options) -> (ok: bool, version_or_reason: str)
    configure_threads(**options) -> str  # pin the framework's own thread pools to 1, say what was set
    versions() -> dict              # package -> version, for results.json
    build(model, weights, cfg, **options) -> trainer

where `model` is one of ``benchmarks.spec.MODELS``, `weights` the ordered dict of
``benchmarks.weights.init_weights`` (PyTorch names and layouts) and `cfg` the
``benchmarks.spec.Config``. `build` raises `Unsupported` for a model the framework
cannot run (the harness records the reason and goes on).

A trainer has

    step(batch) -> float            # one training step (forward, backward, update); the loss
    weights() -> dict               # optional: current weights, PyTorch names and layouts
    prepare(batch) -> batch         # optional: convert one data batch to the framework's
                                    # form (numpy -> tensors, tree -> level schedule);
                                    # the harness calls it outside the timed region
    precompile(batches) -> None     # optional: compile every shape variant these prepared
                                    # batches will need, without changing the weights;
                                    # timed and reported as compile time

A module may also expose ``variants(model, **options) -> {label: build}``: other
formulations of the same model in the same framework (PyTorch's `nn.LSTM` next to
its LSTMCell loop). The worker times each; the fastest is the framework's time.

Batches are the ``benchmarks.data`` types: `CharBatch` (rnn, lstm), `ImageBatch`
(cnn), one `Tree` (treelstm) and `PoissonBatch` (pinn).

`REGISTRY` maps the harness's framework names to (module, options); a module can
serve several names (tf and tf_xla, dynet and dynet_autobatch).
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple


class Unsupported(Exception):
    """This framework does not run this model (the message says why)."""


REGISTRY: Dict[str, Tuple[str, dict]] = {
    "lantern": ("benchmarks.frameworks.lantern", {}),
    "torch": ("benchmarks.frameworks.torch_eager", {}),
    "torch_compile": ("benchmarks.frameworks.torch_compile", {}),
    "torch_func": ("benchmarks.frameworks.torch_func", {}),
    "tf": ("benchmarks.frameworks.tf_function", {"jit_compile": False}),
    "tf_xla": ("benchmarks.frameworks.tf_function", {"jit_compile": True}),
    "jax": ("benchmarks.frameworks.jax_jit", {}),
    "dynet": ("benchmarks.frameworks.dynet", {"autobatch": False}),
    "dynet_autobatch": ("benchmarks.frameworks.dynet", {"autobatch": True}),
}

LABELS = {
    "lantern": "lantern_stage",
    "torch": "PyTorch eager",
    "torch_compile": "torch.compile",
    "torch_func": "torch.func",
    "tf": "TF tf.function",
    "tf_xla": "TF XLA (jit_compile)",
    "jax": "JAX jit",
    "dynet": "DyNet",
    "dynet_autobatch": "DyNet autobatch",
}


class Framework:
    """A registry entry bound to its module and options."""

    def __init__(self, name: str):
        if name not in REGISTRY:
            raise KeyError(f"unknown framework {name!r}; known: {', '.join(REGISTRY)}")
        self.name = name
        self.label = LABELS[name]
        self.module_name, self.options = REGISTRY[name]
        self._module = None

    @property
    def module(self):
        if self._module is None:
            self._module = importlib.import_module(self.module_name)
        return self._module

    def available(self) -> Tuple[bool, str]:
        try:
            return self.module.available(**self.options)
        except Exception as e:   # an import error of the twin module itself
            return False, f"{type(e).__name__}: {e}"

    def configure_threads(self) -> str:
        return self.module.configure_threads(**self.options)

    def versions(self) -> dict:
        return self.module.versions()

    def build(self, model, weights, cfg):
        return self.module.build(model, weights, cfg, **self.options)

    def variants(self, model) -> dict:
        """label -> build(model, weights, cfg) of each formulation ({} if just one)."""
        fn = getattr(self.module, "variants", None)
        return fn(model, **self.options) if fn else {}
