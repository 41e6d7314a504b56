"""A staged program: its inputs, the IR, its outputs.  `stage` runs the user's
function on staged inputs; `render_module` turns programs into C++."""
from __future__ import annotations

import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field

import jinja2

from . import __version__, ir
from .codegen.cpp import LoopKernels, render_body
from .ops.registry import Emitter, staged_leaves
from .paths import TEMPLATE_DIR
from .runtime import ArgSpec, describe_tree, leaf_path
from .staging import Builder, Rep, staging_context
from .tree import TreeDef, tree_flatten, tree_unflatten
from .types import CPP_TYPE, IntArrayType, TensorType, annotation_type


@dataclass
class Program:
    name: str
    inputs: list[tuple[ArgSpec, ir.Var]]  # one per leaf array of the arguments
    outputs: list[ir.Var]
    out_tree: TreeDef
    body: ir.Block
    captures: list = field(default_factory=list)  # (holder, Var): arrays passed by pointer
    # (name, structure) per argument: a leaf, or a nested dict / tuple / list of leaves
    arguments: list[tuple[str, TreeDef]] = field(default_factory=list)
    modes: list = field(default_factory=list)  # (module, training): the modes staging read

    def modes_hold(self) -> bool:
        """Whether every module is still in the train/eval mode it was staged in."""
        return all(m.training == mode for m, mode in self.modes)

    @property
    def argument_trees(self) -> list[tuple[str, object]]:
        """`arguments` in the JSON form lantern_stage.runtime (and a package) reads."""
        return [(n, t.to_json()) for n, t in self.arguments]

    def signature(self) -> str:
        """The arguments and their types: "x: float32[3, 4], p: {"w": float32[4]}"."""
        leaves = iter(s.describe() for s, _ in self.inputs)
        return ", ".join(f"{n}: {describe_tree(t, leaves)}" for n, t in self.argument_trees)

    @property
    def c_name(self) -> str:
        return c_identifier(self.name)

    @property
    def symbol(self) -> str:
        return f"lantern_{self.c_name}"

    @property
    def deep(self) -> bool:
        """Whether it calls staged functions (and so runs on the guarded big stack)."""
        return any(isinstance(s, ir.FunDef) for _, s in ir.walk(self.body))

    def format_ir(self) -> str:
        params = ", ".join(f"{v!r}: {v.type}" for _, v in self.inputs)
        outs = ", ".join(f"{v.type}" for v in self.outputs)
        return f"def {self.name}({params}) -> ({outs}):\n" + ir.format_block(self.body, 1)


