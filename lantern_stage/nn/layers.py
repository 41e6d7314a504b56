"""Common layers, with PyTorch's parameter names, layouts and default
initialisation (so a PyTorch state_dict loads as is)."""
from __future__ import annotations

import math

import numpy as np

from .. import api as F
from . import init
from .module import Module, Parameter


def _empty(*shape) -> Parameter:
    return Parameter(np.zeros(shape, dtype=np.float32))


def _uniform_bias(bias: Parameter | None, fan_in: int) -> None:
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(bias, -bound, bound)


class Linear(Module):
    """y = x @ weight.T + bias; weight [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features)
        self.register_parameter("bias", _empty(out_features) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        _uniform_bias(self.bias, self.in_features)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """NCHW convolution; weight [out_channels, in_channels, kh, kw]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        kh, kw = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.weight = _empty(out_channels, in_channels, kh, kw)
        self.register_parameter("bias", _empty(out_channels) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        _uniform_bias(self.bias, self.in_channels * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class Embedding(Module):
    """Rows of weight [num_embeddings, embedding_dim] at int32 indices."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _empty(num_embeddings, embedding_dim)
        init.normal_(self.weight)

    def forward(self, idx):
        return F.embedding(self.weight, idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LSTMCell(Module):
    """PyTorch's LSTMCell: weight_ih [4H, I], weight_hh [4H, H], bias_ih,
    bias_hh [4H], gates stacked i, f, g, o; forward(x, (h, c)) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = _empty(4 * hidden_size, input_size)
        self.weight_hh = _empty(4 * hidden_size, hidden_size)
        self.register_parameter("bias_ih", _empty(4 * hidden_size) if bias else None)
        self.register_parameter("bias_hh", _empty(4 * hidden_size) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def forward(self, x, state=None):
        if state is None:
            zeros = F.zeros(*(x.shape[:-1] + (self.hidden_size,)))
            state = (zeros, zeros)
        h, c = state
        # PyTorch's CPU order: (h W_hh^T + b_hh) + (x W_ih^T + b_ih).
        gates = F.linear(h, self.weight_hh, self.bias_hh) + F.linear(x, self.weight_ih, self.bias_ih)
        i, f, g, o = F.split(gates, self.hidden_size, axis=-1)
        c = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
        h = F.sigmoid(o) * F.tanh(c)
        return h, c

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class GRUCell(Module):
    """PyTorch's GRUCell: weight_ih [3H, I], weight_hh [3H, H], bias_ih,
    bias_hh [3H], gates stacked r, z, n; forward(x, h) -> h'.
        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr),  z likewise,
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)),  h' = (1 - z) n + z h."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = _empty(3 * hidden_size, input_size)
        self.weight_hh = _empty(3 * hidden_size, hidden_size)
        self.register_parameter("bias_ih", _empty(3 * hidden_size) if bias else None)
        self.register_parameter("bias_hh", _empty(3 * hidden_size) if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def forward(self, x, h=None):
        if h is None:
            h = F.zeros(*(x.shape[:-1] + (self.hidden_size,)))
        xr, xz, xn = F.split(F.linear(x, self.weight_ih, self.bias_ih), self.hidden_size, axis=-1)
        hr, hz, hn = F.split(F.linear(h, self.weight_hh, self.bias_hh), self.hidden_size, axis=-1)
        r = F.sigmoid(xr + hr)
        z = F.sigmoid(xz + hz)
        n = F.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class Dropout(Module):
    """Zeroes elements with probability p in training mode (`.train()`), the
    identity in `.eval()` mode.  The mode is read when the model is staged."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability {p} not in [0, 1]")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order; indexable, sub-modules named "0", "1", ..."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class _Function(Module):
    fn = None

    def forward(self, x):
        return type(self).fn(x)


class ReLU(_Function):
    fn = staticmethod(F.relu)


class GELU(Module):
    """torch.nn.GELU(approximate="none" | "tanh")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(_Function):
    fn = staticmethod(F.silu)


class Tanh(_Function):
    fn = staticmethod(F.tanh)


class Sigmoid(_Function):
    fn = staticmethod(F.sigmoid)


class Flatten(Module):
    """Flattens every dimension after the first (the batch)."""

    def forward(self, x):
        return F.reshape(x, (x.shape[0], -1))


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride)


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride)
