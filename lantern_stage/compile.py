"""`lt.compile`: stage a function on its inputs' types, generate C++, build
it, and call it with numpy arrays.

The types come from the annotations (`x: lt.Tensor[32, 10]`, a dict / tuple
/ list of them for a nested input), which fix the signature; a parameter
without annotation takes its type from each call's argument, and every new
signature (shapes, dtypes, nesting) is staged and built once, then kept in an
in-process table (the built library is also in the on-disk cache).
`LANTERN_LOG=recompile` reports each signature compiled, and why, on stderr.
"""
from __future__ import annotations

import functools
import inspect
import numbers
import os
import sys

import numpy as np

from .build import build
from .passes import run_passes
from .program import Program, output_layout, parameter_types, render_module, stage
from .runtime import DEFAULT_ARENA_BYTES, DEFAULT_MAX_DEPTH, EntryPoint, Library, check_arg, flatten_arguments
from .tree import tree_flatten, tree_unflatten
from .types import format_type, value_type


def _log_enabled(topic: str) -> bool:
    return topic in os.environ.get("LANTERN_LOG", "").replace(",", " ").split()


def _signature_text(specs) -> str:
    return ", ".join(f"{n}: {format_type(t)}" for n, t in specs)


def _signature_key(specs) -> tuple:
    """A hashable form of (name, type tree) pairs."""
    out = []
    for n, t in specs:
        leaves, tree = tree_flatten(t)
        out.append((n, tree, tuple(leaves)))
    return tuple(out)


_SCALARS = (bool, int, float)


def _layout_key(args) -> tuple | None:
    """(shape, dtype) per array and the type per number, or None when an
    argument is anything else (a nesting: it needs the full inference)."""
    key = []
    for a in args:
        if type(a) is np.ndarray:
            key.append((a.shape, a.dtype.num))
        elif type(a) in _SCALARS:
            key.append(type(a))
        else:
            return None
    return tuple(key)


class Specialization:
    """One signature of a compiled function: its staged program, C++ source
    and loaded entry point, each made on first use."""

    def __init__(self, owner: "CompiledFunction", specs):
        self.owner = owner
        self.specs = specs  # (name, type or nesting of types) per parameter
        self.signature = _signature_text(specs)
        self._program = None
        self._source = None
        self._entry = None
        self._other_modes: list = []  # (program, source, entry) staged under other train/eval modes

    @property
    def program(self) -> Program:
        if self._program is None:
            program = stage(self.owner._staged_function(), self.owner.name, self.specs)
            run_passes(program)
            self._program = program
        return self._program

    @property
    def cpp_source(self) -> str:
        if self._source is None:
            self._source = render_module([self.program])
        return self._source

    @property
    def entry(self) -> EntryPoint:
        if self._entry is None:
            path = build(self.cpp_source)
            p, owner = self.program, self.owner
            library = Library.load(str(path), [p.symbol])
            self._entry = EntryPoint(
                library, p.symbol, owner.name, [s for s, _ in p.inputs], output_layout(p),
                functools.partial(tree_unflatten, p.out_tree), owner.arena_bytes, owner.max_depth,
                [(h, v.shape, v.dtype) for h, v in p.captures], p.argument_trees,
            )
            owner._loaded(self._entry)
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


