"""`lt.export`: mark the entry points a model file exports, and compile them
together into one module (what `lantern compile` packages).

    @lt.export                                    # an annotated function
    def predict(x: lt.Tensor[32, 2]): ...

    step = lt.export(lt.train_step(model, loss_fn, opt), name="train_step")

Outside `lantern compile` / `lantern run`, `lt.export` is `lt.compile` plus a
name: the model file runs as an ordinary script.  While the CLI runs a model
file (`run_model_file`), every `lt.export` call is recorded, and a `Bundle`
stages the recorded entries, names the arrays they capture (parameters,
optimizer state, generator states: "model.<name>", "optimizer.<key>",
"rng.<i>", as `TrainStep.state_dict` does), renders one C++ module for all of
them and describes them in a manifest.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import keyword
import os
import runpy
import sys
import traceback
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import __version__, distributed
from .build import build
from .compile import CompiledFunction
from .generator import Generator
from .ir import Alias, Call, Jump, Lam, Prim, walk
from .nn.module import Module
from .optim import Optimizer
from .program import Program, output_layout, render_module
from .runtime import DEFAULT_ARENA_BYTES, DEFAULT_MAX_DEPTH, EntryPoint, Library, flatten_arguments
from .staging import captured_array, user_location
from .train import TrainStep
from .tree import TreeDef, tree_unflatten

# Names a compiled package defines itself; an entry point cannot take them.
RESERVED = frozenset({"params", "state_dict", "load_state_dict", "save", "load", "reset", "manifest", "entries"})


class ModelError(Exception):
    """The model file cannot be exported: it does not run, exports nothing,
    or an entry point cannot be staged.  The message says where."""


# ------------------------------------------------------------------ lt.export
@dataclasses.dataclass
class Export:
    """One exported entry point: its package name, the compiled object, and
    the file:line of the `lt.export` that named it."""

    name: str
    obj: CompiledFunction
    where: str
    example_args: tuple | None = None  # fixes the signature of un-annotated inputs

    @property
    def is_train_step(self) -> bool:
        return isinstance(self.obj, TrainStep)


_collectors: list[list[Export]] = []


def export(obj=None, *, name=None, example_args=None, arena_bytes=DEFAULT_ARENA_BYTES,
           max_depth=DEFAULT_MAX_DEPTH):
    """Export an entry point of a model file for `lantern compile` / `lantern run`.

    `@lt.export` (or `@lt.export(name=..., arena_bytes=...)`) on a function with
    annotated inputs compiles it like `lt.compile`; `lt.export(obj, name=...)`
    exports an `lt.train_step` or `lt.compile` object.  Returns the compiled
    object, callable from Python as before.  `name` (default: the object's
    name) becomes the function's name in the compiled package.  A package has
    one signature per entry point: inputs without annotations take theirs from
    `example_args`, a tuple of arguments (numpy arrays, numbers, or nestings),
    as a first call would.
    """
    if obj is None:
        return functools.partial(export, name=name, example_args=example_args, arena_bytes=arena_bytes,
                                 max_depth=max_depth)
    if isinstance(obj, CompiledFunction):
        compiled = obj
    elif callable(obj) and hasattr(obj, "__code__"):
        compiled = CompiledFunction(obj, name, arena_bytes, max_depth)
    else:
        raise TypeError(
            f"lt.export: expected a function with annotated inputs, an lt.train_step or an lt.compile "
            f"object, got {type(obj).__name__}"
        )
    name = name or compiled.name
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"lt.export: name {name!r} is not a Python identifier")
    if example_args is not None and not isinstance(example_args, (tuple, list)):
        raise TypeError(f"lt.export: example_args must be a tuple of arguments, got {type(example_args).__name__}")
    record = Export(name, compiled, user_location(), None if example_args is None else tuple(example_args))
    for collector in _collectors:
        collector.append(record)
    return compiled


@contextlib.contextmanager
def collecting():
    """Record every `lt.export` made inside the block, in order."""
    found: list[Export] = []
    _collectors.append(found)
    try:
        yield found
    finally:
        _collectors.remove(found)


# ------------------------------------------------------------------ running a model file
def _model_line(tb, path: str) -> str:
    """file:line of the innermost traceback frame in the model file (or its last frame)."""
    frames = traceback.extract_tb(tb)
    target = os.path.abspath(path)
    inside = [f for f in frames if os.path.abspath(f.filename) == target]
    frame = (inside or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame else path


def describe_exception(e: BaseException, path: str) -> str:
    """`Type: message`, plus the model file's line unless the message names one."""
    text = f"{type(e).__name__}: {e}"
    if f"{os.path.basename(path)}:" not in text:
        text += f"\n  at {_model_line(e.__traceback__, path)}"
    return text


