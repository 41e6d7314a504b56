"""LayerNorm and BatchNorm1d / BatchNorm2d with PyTorch's parameter and
buffer names, defaults and running-statistics rules.

BatchNorm's running statistics are buffers (numpy arrays) that the staged
code captures: in training mode (`model.train()`, the default) the compiled
step normalises with the batch's statistics and updates running_mean,
running_var and num_batches_tracked in place, as PyTorch does; in `.eval()`
mode it normalises with the running statistics.  The mode is read while
staging, and a compiled function keeps one entry per mode."""
from __future__ import annotations

import numpy as np

from .. import api as F
from ..ops.registry import as_rep
from ..staging import staging_error
from .module import Module, Parameter


class LayerNorm(Module):
    """torch.nn.LayerNorm: weight (ones) and bias (zeros) of normalized_shape."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.register_parameter("weight", Parameter(np.ones(shape, np.float32)) if elementwise_affine else None)
        self.register_parameter("bias", Parameter(np.zeros(shape, np.float32)) if elementwise_affine and bias else None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(Module):
    dims: tuple = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.register_parameter("weight", Parameter(np.ones(num_features, np.float32)) if affine else None)
        self.register_parameter("bias", Parameter(np.zeros(num_features, np.float32)) if affine else None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, np.float32))
            self.register_buffer("running_var", np.ones(num_features, np.float32))
            # int64 in PyTorch; int32 here (load_state_dict converts).
            self.register_buffer("num_batches_tracked", np.zeros((), np.int32))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0.0
            self.running_var[...] = 1.0
            self.num_batches_tracked[...] = 0

    def forward(self, x):
        x = as_rep(x)
        if len(x.shape) not in self.dims:
            raise staging_error(f"{type(self).__name__}: expected a {' or '.join(map(str, self.dims))}-D input, "
                                f"got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise staging_error(f"{type(self).__name__}: expected {self.num_features} channels, got shape {x.shape}")
        training = self.training
        factor = 0.0 if self.momentum is None else self.momentum
        if training and self.track_running_stats:
            tracked = F.assign(self.num_batches_tracked, as_rep(self.num_batches_tracked) + 1)
            if self.momentum is None:  # a cumulative moving average
                factor = 1.0 / F.cast(tracked, "float32")
        use_batch_stats = training or self.running_mean is None
        # Without tracking, training and eval both normalise with the batch.
        update = not training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if update else None, self.running_var if update else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """torch.nn.BatchNorm1d over [N, C] or [N, C, L]."""

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """torch.nn.BatchNorm2d over [N, C, H, W]."""

    dims = (4,)
