"""`lt.train_step`: one compiled C++ function that runs the forward pass, the
backward pass (AD by callbacks), gradient clipping and the optimizer update,
writing parameters and optimizer state in place.  With `accumulate=K` every
call adds its gradients into one flat buffer and every K-th call applies one
update with their mean; with `data_parallel=True` that buffer is averaged
over the MPI ranks (lt.distributed) between backward and clipping, by one
all-reduce called from the compiled code.

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

from . import api as F, distributed
from .autodiff import value_and_grad, value_and_grad_into
from .compile import CompiledFunction
from .control import cond
from .generator import Generator
from .nn.module import Module, bind, copy_state, raise_state_problems, state_problems
from .ops.registry import Emitter, as_rep
from .optim import Optimizer, _State, clip_grad_norm as _clip_norm, clip_grad_value as _clip_value
from .staging import current
from .runtime import DEFAULT_ARENA_BYTES, DEFAULT_MAX_DEPTH, read_arrays, save_arrays


def _data_inputs(loss_fn):
    """A stand-in for `loss_fn` without its first (model) parameter: the step's signature."""
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
                 has_aux=False, name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH,
                 accumulate=1, data_parallel=False):
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f"train_step: accumulate must be an int >= 1 (micro-batches per update), got {accumulate!r}")
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
        self._data_inputs = _data_inputs(loss_fn)
        self.parameters  # noqa: B018 - a bad annotation is an error here, not at the first step
        self._pending_rng = None  # generator states loaded before the first signature was staged
        for n, p in model.named_parameters():  # readable C++ names
            p.lantern_name = n
        self._configure(accumulate, data_parallel)

    def _configure(self, accumulate: int, data_parallel: bool) -> None:
        """Set accumulation and data parallelism (before staging: `lantern run
        --procs` turns a model file's step data-parallel this way)."""
        self.accumulate, self.data_parallel = accumulate, bool(data_parallel)
        self._table.clear()  # every signature is staged anew
        self._by_layout.clear()
        self._current = None
        # Every gradient in one flat buffer: the accumulator of `accumulate`
        # and the one buffer the data-parallel all-reduce exchanges.
        self._grads = self._count = None
        if accumulate > 1 or self.data_parallel:
            total = sum(int(np.prod(p.shape)) for p in self.optimizer.params)
            self._grads = _State(np.zeros(total, np.float32), "grad_buffer")
        if accumulate > 1:
            self._count = _State(np.zeros((), np.float32), "accumulated")

    def _staged_function(self):
        return self._staged

    def _signature_function(self):
        return self._data_inputs

    def _staged(self, *inputs):
        params = self.optimizer.params

        def objective(values):
            return self.loss_fn(bind(self.model, {id(p): v for p, v in zip(params, values)}), *inputs)

        flat, views = None, []
        if self._grads is not None:
            flat, offset = as_rep(self._grads), 0
            for p in params:  # zero-copy views of the flat buffer, one per parameter
                n = int(np.prod(p.shape))
                views.append(flat[offset:offset + n].reshape(tuple(p.shape)))
                offset += n
        if self.accumulate > 1:
            count = F.assign(self._count, as_rep(self._count) + 1.0)
            last = count >= float(self.accumulate)
            # The backward code adds straight into the accumulator: no zeroed
            # gradient buffers, no pass adding them into it.  With annotations
            # (one compiled signature) the deferred weight-gradient rows of the
            # K calls are added by the K-th, in one gemm; without, each call
            # flushes its own (every signature has logs of its own, and the K
            # calls may span several).  Measured in benchmarks/NOTES.md,
            # "Minibatched TreeLSTM".
            logs = (count < 1.5, last) if self.is_fixed else None
            value, _ = value_and_grad_into(objective, list(params), views, has_aux=self.has_aux, logs=logs)
        else:
            value, grads = value_and_grad(objective, has_aux=self.has_aux)(list(params))
            if flat is None:  # one update, from the gradients themselves
                self._update(grads)
                return value
            em = Emitter(current(), "gradients into the flat buffer")
            for view, g in zip(views, grads):
                em.map(view.var, "{0}", as_rep(g).var)

        def exchange_and_update():
            if self.data_parallel:  # the mean over ranks; the identity with one rank
                Emitter(current(), "all-reduce the gradients (mean over ranks)").prim(
                    "allreduce_mean", [flat.var], [flat.var])
            if self.accumulate == 1:
                self._update(views)
                return ()
            self._update([v * (1.0 / self.accumulate) for v in views])
            Emitter(current(), "empty the accumulator").fill(flat.var, 0.0)
            F.assign(self._count, 0.0)
            return ()

        if self.accumulate == 1:
            exchange_and_update()
        else:
            cond(last, exchange_and_update, lambda: ())
        return value

    def _update(self, grads) -> None:
        """Clipping (on the averaged gradients) and the optimizer's update."""
        if self.clip_grad_norm is not None:
            grads, _ = _clip_norm(grads, self.clip_grad_norm)
        if self.clip_grad_value is not None:
            grads = _clip_value(grads, self.clip_grad_value)
        self.optimizer.update(grads)

    def _loaded(self, entry) -> None:
        """A signature's library is loaded: join the ranks and start them all
        from rank 0's state."""
        if self.data_parallel:
            distributed.connect(entry.library)
            distributed.broadcast(self.synchronized_arrays())

    def synchronized_arrays(self) -> list[np.ndarray]:
        """What a data-parallel step keeps identical on every rank: the model's
        and the optimizer's state (rank 0's is broadcast when the step is built,
        and on `load`).  Generators stay per rank."""
        return list(self.model.state_dict().values()) + list(self.optimizer.state_dict().values())

    @property
    def scratch_arrays(self) -> list[np.ndarray]:
        """The gradient buffer (and the micro-batch count): captured by the
        step but not part of its state; checkpoints leave them out."""
        return [h.array for h in (self._grads, self._count) if h is not None]

    @property
    def pending(self) -> int:
        """Micro-batches accumulated since the last update (0 when accumulate=1)."""
        return int(self._count.array) if self._count is not None else 0

    def __call__(self, *args, **kwargs):
        if self._pending_rng is not None:  # stage this signature and set the loaded generator states
            self.specialize(*args, **kwargs)
            self.generators  # noqa: B018
        out = self._call_entry(args, kwargs)
        if self.has_aux:
            loss, aux = out
            return float(loss), aux
        return float(out)

    # ------------------------------------------------------------ checkpoints
    @property
    def generators(self) -> list[Generator]:
        """The random generators the staged step draws from (dropout), over
        every signature compiled so far (none before the first call of a step
        without annotations)."""
        if self.is_fixed:
            self.program  # noqa: B018 - stage it
        found: list[Generator] = []
        for specialization in self._table.values():
            for h, _ in specialization.program.captures:
                if isinstance(h, Generator) and all(h is not g for g in found):
                    found.append(h)
        if self._pending_rng is not None and self._table:
            pending, self._pending_rng = self._pending_rng, None
            self._set_rng(found, pending)
        return found

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
        """Copy a state_dict in place.  The whole of it is checked first (keys,
        shapes, dtypes of model, optimizer and generator parts); on any
        mismatch nothing changes and the error lists every one."""
        parts: dict[str, dict] = {"model": {}, "optimizer": {}, "rng": {}}
        foreign = []
        for k, v in state.items():
            head, _, rest = k.partition(".")
            if head in parts:
                parts[head][rest] = v
            else:
                foreign.append(k)
        gens = self.generators
        # No signature staged yet (no annotations, no call): the generator
        # states are set when the first one is.
        deferred = not gens and not self._table and bool(parts["rng"])
        owners = [("model.", self.model.state_dict()), ("optimizer.", self.optimizer.state_dict())]
        if not deferred:
            owners.append(("rng.", OrderedDict((str(i), g.state) for i, g in enumerate(gens))))
        missing, unexpected, wrong = [], list(foreign), []
        for (prefix, own), part in zip(owners, parts.values()):
            m, u, w = state_problems(own, part, prefix)
            missing += m
            unexpected += u
            wrong += w
        raise_state_problems("load_state_dict", missing, unexpected, wrong)
        for (_, own), part in zip(owners, parts.values()):
            copy_state(own, part)
        for a in self.scratch_arrays:  # a checkpoint starts a new accumulation
            a[...] = 0
        if deferred:
            self._pending_rng = parts["rng"]

    @staticmethod
    def _set_rng(gens, states) -> None:
        if sorted(states) != [str(i) for i in range(len(gens))]:
            raise KeyError(f"load_state_dict: expected {len(gens)} generator state(s), got keys {sorted(states)}")
        for i, g in enumerate(gens):
            g.set_state(states[str(i)])

    def save(self, path) -> None:
        """Write the state_dict to an .npz file (between updates: a checkpoint
        holds no half-accumulated gradients).  A data-parallel step saves from
        rank 0 only, and every rank returns once the file is complete."""
        if self.pending:
            raise ValueError(f"{self.name}.save: {self.pending} of {self.accumulate} accumulated micro-batches are "
                             "not applied yet; save after the call that completes the update")
        if self.data_parallel:
            if distributed.rank() == 0:
                save(self.state_dict(), path)
            distributed.barrier()
        else:
            save(self.state_dict(), path)

    def load(self, path) -> None:
        """Read a checkpoint written by `save`, by any number of ranks: a
        data-parallel step reads it on rank 0 and broadcasts it."""
        if self.data_parallel and distributed.world_size() > 1:
            if distributed.rank() == 0:
                self.load_state_dict(load(path))
            distributed.broadcast(self.synchronized_arrays())
        else:
            self.load_state_dict(load(path))