def run_model_file(path) -> tuple[list[Export], dict]:
    """Run a model file as a script that is not __main__ (its `if __name__ ==
    "__main__"` block stays quiet); return its exports and its globals."""
    path = os.path.abspath(path)
    sys.path.insert(0, os.path.dirname(path))
    try:
        with collecting() as exports:
            try:
                namespace = runpy.run_path(path, run_name="__lantern_model__")
            except SyntaxError as e:
                where = f"{e.filename}:{e.lineno}"
                text = f"\n    {e.text.rstrip()}" if e.text else ""
                raise ModelError(f"syntax error in {where}: {e.msg}{text}") from e
            except SystemExit as e:
                raise ModelError(f"{path} called exit({e.code}) while it was being run") from e
            except Exception as e:
                raise ModelError(f"the model file raised {describe_exception(e, path)}") from e
    finally:
        sys.path.remove(os.path.dirname(path))
    if not exports:
        raise ModelError(
            f"{path} exports no entry point: decorate a function with annotated inputs with @lt.export, "
            "or call lt.export(step, name=...) on an lt.train_step or lt.compile object"
        )
    return exports, namespace


# ------------------------------------------------------------------ index operands
# Kernel primitives that read an int32 operand as indices: kind -> (operand
# position, attribute holding the bound, what the indices are, whether a
# negative index counts from the end as in numpy).  The C++ kernels check every
# index too (cpp_runtime/error.h check_index, wrap_index); knowing the bounds
# lets a loader reject a bad input before any C++ runs, and lets `lantern run`
# generate valid data.
INDEX_OPERANDS = {
    "nll": (1, "C", "nll_loss target", False),
    "nll_backward": (1, "C", "nll_loss target", False),
    "gather_rows": (1, "rows", "embedding index", False),
    "scatter_add_rows": (1, "rows", "embedding index", False),
    "put_rows": (1, "rows", "assign index", False),
    "take_row": (1, "rows", "row index", True),
    "take_row_backward": (1, "rows", "row index", True),
}


