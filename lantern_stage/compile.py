"""`lt.compile`: stage a function on its annotated inputs, generate C++,
build it, and call it with numpy arrays."""
from __future__ import annotations

import functools
import numbers

from .build import build
from .passes import run_passes
from .program import input_specs, output_layout, render_module, stage
from .runtime import DEFAULT_ARENA_BYTES, DEFAULT_MAX_DEPTH, EntryPoint, Library
from .tree import tree_unflatten


class CompiledFunction:
    """The result of `lt.compile`.  Staged on first use of `.ir`,
    `.cpp_source` or a call; built (or found in the cache) on first call."""

    def __init__(self, fn, name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH):
        functools.update_wrapper(self, fn)
        self.fn = fn
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"lt.compile: name must be a non-empty string, got {name!r}")
        self.name = name or fn.__name__
        self.arena_bytes = _option("arena_bytes", arena_bytes, 1, "a number of bytes, e.g. 1 << 30")
        self.max_depth = _option("max_depth", max_depth, 0, "a number of recursion levels")
        self._program = None
        self._source = None
        self._entry = None

    @property
    def program(self):
        if self._program is None:
            program = stage(self.fn, self.name, input_specs(self.fn))
            run_passes(program)
            self._program = program
        return self._program

    @property
    def ir(self) -> str:
        """The staged CPS IR, as text."""
        return self.program.format_ir()

    @property
    def cpp_source(self) -> str:
        if self._source is None:
            self._source = render_module([self.program])
        return self._source

    @property
    def entry(self) -> EntryPoint:
        if self._entry is None:
            path = build(self.cpp_source)
            p = self.program
            library = Library.load(str(path), [p.symbol])
            self._entry = EntryPoint(
                library, p.symbol, self.name, [s for s, _ in p.inputs], output_layout(p),
                functools.partial(tree_unflatten, p.out_tree), self.arena_bytes, self.max_depth,
                [(h, v.shape, v.dtype) for h, v in p.captures],
            )
        return self._entry

    @property
    def last_peak_bytes(self) -> int:
        """Peak arena bytes used by the last call."""
        return self._entry.last_peak_bytes if self._entry else 0

    def __call__(self, *args, **kwargs):
        return self.entry(*args, **kwargs)


def _option(name: str, value, low: int, what: str) -> int:
    """An integer option that C++ receives as int64: checked here, not at the first call."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"lt.compile: {name} must be an int ({what}), got {type(value).__name__} {value!r}")
    if not low <= int(value) < 2**63:
        raise ValueError(f"lt.compile: {name}={value} is out of range [{low}, 2**63)")
    return int(value)


def compile(fn=None, *, name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH):  # noqa: A001
    """Decorator: `@lt.compile` or `@lt.compile(arena_bytes=...)`."""
    if fn is None:
        return functools.partial(compile, name=name, arena_bytes=arena_bytes, max_depth=max_depth)
    return CompiledFunction(fn, name, arena_bytes, max_depth)
