"""lantern_stage: a staging compiler for differentiable programs.

Write a model against staged tensors (`Rep`), and `lt.compile` stages it into
a CPS IR in which reverse-mode AD is done by callbacks, generates C++ (loops
and OpenBLAS), compiles it with g++ and loads it through cffi.
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
from . import nn, optim  # noqa: F401,E402
from .train import TrainStep, load, save, train_step  # noqa: F401,E402
from .export import export  # noqa: F401,E402