def index_ranges(program: Program) -> list[list[dict]]:
    """Per input of `program`: the ranges of its flat elements used as indices,
    [{"offset", "size", "low", "bound", "use"}] meaning low <= x[offset:offset+size] < bound
    (low is 0, or -bound for an index that wraps like numpy's).

    Follows zero-copy views (`Alias`) and the arguments of staged function
    calls and continuation jumps; a variable reached from two different places
    is left unchecked here (C++ still checks it)."""
    edges: dict[int, list[tuple[object, int]]] = {}  # id(source var) -> [(target var, offset)]

    def bind(target, source, offset=0):
        edges.setdefault(id(source), []).append((target, offset))

    for _, stmt in walk(program.body):
        if isinstance(stmt, Alias):
            bind(stmt.var, stmt.base, stmt.offset)
        elif isinstance(stmt, Call) and len(stmt.args) == len(stmt.fun.params):
            for param, arg in zip(stmt.fun.params, stmt.args):
                bind(param, arg)
        elif isinstance(stmt, Jump) and isinstance(stmt.k, Lam) and len(stmt.args) == len(stmt.k.params):
            for param, arg in zip(stmt.k.params, stmt.args):
                bind(param, arg)

    origin: dict[int, tuple[int, int] | None] = {}
    work = []
    for k, (_spec, var) in enumerate(program.inputs):
        origin[id(var)] = (k, 0)
        work.append(var)
    while work:
        var = work.pop()
        here = origin[id(var)]
        for target, offset in edges.get(id(var), ()):
            new = None if here is None else (here[0], here[1] + offset)
            old = origin.get(id(target), "unset")
            if old == "unset":
                origin[id(target)] = new
                work.append(target)
            elif old is not None and old != new:
                origin[id(target)] = None  # two origins: leave it to the C++ check
                work.append(target)

    found: list[set] = [set() for _ in program.inputs]
    for _, stmt in walk(program.body):
        if isinstance(stmt, Prim) and stmt.kind in INDEX_OPERANDS:
            pos, attr, use, wraps = INDEX_OPERANDS[stmt.kind]
            var = stmt.ins[pos]
            where = origin.get(id(var))
            if where is not None and getattr(var.type, "shape", None) is not None:
                k, offset = where
                bound = int(stmt.attrs[attr])
                found[k].add((offset, max(var.size, 1), -bound if wraps else 0, bound, use))
    return [_merge_ranges(sorted(f)) for f in found]


def _merge_ranges(ranges) -> list[dict]:
    out: list[dict] = []
    for offset, size, low, bound, use in ranges:
        last = out[-1] if out else None
        if (last and (last["low"], last["bound"], last["use"]) == (low, bound, use)
                and offset <= last["offset"] + last["size"]):
            last["size"] = max(last["size"], offset + size - last["offset"])
        else:
            out.append(dict(offset=offset, size=size, low=low, bound=bound, use=use))
    return out


# ------------------------------------------------------------------ the bundle
@dataclasses.dataclass
class Entry:
    export: Export
    program: Program  # renamed to the export's name: symbol lantern_<name>
    captures: list[str]  # state keys of the captured arrays, in argument order
    index_ranges: list[list[dict]]

    @property
    def name(self) -> str:
        return self.export.name

    @property
    def kind(self) -> str:
        return "train_step" if self.export.is_train_step else "function"

    def signature(self) -> str:
        return f"{self.name}({self.program.signature()}) -> {self.returns()}"

    def flatten_batch(self, batch) -> list:
        """The leaf arrays of one input tuple (nested arguments flattened)."""
        return flatten_arguments(self.name, self.program.argument_trees, list(batch))

    def unflatten_batch(self, leaves) -> tuple:
        """An input tuple from leaf arrays, in each argument's nesting."""
        it = iter(leaves)
        return tuple(tree_unflatten(tree, [next(it) for _ in range(tree.num_leaves)])
                     for _, tree in self.program.arguments)

    def returns(self) -> str:
        if self.kind == "train_step":
            return "(float, aux)" if self.export.obj.has_aux else "float"
        return _tree_str(self.program.out_tree, [f"{v.dtype}[{', '.join(map(str, v.shape))}]"
                                                 for v in self.program.outputs])


def _tree_str(tree: TreeDef, leaves: list[str]) -> str:
    return str(tree_unflatten(tree, leaves)).replace("'", "")


