"""`lt.optim`: SGD (momentum), Adagrad and Adam with PyTorch's update
formulas, and gradient clipping with torch.nn.utils' semantics.

An optimizer's state (accumulators, moments, the step counter, the learning
rate) lives in numpy arrays that staged code captures, like parameters: the
update is staged into the training step (`lt.train_step`) and writes
parameters and state in place with `lt.assign`.  `state_dict()` returns the
live arrays, `load_state_dict()` copies into them; changing `opt.lr` between
calls of a compiled step takes effect without recompiling.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import api as F
from .nn.module import Parameter, copy_state, raise_state_problems, state_problems
from .ops.registry import as_rep
from .staging import staging_error


class _State:
    """A named array of optimizer state, captured by staged code."""

    def __init__(self, array: np.ndarray, name: str):
        self.array = array
        self.lantern_name = name

    def lantern_array(self) -> np.ndarray:
        return self.array


class Optimizer:
    """Base class: `params` is an iterable of Parameters (or of (name,
    Parameter) pairs); subclasses declare per-parameter state with
    `_state_like` and stage one parameter's update in `_update`."""

    def __init__(self, params=None, lr: float = 1e-3):
        # `Adagrad(lr=0.1)` / `SGD(0.05)`, as the train_step contract writes
        # them: no parameters yet; lt.train_step binds the model's.
        if isinstance(params, (int, float)) and not isinstance(params, bool):
            params, lr = None, float(params)
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        self._initial_lr = lr
        self.params: list[Parameter] | None = None
        self.param_names: list[str] = []
        self._state: "OrderedDict[str, _State]" = OrderedDict()
        if params is not None:
            self.bind(params)

    def bind(self, params) -> None:
        """Attach the parameters to optimise (Parameters, or (name, Parameter)
        pairs) and create the optimizer state for them."""
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if all(isinstance(p, tuple) and len(p) == 2 for p in params):
            self.param_names = [n for n, _ in params]
            params = [p for _, p in params]
        else:
            self.param_names = [str(i) for i in range(len(params))]
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: expected lt.nn.Parameter objects, got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter appears twice")
        self.params = params
        self._state = OrderedDict()
        self._scalar("lr", self._initial_lr)
        self._init_state()

    def _init_state(self) -> None:
        """Subclasses create their per-parameter state here."""

    # ------------------------------------------------------------ state
    def _scalar(self, key: str, value: float) -> _State:
        self._state[key] = _State(np.array(value, dtype=np.float32), key)
        return self._state[key]

    def _state_like(self, kind: str, value: float = 0.0) -> list[_State]:
        out = []
        for i, p in enumerate(self.params):
            key = f"{i}.{kind}"
            self._state[key] = _State(np.full(p.shape, value, dtype=np.float32), f"{kind}_{self.param_names[i]}")
            out.append(self._state[key])
        return out

    @property
    def lr(self) -> float:
        return float(self._state["lr"].array) if "lr" in self._state else self._initial_lr

    @lr.setter
    def lr(self, value: float) -> None:
        if "lr" in self._state:
            self._state["lr"].array[...] = value
        self._initial_lr = value

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """key -> live array: "lr", "step" (if any), "<i>.<kind>" per parameter i."""
        return OrderedDict((k, s.array) for k, s in self._state.items())

    def load_state_dict(self, state) -> None:
        """Copy into the live state arrays; checked whole first, so on any
        mismatch (another optimizer's state, say) nothing changes."""
        own = self.state_dict()
        raise_state_problems(f"{type(self).__name__}.load_state_dict", *state_problems(own, state))
        copy_state(own, state)

    # ------------------------------------------------------------ staged update
    def update(self, grads) -> None:
        """Stage the update of every parameter from its gradient (same order
        as `params`): writes parameters and state in place."""
        grads = list(grads)
        if len(grads) != len(self.params):
            raise staging_error(f"{type(self).__name__}: {len(grads)} gradients for {len(self.params)} parameters")
        self._begin_step()
        lr = as_rep(self._state["lr"])
        for i, (p, g) in enumerate(zip(self.params, grads)):
            self._update(i, p, g, lr)

    def _begin_step(self) -> None:
        pass

    def _update(self, i: int, p: Parameter, g, lr) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        n = "unbound" if self.params is None else f"{len(self.params)} parameters"
        return f"{type(self).__name__}({n}, lr={self.lr})"


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0): with momentum, buf = momentum * buf + g
    (buf = g on the first step, the same thing from a zero buffer), then
    p -= lr * (nesterov ? g + momentum * buf : buf)."""

    def __init__(self, params=None, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs a momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        super().__init__(params, lr)

    def _init_state(self):
        self.buffers = self._state_like("momentum_buffer") if self.momentum else None

    def _update(self, i, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = F.assign(self.buffers[i], self.momentum * as_rep(self.buffers[i]) + g)
            g = g + self.momentum * buf if self.nesterov else buf
        F.assign(p, p - lr * g)


class Adagrad(Optimizer):
    """torch.optim.Adagrad: sum += g*g; p -= clr * g / (sqrt(sum) + eps),
    clr = lr / (1 + (step - 1) * lr_decay)."""

    def __init__(self, params=None, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        self.lr_decay, self.weight_decay, self.eps = lr_decay, weight_decay, eps
        self.initial_accumulator_value = initial_accumulator_value
        super().__init__(params, lr)

    def _init_state(self):
        self.sums = self._state_like("sum", self.initial_accumulator_value)
        self.step = self._scalar("step", 0.0)

    def _begin_step(self):
        step = F.assign(self.step, as_rep(self.step) + 1.0)
        lr = as_rep(self._state["lr"])
        self._clr = lr / (1.0 + (step - 1.0) * self.lr_decay) if self.lr_decay else lr

    def _update(self, i, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        s = F.assign(self.sums[i], as_rep(self.sums[i]) + g * g)
        F.assign(p, p - self._clr * (g / (F.sqrt(s) + self.eps)))


class Adam(Optimizer):
    """torch.optim.Adam (amsgrad off): m = lerp(m, g, 1 - beta1),
    v = beta2 v + (1 - beta2) g^2, p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
    with bias corrections bc_k = 1 - beta_k^step.  bc_k is kept as state and
    advanced as bc <- beta bc + (1 - beta): in float32 that is exact to an ulp,
    where 1 - beta**step would lose digits to cancellation at small steps."""

    def __init__(self, params=None, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"invalid betas {betas}")
        super().__init__(params, lr)

    def _init_state(self):
        self.exp_avg = self._state_like("exp_avg")
        self.exp_avg_sq = self._state_like("exp_avg_sq")
        self.step = self._scalar("step", 0.0)
        self.bias_correction = [self._scalar("bias_correction1", 0.0), self._scalar("bias_correction2", 0.0)]

    def _begin_step(self):
        F.assign(self.step, as_rep(self.step) + 1.0)
        (b1, b2), (c1, c2) = self.betas, self.bias_correction
        bc1 = F.assign(c1, b1 * as_rep(c1) + (1.0 - b1))
        bc2 = F.assign(c2, b2 * as_rep(c2) + (1.0 - b2))
        self._step_size = as_rep(self._state["lr"]) / bc1
        self._bc2_sqrt = F.sqrt(bc2)

    def _update(self, i, p, g, lr):
        b1, b2 = self.betas
        if self.weight_decay:
            g = g + self.weight_decay * p
        m0, v0 = as_rep(self.exp_avg[i]), as_rep(self.exp_avg_sq[i])
        m = F.assign(self.exp_avg[i], m0 + (1.0 - b1) * (g - m0))
        v = F.assign(self.exp_avg_sq[i], v0 * b2 + (1.0 - b2) * (g * g))
        denom = F.sqrt(v) / self._bc2_sqrt + self.eps
        F.assign(p, p - self._step_size * (m / denom))


# ---------------------------------------------------------------- clipping
def clip_grad_norm(grads, max_norm: float, eps: float = 1e-6):
    """torch.nn.utils.clip_grad_norm_ (2-norm), staged: every gradient is
    scaled by min(1, max_norm / (total_norm + 1e-6)).  Returns (grads, total_norm)."""
    grads = list(grads)
    norms = [F.sqrt(F.sum(g * g)) for g in grads]
    total = F.sqrt(F.sum(F.stack(norms) ** 2)) if len(norms) > 1 else norms[0]
    coef = F.minimum(float(max_norm) / (total + eps), 1.0)
    return [g * coef for g in grads], total


def clip_grad_value(grads, clip_value: float):
    """torch.nn.utils.clip_grad_value_, staged: clamp to [-clip_value, clip_value]."""
    v = float(clip_value)
    return [F.minimum(F.maximum(g, -v), v) for g in grads]


__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "clip_grad_norm", "clip_grad_value"]
