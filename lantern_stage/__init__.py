"""lantern_stage: a staging compiler for differentiable programs.

Write a model against staged tensors (`Rep`), and `lt.compile` stages it into
a CPS IR in which reverse-mode AD is done by callbacks, generates C++ (loops
and OpenBLAS), compiles it with g++ and loads it through cffi.

`__all__` is the public API (README.md, "API reference", gives each name's
meaning); `dir(lantern_stage)` shows only it.
"""
__version__ = "0.1.0"

from .api import *  # noqa: F401,F403
from .api import abs, max, min, sum  # noqa: F401,A004 - numpy's names, shadowing on purpose
from .autodiff import grad, hessian, jacfwd, jacrev, jvp, value_and_grad, vjp  # noqa: F401
from .build import CompileError  # noqa: F401
from .compile import CompiledFunction, compile  # noqa: F401,A004
from .generator import Generator, default_generator, manual_seed  # noqa: F401
from .control import cond, fori_loop, recursive, while_loop  # noqa: F401
from .runtime import ArenaExhausted  # noqa: F401
from .staging import Rep, StagingError  # noqa: F401
from .types import Float, Int, IntArray, Tensor  # noqa: F401
from . import distributed, nn, optim  # noqa: F401,E402
from .train import TrainStep, load, save, train_step  # noqa: F401,E402
from .export import export  # noqa: F401,E402

__all__ = [
    # staged types and input annotations
    "Tensor", "Int", "Float", "IntArray", "Rep",
    # compiling
    "compile", "CompiledFunction", "train_step", "TrainStep", "export",
    # differentiation
    "grad", "value_and_grad", "jvp", "vjp", "jacfwd", "jacrev", "hessian",
    # control flow
    "cond", "fori_loop", "while_loop", "recursive",
    # elementwise
    "add", "sub", "mul", "div", "neg", "power", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs",
    "maximum", "minimum", "where", "cast", "erf", "sin", "cos", "log1p", "gelu", "silu", "softplus",
    # linear algebra, reductions, shapes
    "matmul", "einsum", "sum", "mean", "max", "min", "argmax", "var", "std", "logsumexp", "reshape", "transpose", "concat", "stack", "split",
    "full", "zeros", "ones", "zeros_like", "ones_like", "arange", "tril", "triu", "one_hot",
    # neural-network ops and losses
    "linear", "conv2d", "max_pool2d", "avg_pool2d", "dropout", "embedding", "softmax", "log_softmax",
    "nll_loss", "cross_entropy", "mse_loss", "assign", "layer_norm", "batch_norm",
    # random numbers, checkpoints
    "Generator", "default_generator", "manual_seed", "save", "load",
    # errors
    "StagingError", "CompileError", "ArenaExhausted",
    # submodules
    "nn", "optim", "distributed",
]


def __dir__():
    # The public API and the module's dunders; internals (lantern_stage.api,
    # .staging, ...) stay importable but out of sight.
    return sorted(__all__ + [n for n in globals() if n.startswith("__") and n.endswith("__")])