class Bundle:
    """The exported entry points of one model file, staged, with their
    captured arrays named; renders one C++ module for all of them."""

    def __init__(self, exports: list[Export], namespace: dict | None = None, model_file: str | None = None):
        self.model_file = model_file
        names = [e.name for e in exports]
        for e in exports:
            if names.count(e.name) > 1:
                where = ", ".join(x.where for x in exports if x.name == e.name)
                raise ModelError(f"two entry points are named {e.name!r} ({where}); give one another name=")
            if e.name in RESERVED or e.name.startswith("_"):
                raise ModelError(
                    f"entry point name {e.name!r} ({e.where}) is taken by the compiled package "
                    f"({', '.join(sorted(RESERVED))}, _*); export it with another name="
                )
        self.state: "OrderedDict[str, np.ndarray]" = OrderedDict()  # key -> the live array
        self._key_of: dict[int, str] = {}
        self._guess = _namespace_names(namespace or {})
        programs = [self._stage(e) for e in exports]  # before state_dict, which needs the staged steps
        for e in exports:
            if e.is_train_step:
                for key, array in e.obj.state_dict().items():
                    self._add(key, array)
        self.entries = [self._entry(e, p) for e, p in zip(exports, programs)]
        self._check_no_overlap()

    # ---------------------------------------------------------------- staging
    def _stage(self, e: Export) -> Program:
        obj, example = e.obj, e.example_args
        path = self.model_file or e.where.rsplit(":", 1)[0]
        what = f"cannot stage entry point {e.name!r} (exported at {e.where})"
        try:
            if example is None and not obj.is_fixed:
                missing = ", ".join(repr(n) for n, t in obj.parameters if t is None)
                raise ModelError(
                    f"{what}: input(s) {missing} have no annotation, so a compiled package cannot know their "
                    "types: annotate them (e.g. lt.Tensor[32, 10]) or give example inputs, "
                    "lt.export(..., example_args=(...))"
                )
            # binding the example arguments and taking their types runs no model code
            specialization = None if example is None else obj.specialize(*example)
        except ModelError:
            raise
        except Exception as exc:  # a bad annotation; example_args that do not bind
            raise ModelError(f"{what}: {type(exc).__name__}: {exc}") from exc
        try:
            program = obj.program if specialization is None else specialization.program
        except Exception as exc:  # a staging error, a bug in the model's code
            raise ModelError(f"{what}: {describe_exception(exc, path)}") from exc
        if example is not None:
            try:
                obj.check_example(*example)
            except (TypeError, ValueError) as exc:
                raise ModelError(f"{what}: example_args do not fit: {type(exc).__name__}: {exc}") from exc
        return program

    def _entry(self, e: Export, program: Program) -> Entry:
        program = dataclasses.replace(program, name=e.name)
        keys = []
        for holder, _var in program.captures:
            array = captured_array(holder)
            key = self._key_of.get(id(array))
            if key is None:
                key = self._add(self._guess.get(id(array)) or _fallback_key(holder), array)
            keys.append(key)
        return Entry(e, program, keys, index_ranges(program))

    def _add(self, key: str, array: np.ndarray) -> str:
        if id(array) in self._key_of:
            return self._key_of[id(array)]
        unique, n = key, 2
        while unique in self.state:
            unique, n = f"{key}_{n}", n + 1
        self.state[unique] = array
        self._key_of[id(array)] = unique
        return unique

    def _check_no_overlap(self) -> None:
        arrays = list(self.state.items())
        for i, (ka, a) in enumerate(arrays):
            for kb, b in arrays[i + 1:]:
                if np.may_share_memory(a, b) and np.shares_memory(a, b):
                    raise ModelError(
                        f"captured arrays {ka!r} and {kb!r} share memory (views of one array); a compiled "
                        "package saves each separately, so capture the whole array once instead"
                    )

    # ---------------------------------------------------------------- outputs
    @property
    def programs(self) -> list[Program]:
        return [e.program for e in self.entries]

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def format_ir(self) -> str:
        parts = []
        for e in self.entries:
            parts.append(f"# entry point {e.signature()}   (exported at {e.export.where})\n"
                         + e.program.format_ir())
        return "\n\n".join(parts) + "\n"

    @functools.cached_property
    def cpp_source(self) -> str:
        return render_module(self.programs)

    def build(self) -> Path:
        """The compiled library (from the cache when this source was built before)."""
        return build(self.cpp_source)

    def manifest(self, name: str) -> dict:
        entries = []
        for e in self.entries:
            p = e.program
            obj = e.export.obj
            doc = (getattr(obj, "__doc__", None) or "").strip()
            if e.kind == "train_step":
                doc = (getattr(obj.loss_fn, "__doc__", None) or "").strip()
            entries.append(dict(
                name=e.name,
                symbol=p.symbol,
                kind=e.kind,
                has_aux=bool(getattr(obj, "has_aux", False)),
                signature=e.signature(),
                arguments=[dict(name=n, tree=t) for n, t in p.argument_trees],
                doc=doc.splitlines()[0] if doc else "",
                exported_at=e.export.where,
                inputs=[dict(name=s.name, kind=s.kind, shape=list(s.shape), dtype=s.dtype, index_ranges=r)
                        for (s, _), r in zip(p.inputs, e.index_ranges)],
                outputs=[dict(shape=list(shape), dtype=dtype) for shape, dtype in output_layout(p)],
                out_tree=p.out_tree.to_json(),
                captures=e.captures,
                arena_bytes=int(obj.arena_bytes),
                max_depth=int(obj.max_depth),
            ))
        return dict(
            format=1,
            name=name,
            lantern_stage_version=__version__,
            model_file=self.model_file,
            library="module.so",
            source="module.cpp",
            state_file="state.npz",
            state=[dict(key=k, shape=list(a.shape), dtype=str(a.dtype)) for k, a in self.state.items()],
            entries=entries,
        )

    def load(self) -> dict:
        """name -> callable running the compiled entry on the live arrays (what
        `lantern run` trains with): one library for every entry point."""
        library = Library.load(str(self.build()), [e.program.symbol for e in self.entries])
        if any(e.kind == "train_step" and e.export.obj.data_parallel for e in self.entries):
            # As TrainStep.entry does: the all-reduce, and rank 0's state everywhere.
            distributed.connect(library)
            distributed.broadcast([a for k, a in self.state.items() if k.startswith(("model.", "optimizer."))])
        out = {}
        for e in self.entries:
            p, obj = e.program, e.export.obj
            entry = EntryPoint(library, p.symbol, e.name, [s for s, _ in p.inputs], output_layout(p),
                               functools.partial(tree_unflatten, p.out_tree), obj.arena_bytes, obj.max_depth,
                               [(h, v.shape, v.dtype) for h, v in p.captures], p.argument_trees)
            if e.kind == "train_step":
                out[e.name] = _float_loss(entry, obj.has_aux)
            else:
                out[e.name] = entry
        return out


