"""`lt.compile`: stage a function on its annotated inputs, generate C++,
build it, and call it with numpy arrays."""
from __future__ import annotations

import functools

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
        self.name = name or fn.__name__
        self.arena_bytes = arena_bytes
        self.max_depth = max_depth
        self._program = None
        self._source = None
        self._entry = None
        self._other_modes: list = []  # (program, source, entry) staged under other train/eval modes

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

    def select_mode(self) -> None:
        """Keep one entry per combination of train/eval modes of the modules
        the staged code read (`model.train()` / `model.eval()`): when one has
        changed since staging, switch to the entry staged under the current
        modes, staging it if there is none yet."""
        if self._program is None or self._program.modes_hold():
            return
        self._other_modes.append((self._program, self._source, self._entry))
        for k, (program, _, _) in enumerate(self._other_modes):
            if program.modes_hold():
                self._program, self._source, self._entry = self._other_modes.pop(k)
                return
        self._program = self._source = self._entry = None

    @property
    def last_peak_bytes(self) -> int:
        """Peak arena bytes used by the last call."""
        return self._entry.last_peak_bytes if self._entry else 0

    def __call__(self, *args, **kwargs):
        self.select_mode()
        return self.entry(*args, **kwargs)


def compile(fn=None, *, name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH):  # noqa: A001
    """Decorator: `@lt.compile` or `@lt.compile(arena_bytes=...)`."""
    if fn is None:
        return functools.partial(compile, name=name, arena_bytes=arena_bytes, max_depth=max_depth)
    return CompiledFunction(fn, name, arena_bytes, max_depth)
