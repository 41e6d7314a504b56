"""`Parameter` and `Module`, PyTorch-style.

A Parameter holds a float32 numpy array (`.data`).  Staged code that uses it
captures it: the array is passed to C++ by pointer on every call, so a
compiled training step updates it in place and a compiled inference function
over the same model reads the same memory.  Modules register Parameters,
buffers (plain numpy arrays) and sub-modules by attribute assignment.

`functional_call(module, {name: value}, *args)` runs a module with some
parameters replaced by staged values; `lt.train_step` uses it to run the
model on the parameters it differentiates.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..ops.registry import as_rep
from ..staging import current, is_staging


class Parameter:
    """A trainable float32 array.  In staged code it behaves as a staged
    tensor (operators, `.T`, `.reshape`, ...); outside, use `.data`."""

    __array_priority__ = 1000  # `ndarray op Parameter` defers to our reflected operator
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = True):
        self.data = data
        self.requires_grad = requires_grad
        self.lantern_name = "param"

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = np.ascontiguousarray(np.array(value, dtype=np.float32, copy=True))

    def lantern_array(self) -> np.ndarray:
        return self._data

    def numpy(self) -> np.ndarray:
        return self._data

    def __array__(self, dtype=None, copy=None):
        """`np.asarray(param)` is the live array itself (no copy)."""
        if copy or (dtype is not None and np.dtype(dtype) != self._data.dtype):
            return np.array(self._data, dtype=dtype, copy=True)
        return self._data

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def dtype(self) -> str:
        return "float32"

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Parameter({self.lantern_name}: float32{list(self.shape)})"

    def __getattr__(self, name):
        # Staged-tensor methods (`.T`, `.reshape`, `.sum`, ...) while staging.
        if name.startswith("_") or not is_staging():
            raise AttributeError(f"Parameter has no attribute {name!r} outside staged code (its array is .data)")
        return getattr(as_rep(self), name)


def _delegate(name):
    def method(self, *args):
        return getattr(as_rep(self), name)(*args)

    method.__name__ = name
    return method


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
              "__rtruediv__", "__matmul__", "__rmatmul__", "__pow__", "__neg__", "__pos__", "__getitem__"):
    setattr(Parameter, _name, _delegate(_name))


class Module:
    """Base class of layers and models: assign Parameters, arrays (via
    `register_buffer`) and Modules as attributes; define `forward`."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ attributes
    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        for store in ("_parameters", "_buffers", "_modules"):
            d[store].pop(name, None)
        if isinstance(value, Parameter):
            d.pop(name, None)
            value.lantern_name = name
            d["_parameters"][name] = value
        elif isinstance(value, Module):
            d.pop(name, None)
            d["_modules"][name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__[store]:
                del self.__dict__[store][name]
                return
        object.__delattr__(self, name)

    @property
    def training(self) -> bool:
        """True in training mode (the default, `.train()`), False after
        `.eval()`.  Staged code that reads it is specialised to it: the
        builder records the read, and a compiled function stages (and
        builds) another entry when a mode it read has changed."""
        origin = self.__dict__.get("_bound_from", self)
        mode = origin.__dict__["_training"]
        if is_staging():
            current().record_mode(origin, mode)
        return mode

    @training.setter
    def training(self, mode: bool) -> None:
        self.__dict__["_training"] = bool(mode)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter, got {type(param).__name__}")
        if param is None:
            self.__dict__["_parameters"].pop(name, None)
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, array, persistent: bool = True) -> None:
        """A non-trained array of the module (in its state_dict when persistent)."""
        for store in ("_parameters", "_modules"):
            self.__dict__[store].pop(name, None)
        self.__dict__.pop(name, None)
        arr = np.asarray(array)
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            arr = arr.copy()
        self.__dict__["_buffers"][name] = arr
        if not persistent:
            self.__dict__.setdefault("_non_persistent", set()).add(name)

    def add_module(self, name: str, module: "Module") -> None:
        setattr(self, name, module)

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = ""):
        """(dotted name, module) of this module and every sub-module, each once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = list(m._modules.items())
            for child_name, child in reversed(children):
                stack.append((f"{name}.{child_name}" if name else child_name, child))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for pname, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self, recurse: bool = True):
        return (p for _, p in self.named_parameters(recurse=recurse))

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for bname, b in m._buffers.items():
                yield (f"{mname}.{bname}" if mname else bname), b

    def buffers(self, recurse: bool = True):
        return (b for _, b in self.named_buffers(recurse=recurse))

    # ------------------------------------------------------------ state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """name -> array of every parameter and persistent buffer.  The arrays
        are the live ones (as PyTorch's tensors share storage): copy them to
        keep a snapshot."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            skip = m.__dict__.get("_non_persistent", set())
            for pname, p in m._parameters.items():
                out[f"{mname}.{pname}" if mname else pname] = p.data
            for bname, b in m._buffers.items():
                if bname not in skip:
                    out[f"{mname}.{bname}" if mname else bname] = b
        return out

    def load_state_dict(self, state, strict: bool = True):
        """Copy arrays into the parameters and buffers in place (compiled
        functions keep seeing the same memory).  Returns (missing, unexpected).
        Everything is checked first: on any mismatch nothing changes."""
        own = self.state_dict()
        missing, unexpected, wrong = state_problems(own, state)
        raise_state_problems("load_state_dict", missing if strict else [], unexpected if strict else [], wrong)
        copy_state(own, state)
        return missing, unexpected

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    # ------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            inner = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {inner}")
        if len(lines) == 1:
            return lines[0] + ")"
        return "\n".join(lines) + "\n)"


def state_problems(own: dict, state, prefix: str = "") -> tuple[list, list, list]:
    """What keeps `state` from being copied into the arrays `own` (key ->
    live array): (missing keys, unexpected keys, descriptions of arrays whose
    shape or dtype does not fit), keys shown with `prefix`."""
    missing = [prefix + k for k in own if k not in state]
    unexpected = [prefix + k for k in state if k not in own]
    wrong = []
    for k, dst in own.items():
        if k not in state:
            continue
        src = np.asarray(state[k])
        if src.shape != dst.shape:
            wrong.append(f"{prefix}{k} has shape {src.shape}, expected {dst.shape}")
        elif not np.can_cast(src.dtype, dst.dtype, casting="same_kind"):
            wrong.append(f"{prefix}{k} has dtype {src.dtype}, expected {dst.dtype}")
    return missing, unexpected, wrong


def raise_state_problems(what: str, missing: list, unexpected: list, wrong: list) -> None:
    """One error listing every problem: KeyError when keys are missing or
    unexpected, else ValueError."""
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing or unexpected:
        parts.append(f"missing keys {missing}, unexpected keys {unexpected}")
    parts += wrong
    message = f"{what}: nothing was loaded: " + "; ".join(parts)
    raise (KeyError if missing or unexpected else ValueError)(message)


def copy_state(own: dict, state) -> None:
    """Copy into the live arrays in place (after `state_problems` found none)."""
    for k, dst in own.items():
        if k in state:
            np.copyto(dst, np.asarray(state[k]), casting="same_kind")


def bind(module: Module, values: dict) -> Module:
    """A structural copy of `module` in which each Parameter `p` with id(p)
    in `values` is replaced by values[id(p)] (a staged tensor).  Sub-modules
    are copied (shared ones once); nothing of the original changes."""
    copies: dict[int, Module] = {}
    order = [m for _, m in module.named_modules()]
    for m in order:
        new = object.__new__(type(m))
        new.__dict__.update(m.__dict__)
        new.__dict__["_bound_from"] = m.__dict__.get("_bound_from", m)  # whose train/eval mode it has
        params = OrderedDict((k, values.get(id(p), p)) for k, p in m._parameters.items())
        new.__dict__["_parameters"] = params
        copies[id(m)] = new
    for m in order:
        new = copies[id(m)]
        new.__dict__["_modules"] = OrderedDict((k, copies[id(c)]) for k, c in m._modules.items())
    return copies[id(module)]


def functional_call(module: Module, params: dict, *args, **kwargs):
    """torch.func.functional_call: run `module` with the named parameters
    replaced by `params` (name -> staged value or array)."""
    named = dict(module.named_parameters())
    unknown = [k for k in params if k not in named]
    if unknown:
        raise KeyError(f"functional_call: {type(module).__name__} has no parameters {unknown}")
    return bind(module, {id(named[k]): v for k, v in params.items()})(*args, **kwargs)