def _float_loss(entry: EntryPoint, has_aux: bool):
    def call(*args, **kwargs):
        out = entry(*args, **kwargs)
        return (float(out[0]), out[1]) if has_aux else float(out)

    call.entry = entry
    return call


def _namespace_names(namespace: dict) -> dict[int, str]:
    """id(array) -> a readable state key, from the model file's globals:
    modules' parameters and buffers, optimizers' state, generators, arrays."""
    names: dict[int, str] = {}
    modules = [(k, v) for k, v in namespace.items() if isinstance(v, Module) and not k.startswith("_")]
    for var, module in modules:
        prefix = "model." if len(modules) == 1 or var == "model" else f"{var}."
        for key, array in module.state_dict().items():
            names.setdefault(id(array), prefix + key)
    optimizers = [(k, v) for k, v in namespace.items() if isinstance(v, Optimizer) and not k.startswith("_")]
    for var, opt in optimizers:
        prefix = "optimizer." if len(optimizers) == 1 else f"{var}."
        for key, array in opt.state_dict().items():
            names.setdefault(id(array), prefix + key)
    for var, value in namespace.items():
        if var.startswith("_"):
            continue
        if isinstance(value, Generator):
            names.setdefault(id(value.state), f"rng.{var}")
        elif isinstance(value, np.ndarray):
            names.setdefault(id(value), f"captured.{var}")
    return names


def _fallback_key(holder) -> str:
    if isinstance(holder, Generator):
        return "rng.default"
    return "captured." + (getattr(holder, "lantern_name", None) or "array")
