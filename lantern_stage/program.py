"""A staged program: its inputs, the IR, its outputs.  `stage` runs the user's
function on staged inputs; `render_module` turns programs into C++."""
from __future__ import annotations

import inspect
import keyword
import re
from dataclasses import dataclass, field

import jinja2

from . import __version__, ir
from .codegen.cpp import LoopKernels, render_body
from .ops.registry import Emitter, staged_leaves
from .paths import TEMPLATE_DIR
from .runtime import ArgSpec
from .staging import Builder, Rep, staging_context
from .tree import TreeDef
from .types import CPP_TYPE, IntArrayType, TensorType, annotation_type


@dataclass
class Program:
    name: str
    inputs: list[tuple[ArgSpec, ir.Var]]
    outputs: list[ir.Var]
    out_tree: TreeDef
    body: ir.Block
    captures: list = field(default_factory=list)  # (holder, Var): arrays passed by pointer
    modes: list = field(default_factory=list)  # (module, training): the modes staging read

    def modes_hold(self) -> bool:
        """Whether every module is still in the train/eval mode it was staged in."""
        return all(m.training == mode for m, mode in self.modes)

    @property
    def symbol(self) -> str:
        return f"lantern_{self.name}"

    @property
    def deep(self) -> bool:
        """Whether it calls staged functions (and so runs on the guarded big stack)."""
        return any(isinstance(s, ir.FunDef) for _, s in ir.walk(self.body))

    def format_ir(self) -> str:
        params = ", ".join(f"{v!r}: {v.type}" for _, v in self.inputs)
        outs = ", ".join(f"{v.type}" for v in self.outputs)
        return f"def {self.name}({params}) -> ({outs}):\n" + ir.format_block(self.body, 1)


def input_specs(fn) -> list[tuple[str, object]]:
    """(name, static type) of each parameter, from the function's annotations."""
    try:
        annotations = inspect.get_annotations(fn, eval_str=True)
    except Exception as e:  # a NameError in a string annotation, say
        raise TypeError(f"cannot evaluate the annotations of {fn.__qualname__}: {e}") from None
    specs = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{fn.__qualname__}: *args/**kwargs cannot be staged; annotate each input")
        if p.name not in annotations:
            raise TypeError(
                f"{fn.__qualname__}: parameter {p.name!r} has no annotation; "
                "annotate it, e.g. lt.Tensor[32, 10] or lt.IntArray"
            )
        specs.append((p.name, annotation_type(annotations[p.name], f"{fn.__qualname__}: parameter {p.name!r}")))
    return specs


def c_name(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = "_" + name
    return "in_" + name


def make_input(b: Builder, name: str, type_) -> tuple[ArgSpec, ir.Var]:
    if isinstance(type_, IntArrayType):
        spec = ArgSpec(name, "intarray", (), "int32")
    else:
        spec = ArgSpec(name, "tensor", type_.shape, type_.dtype)
    var = b.new_var(type_)
    var.name = c_name(name)
    return spec, var


def stage(fn, name: str, specs) -> Program:
    """Run `fn` on staged inputs (`specs`: (name, type) pairs), recording IR."""
    b = Builder()
    with staging_context(b):
        inputs = [make_input(b, n, t) for n, t in specs]
        reps = [Rep(v, b.root) for _, v in inputs]
        reps_out, tree = staged_leaves(fn(*reps), f"{name} result")

        def store_outputs():
            em = Emitter(b, "outputs")
            for j, r in enumerate(reps_out):
                em.prim("store_output", [], [r.var], index=j)

        body = b.close_scope(store_outputs)
    outputs = [r.var for r in reps_out]
    return Program(name, inputs, outputs, tree, body, list(b.captures), list(b.modes.values()))


def prologue(program: Program) -> list[str]:
    lines = []
    n = len(program.inputs)
    for k, (_holder, var) in enumerate(program.captures):
        t = CPP_TYPE[var.dtype]
        lines.append(f"{t}* {var.name} = static_cast<{t}*>(lt_in[{n + k}]);")
    for k, (spec, var) in enumerate(program.inputs):
        if spec.kind == "intarray":
            lines.append(f"int32_t* {var.name} = static_cast<int32_t*>(lt_in[{k}]);")
            lines.append(f"const int64_t {var.name}_len = lt_len[{k}];")
        elif var.storage == "scalar":
            t = CPP_TYPE[var.dtype]
            lines.append(f"const {t} {var.name} = *static_cast<const {t}*>(lt_in[{k}]);")
        else:
            t = CPP_TYPE[var.dtype]
            lines.append(f"{t}* {var.name} = static_cast<{t}*>(lt_in[{k}]);")
    return lines


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_module(programs: list[Program]) -> str:
    entries = []
    kernels = LoopKernels()
    for p in programs:
        entries.append(dict(
            name=p.name,
            symbol=p.symbol,
            signature=", ".join(f"{s.name}: {s.describe()}" for s, _ in p.inputs)
            + "".join(f"; captured {v.name}: {v.type}" for _, v in p.captures),
            prologue=prologue(p),
            body=render_body(p.body, kernels),
            deep=p.deep,
        ))
    return _ENV.get_template("module.cpp.j2").render(
        version=__version__, entries=entries, loop_functions=kernels.definitions)


def output_layout(program: Program) -> list[tuple[tuple, str]]:
    return [(v.shape, v.dtype) for v in program.outputs]


__all__ = ["Program", "stage", "render_module", "input_specs", "TensorType"]