class CompiledFunction:
    """The result of `lt.compile`: call it with numpy arrays (nested dicts /
    tuples / lists of them for nested inputs).  Staged on first use of `.ir`,
    `.cpp_source` or a call; built (or found in the cache) on first call.

    With every parameter annotated the signature is fixed.  Otherwise each new
    signature of the un-annotated arguments is compiled once on the call that
    first uses it; `.signatures` lists the signatures compiled so far, and
    `.ir`, `.cpp_source`, `.program` are those of the most recent call's one."""

    def __init__(self, fn, name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH):
        functools.update_wrapper(self, fn)
        self.fn = fn
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"lt.compile: name must be a non-empty string, got {name!r}")
        self.name = name or fn.__name__
        self.arena_bytes = _option("arena_bytes", arena_bytes, 1, "a number of bytes, e.g. 1 << 30")
        self.max_depth = _option("max_depth", max_depth, 0, "a number of recursion levels")
        self._parameters = None
        self._table: dict[tuple, Specialization] = {}  # signature key -> its compiled form
        self._by_layout: dict[tuple, Specialization] = {}  # _layout_key of positional calls -> the same
        self._current: Specialization | None = None  # the one the last call used

    def _loaded(self, entry: EntryPoint) -> None:
        """Called once per signature, when its library is loaded (TrainStep joins the MPI ranks)."""

    # What is staged, and the parameters it takes: TrainStep stages another function.
    def _staged_function(self):
        return self.fn

    def _signature_function(self):
        return self.fn

    @property
    def parameters(self) -> list[tuple[str, object]]:
        """(name, annotated type or None) per parameter."""
        if self._parameters is None:
            self._parameters = parameter_types(self._signature_function())
        return self._parameters

    @functools.cached_property
    def _python_signature(self) -> inspect.Signature:
        return inspect.signature(self._signature_function())

    @functools.cached_property
    def is_fixed(self) -> bool:
        """Whether annotations fix the signature (every parameter is annotated)."""
        return all(t is not None for _, t in self.parameters)

    @property
    def signatures(self) -> list[str]:
        """The signatures compiled so far, oldest first (the annotated one when fixed)."""
        if self.is_fixed:
            self._current_specialization()
        return [s.signature for s in self._table.values()]

    def specialize(self, *args, **kwargs) -> Specialization:
        """The compiled form for these arguments (staged and built on first
        use): un-annotated parameters take the types of their arguments,
        annotated ones their annotation."""
        return self._resolve(args, kwargs)[0]

    def _resolve(self, args, kwargs) -> tuple[Specialization, dict]:
        """(the specialization for a call's arguments, the arguments by parameter name)."""
        try:
            bound = self._python_signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}(): {e}") from None
        bound.apply_defaults()
        values = bound.arguments
        if self.is_fixed:
            return self._current_specialization(), values
        specs = [(n, value_type(values[n], f"{self.name}() argument {n!r}") if t is None else t)
                 for n, t in self.parameters]
        key = _signature_key(specs)
        found = self._table.get(key)
        if found is None:
            found = self._table[key] = Specialization(self, specs)
            if _log_enabled("recompile"):
                print(f"lantern: compiling {self.name}({found.signature}): {self._why(specs)}", file=sys.stderr)
        self._current = found
        return found, values

    def _why(self, specs) -> str:
        """Why `specs` is compiled: the first call, or what differs from the last signature."""
        if self._current is None:
            return "first call"
        old = dict(self._current.specs)
        changes = [f"{n} {format_type(old[n])} -> {format_type(t)}" for n, t in specs if old[n] != t]
        return f"new signature #{len(self._table)}, {'; '.join(changes)}"

    def check_example(self, *args, **kwargs) -> Specialization:
        """`specialize`, after checking the arguments against the signature
        (without building anything): what `lt.export(..., example_args=)` does."""
        found, values = self._resolve(args, kwargs)
        program = found.program
        leaves = flatten_arguments(self.name, program.argument_trees, [values[n] for n, _ in program.arguments])
        for (spec, _), value in zip(program.inputs, leaves):
            check_arg(self.name, spec, value)
        return found

    def _current_specialization(self) -> Specialization:
        if self._current is not None:  # when fixed, the only one
            self._current.select_mode()
            return self._current
        if self.is_fixed:
            specs = self.parameters
            self._current = self._table[_signature_key(specs)] = Specialization(self, specs)
            if _log_enabled("recompile"):
                print(f"lantern: compiling {self.name}({self._current.signature}): annotated", file=sys.stderr)
            return self._current
        missing = ", ".join(repr(n) for n, t in self.parameters if t is None)
        raise TypeError(
            f"{self.name}: parameter(s) {missing} have no annotation, so their types come from the "
            "arguments of a call, and there was none yet: call it first, or annotate them "
            "(e.g. lt.Tensor[32, 10]); for lantern compile, lt.export(..., example_args=(...))"
        )

    @property
    def program(self) -> Program:
        return self._current_specialization().program

    @property
    def ir(self) -> str:
        """The staged CPS IR, as text (of the most recent call's signature)."""
        return self.program.format_ir()

    @property
    def cpp_source(self) -> str:
        """The generated C++ (of the most recent call's signature)."""
        return self._current_specialization().cpp_source

    @property
    def entry(self) -> EntryPoint:
        return self._current_specialization().entry

    @property
    def last_peak_bytes(self) -> int:
        """Peak arena bytes used by the last call."""
        current = self._current
        return current._entry.last_peak_bytes if current is not None and current._entry else 0

    def _call_entry(self, args, kwargs):
        if self.is_fixed:  # the signature is known: no binding, the entry point checks
            return self.entry(*args, **kwargs)
        # A call with plain arrays and numbers by position, seen before, skips
        # binding and type inference (a tenth of the call's time otherwise).
        layout = None if kwargs or len(args) != len(self.parameters) else _layout_key(args)
        found = self._by_layout.get(layout) if layout is not None else None
        if found is not None:
            self._current = found
            found.select_mode()
            return found.entry(*args)
        found, values = self._resolve(args, kwargs)
        if layout is not None:
            self._by_layout[layout] = found
        found.select_mode()
        return found.entry(*(values[n] for n, _ in self.parameters))

    def __call__(self, *args, **kwargs):
        return self._call_entry(args, kwargs)


def _option(name: str, value, low: int, what: str) -> int:
    """An integer option that C++ receives as int64: checked here, not at the first call."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"lt.compile: {name} must be an int ({what}), got {type(value).__name__} {value!r}")
    if not low <= int(value) < 2**63:
        raise ValueError(f"lt.compile: {name}={value} is out of range [{low}, 2**63)")
    return int(value)


def compile(fn=None, *, name=None, arena_bytes=DEFAULT_ARENA_BYTES, max_depth=DEFAULT_MAX_DEPTH):  # noqa: A001
    """Stage, build and load `fn` (decorator: `@lt.compile`, `@lt.compile(arena_bytes=...)`).

    Inputs annotated `lt.Tensor[...]` / `lt.Int` / `lt.IntArray` (or dicts /
    tuples / lists of these) fix the signature; without annotations, each call
    with new shapes compiles a new signature (see `CompiledFunction`)."""
    if fn is None:
        return functools.partial(compile, name=name, arena_bytes=arena_bytes, max_depth=max_depth)
    return CompiledFunction(fn, name, arena_bytes, max_depth)
