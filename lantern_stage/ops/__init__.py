"""Every op, declared once: importing this package registers them all."""
from . import elementwise, linalg, loss, nn, reduce, shape  # noqa: F401
from .registry import OPS, Emitter, Op, ShapeError, Placed, apply, as_rep, defop  # noqa: F401