def parameter_types(fn) -> list[tuple[str, object]]:
    """(name, static type) of each parameter from the function's annotations;
    the type is a nesting of types for a dict / tuple / list annotation, and
    None for a parameter without annotation (its type comes from a call)."""
    try:
        annotations = inspect.get_annotations(fn, eval_str=True)
    except Exception as e:  # a NameError in a string annotation, say
        raise TypeError(f"cannot evaluate the annotations of {fn.__qualname__}: {e}") from None
    specs = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{fn.__qualname__}: *args/**kwargs cannot be staged; name each input")
        if p.name not in annotations:
            specs.append((p.name, None))
            continue
        specs.append((p.name, annotation_type(annotations[p.name], f"{fn.__qualname__}: parameter {p.name!r}")))
    return specs


def input_specs(fn) -> list[tuple[str, object]]:
    """(name, static type) of each parameter; every one must be annotated."""
    specs = parameter_types(fn)
    for name, t in specs:
        if t is None:
            raise TypeError(
                f"{fn.__qualname__}: parameter {name!r} has no annotation; "
                "annotate it, e.g. lt.Tensor[32, 10] or lt.IntArray"
            )
    return specs


# Symbols every module defines itself besides lantern_<entry>.
RUNTIME_SYMBOLS = frozenset({"configure"})


def c_identifier(name: str) -> str:
    """The C++ name of a Python-facing name: itself when it is a plain ASCII
    identifier that no runtime symbol uses; otherwise its ASCII letters and
    digits with a hash of the whole name appended, so that "my-model",
    "two words", "<lambda>", "módulo" and "configure" all compile and
    distinct names stay distinct."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name not in RUNTIME_SYMBOLS:
        return name
    plain = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "entry"
    if plain[0].isdigit():
        plain = "n" + plain
    return f"{plain}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def c_comment(text: str) -> str:
    """Text safe in a C++ line comment (no newline, no trailing backslash)."""
    return json.dumps(text, ensure_ascii=False)[1:-1] + ("." if text.endswith("\\") else "")


def c_name(name: str) -> str:
    """The C++ name of an input (a Python parameter name)."""
    return "in_" + c_identifier(name)


def make_input(b: Builder, name: str, type_, cname: str | None = None) -> tuple[ArgSpec, ir.Var]:
    if isinstance(type_, IntArrayType):
        spec = ArgSpec(name, "intarray", (), "int32")
    else:
        spec = ArgSpec(name, "tensor", type_.shape, type_.dtype)
    var = b.new_var(type_)
    var.name = c_name(cname or name)
    return spec, var


def make_inputs(b: Builder, specs) -> tuple[list[tuple[ArgSpec, ir.Var]], list, list[tuple[str, TreeDef]]]:
    """One input per leaf of each (name, type or nesting of types) in `specs`:
    the flat inputs, the staged arguments in their nesting, and each
    argument's structure."""
    inputs, args, arguments, cnames = [], [], [], set()
    for name, type_tree in specs:
        types, tree = tree_flatten(type_tree)
        reps = []
        for type_, keys in zip(types, tree.leaf_keys()):
            cname = "_".join([name, *map(str, keys)])
            while c_name(cname) in cnames:  # params["a_b"] and params["a"]["b"]
                cname += "_"
            cnames.add(c_name(cname))
            spec, var = make_input(b, leaf_path(name, keys), type_, cname)
            inputs.append((spec, var))
            reps.append(Rep(var, b.root))
        args.append(tree_unflatten(tree, reps))
        arguments.append((name, tree))
    return inputs, args, arguments


def stage(fn, name: str, specs) -> Program:
    """Run `fn` on staged inputs (`specs`: (name, type) pairs, a type possibly a
    nested dict / tuple / list of types), recording IR."""
    b = Builder()
    with staging_context(b):
        inputs, args, arguments = make_inputs(b, specs)
        reps_out, tree = staged_leaves(fn(*args), f"{name} result")

        def store_outputs():
            em = Emitter(b, "outputs")
            for j, r in enumerate(reps_out):
                em.prim("store_output", [], [r.var], index=j)

        body = b.close_scope(store_outputs)
    outputs = [r.var for r in reps_out]
    return Program(name, inputs, outputs, tree, body, list(b.captures), arguments=arguments,
                   modes=list(b.modes.values()))


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


# Entry bodies longer than this many lines are compiled at -O0.  A body is
# straight-line calls (allocations, kernels, the shared loop functions, which
# stay -O3); g++'s register allocation over one such function grows faster than
# its length (an RNN unrolled 200 steps: ~55 s at -O3, ~17 s at -O1, ~3.5 s at
# -O0, against ~2 s at 10 steps), while the body itself does no arithmetic
# worth optimising.  Shorter bodies (the benchmark models, 20 steps) keep -O3.
UNOPTIMISED_BODY_LINES = 2000


def render_module(programs: list[Program]) -> str:
    entries = []
    kernels = LoopKernels()
    for p in programs:
        body = render_body(p.body, kernels)
        entries.append(dict(
            name=p.c_name,
            label=c_comment(p.name),
            symbol=p.symbol,
            signature=", ".join(f"{s.name}: {s.describe()}" for s, _ in p.inputs)
            + "".join(f"; captured {v.name}: {v.type}" for _, v in p.captures),
            prologue=prologue(p),
            body=body,
            deep=p.deep,
            unoptimised=not p.deep and body.count("\n") > UNOPTIMISED_BODY_LINES,
        ))
    return _ENV.get_template("module.cpp.j2").render(
        version=__version__, entries=entries, loop_functions=kernels.definitions,
        outer_logs=sorted({log for p in programs for log in outer_logs(p)}))


def outer_logs(program: Program) -> set:
    """The names of the weight-gradient logs (passes/defer_outer.py) the
    program's scopes append to; the module declares each once."""
    return {s.attrs["log"] for b in ir.blocks(program.body) for s in b.stmts
            if isinstance(s, ir.Prim) and s.kind == "outer_log_start"}


def output_layout(program: Program) -> list[tuple[tuple, str]]:
    return [(v.shape, v.dtype) for v in program.outputs]


__all__ = ["Program", "stage", "render_module", "input_specs", "parameter_types", "TensorType"]