def train_step(model, loss_fn, optimizer, clip_grad_norm=None, clip_grad_value=None, has_aux=False, *,
               name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH, accumulate=1,
               data_parallel=False) -> TrainStep:
    """Compile one training step of `model`: `loss_fn(model, *inputs)` with its
    inputs annotated after `model`, value_and_grad over the optimizer's
    parameters, optional clipping (torch.nn.utils.clip_grad_norm_ /
    clip_grad_value_ semantics), then `optimizer`'s update, in place.

    accumulate=K: each call adds its gradients and returns its own loss; every
    K-th call updates once with the mean of the K gradients.
    data_parallel=True: under MPI (lt.distributed) the gradients are averaged
    over the ranks before clipping and the update, as DistributedDataParallel
    does, so every rank applies the same update; an ordinary step outside MPI."""
    return TrainStep(model, loss_fn, optimizer, clip_grad_norm, clip_grad_value, has_aux, name, arena_bytes, max_depth,
                     accumulate, data_parallel)


def save(state: dict, path) -> None:
    """Write a dict of arrays (a state_dict) to an .npz file at exactly `path`
    (no suffix added), atomically: temporary file, fsync, rename."""
    save_arrays(path, state)


def load(path) -> "OrderedDict[str, np.ndarray]":
    """Read a dict of arrays written by `save` (`path` or `path`.npz).  A file
    that is not such a checkpoint is a ValueError naming it; NaN or Inf in it
    gives a warning naming the arrays."""
    return OrderedDict(read_arrays(path))
