"""`lt.train_step`: one compiled C++ function that runs the forward pass, the
backward pass (AD by callbacks), gradient clipping and the optimizer update,
writing parameters and optimizer state in place.

    model = Net()
    opt = lt.optim.Adagrad(model.parameters(), lr=0.1)

    def loss_fn(model, xs: lt.Tensor[20, 20, 26], ys: lt.Tensor[20, 20, "int32"]):
        ...
        return loss

    step = lt.train_step(model, loss_fn, opt, clip_grad_norm=5.0)
    loss = step(xs, ys)                    # a float; model and opt updated
    step.save("ckpt.npz"); step.load("ckpt.npz")

It is built from the same pieces as `lt.compile`: the loss function is
staged under `value_and_grad` with respect to the optimizer's parameters,
which the model sees through `lt.nn.bind` (a copy of the model holding the
differentiated staged values in place of those Parameters); the update is
staged after it with `lt.assign` into the captured arrays.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict

import numpy as np

from .autodiff import value_and_grad
from .compile import CompiledFunction
from .generator import Generator
from .nn.module import Module, bind
from .optim import Optimizer, clip_grad_norm as _clip_norm, clip_grad_value as _clip_value
from .passes import run_passes
from .program import input_specs, stage
from .runtime import DEFAULT_ARENA_BYTES, DEFAULT_MAX_DEPTH


def _data_inputs(loss_fn):
    """A stand-in for `loss_fn` without its first (model) parameter, for `input_specs`."""
    sig = inspect.signature(loss_fn)
    params = list(sig.parameters.values())
    if not params:
        raise TypeError(f"{loss_fn.__qualname__}: the loss function takes the model as its first argument")
    try:
        annotations = inspect.get_annotations(loss_fn, eval_str=True)
    except Exception as e:
        raise TypeError(f"cannot evaluate the annotations of {loss_fn.__qualname__}: {e}") from None

    def inputs():
        pass

    inputs.__signature__ = sig.replace(parameters=params[1:])
    inputs.__annotations__ = {k: v for k, v in annotations.items() if k != params[0].name}
    inputs.__qualname__ = loss_fn.__qualname__
    return inputs


class TrainStep(CompiledFunction):
    """The result of `lt.train_step`: call it with the loss function's data
    inputs; it returns the loss (a float) — or (loss, aux) with has_aux."""

    def __init__(self, model: Module, loss_fn, optimizer: Optimizer, clip_grad_norm=None, clip_grad_value=None,
                 has_aux=False, name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH):
        if not isinstance(model, Module):
            raise TypeError(f"train_step: model must be an lt.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"train_step: optimizer must be an lt.optim optimizer, got {type(optimizer).__name__}")
        if optimizer.params is None:
            optimizer.bind(model.named_parameters())
        names = {id(p): n for n, p in model.named_parameters()}
        foreign = [i for i, p in enumerate(optimizer.params) if id(p) not in names]
        if foreign:
            raise ValueError(f"train_step: optimizer parameters {foreign} are not parameters of the model")
        super().__init__(loss_fn, name or f"train_{loss_fn.__name__}", arena_bytes, max_depth)
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.clip_grad_norm, self.clip_grad_value, self.has_aux = clip_grad_norm, clip_grad_value, has_aux
        self.specs = input_specs(_data_inputs(loss_fn))
        for n, p in model.named_parameters():  # readable C++ names
            p.lantern_name = n

    @property
    def program(self):
        if self._program is None:
            program = stage(self._staged, self.name, self.specs)
            run_passes(program)
            self._program = program
        return self._program

    def _staged(self, *inputs):
        params = self.optimizer.params

        def objective(values):
            return self.loss_fn(bind(self.model, {id(p): v for p, v in zip(params, values)}), *inputs)

        value, grads = value_and_grad(objective, has_aux=self.has_aux)(list(params))
        if self.clip_grad_norm is not None:
            grads, _ = _clip_norm(grads, self.clip_grad_norm)
        if self.clip_grad_value is not None:
            grads = _clip_value(grads, self.clip_grad_value)
        self.optimizer.update(grads)
        return value

    def __call__(self, *args, **kwargs):
        self.select_mode()
        out = self.entry(*args, **kwargs)
        if self.has_aux:
            loss, aux = out
            return float(loss), aux
        return float(out)

    # ------------------------------------------------------------ checkpoints
    @property
    def generators(self) -> list[Generator]:
        """The random generators the staged step draws from (dropout)."""
        return [h for h, _ in self.program.captures if isinstance(h, Generator)]

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Everything a run needs to resume exactly: "model.<name>" parameters
        and buffers, "optimizer.<key>" state, "rng.<i>" generator states.
        The arrays are the live ones; `save` writes copies."""
        out = OrderedDict()
        for k, v in self.model.state_dict().items():
            out["model." + k] = v
        for k, v in self.optimizer.state_dict().items():
            out["optimizer." + k] = v
        for i, g in enumerate(self.generators):
            out[f"rng.{i}"] = g.state
        return out

    def load_state_dict(self, state) -> None:
        parts: dict[str, dict] = {"model": {}, "optimizer": {}, "rng": {}}
        for k, v in state.items():
            head, _, rest = k.partition(".")
            if head not in parts:
                raise KeyError(f"load_state_dict: unexpected key {k!r}")
            parts[head][rest] = v
        gens = self.generators
        if sorted(parts["rng"]) != [str(i) for i in range(len(gens))]:
            raise KeyError(f"load_state_dict: expected {len(gens)} generator state(s), got keys {sorted(parts['rng'])}")
        self.model.load_state_dict(parts["model"])
        self.optimizer.load_state_dict(parts["optimizer"])
        for i, g in enumerate(gens):
            g.set_state(parts["rng"][str(i)])

    def save(self, path) -> None:
        """Write the state_dict to an .npz file."""
        save(self.state_dict(), path)

    def load(self, path) -> None:
        self.load_state_dict(load(path))


def train_step(model, loss_fn, optimizer, clip_grad_norm=None, clip_grad_value=None, has_aux=False, *,
               name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH) -> TrainStep:
    """Compile one training step of `model`: `loss_fn(model, *inputs)` with its
    inputs annotated after `model`, value_and_grad over the optimizer's
    parameters, optional clipping (torch.nn.utils.clip_grad_norm_ /
    clip_grad_value_ semantics), then `optimizer`'s update, in place."""
    return TrainStep(model, loss_fn, optimizer, clip_grad_norm, clip_grad_value, has_aux, name, arena_bytes, max_depth)


def save(state: dict, path) -> None:
    """Write a dict of arrays (a state_dict) to an .npz file."""
    np.savez(path, **{k: np.array(v) for k, v in state.items()})


def load(path) -> "OrderedDict[str, np.ndarray]":
    """Read a dict of arrays written by `save`."""
    with np.load(path) as f:
        return OrderedDict((k, f[k]) for k in f.files)
