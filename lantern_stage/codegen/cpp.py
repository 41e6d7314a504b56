"""C++ from the CPS IR.

`Lam` -> a C++ lambda; `Fun` -> a lambda called through an `lt::FnRef`
declared before it (so it can call itself); `Call`/`Jump` -> calls; `If` ->
if/else; `Map` -> loops over collapsed dimensions; `Prim` -> a kernel call
(kernels.py).  Every block that allocates opens an `lt::ArenaScope`, so a
frame's buffers are released right after its backward code has run.
The module skeleton is the jinja2 template templates/module.cpp.j2.
"""
from __future__ import annotations

from math import prod

from .. import ir
from ..types import CPP_TYPE, IntArrayType, views_disjoint
from .kernels import render_prim


def cpp_type(v: ir.Var) -> str:
    if isinstance(v.type, IntArrayType):
        return "int32_t*"
    t = CPP_TYPE[v.dtype]
    return t if v.storage == "scalar" else t + "*"


def scalar_value(v: ir.Var) -> str:
    """A 0-d value read as a C++ scalar, whether held by value or in a buffer."""
    return f"{v.name}[0]" if v.storage == "buf" else v.name


def pass_arg(arg: ir.Var, param: ir.Var) -> str:
    return scalar_value(arg) if param.storage == "scalar" else arg.name


def param_decl(v: ir.Var) -> str:
    return f"{cpp_type(v)} {v.name}"


def cont_signature(types: list[ir.Var]) -> str:
    return "lt::FnRef<void(" + ", ".join(cpp_type(v) for v in types) + ")>"


class LoopKernels:
    """Elementwise loops rendered as functions, one per distinct loop: the
    unrolled time steps of an RNN repeat the same loops, and g++ compiles
    (and vectorises) each only once.  Shared by every entry of a module."""

    def __init__(self):
        self.by_text: dict[str, str] = {}
        self.definitions: list[str] = []

    def function(self, params: list[str], body: list[str], restrict: bool) -> str:
        qual = " __restrict" if restrict else ""
        decl = ", ".join(p.replace("*", "*" + qual, 1) if "*" in p else p for p in params)
        text = "(" + decl + ") {\n" + "\n".join(body) + "\n}"
        if text not in self.by_text:
            name = f"lt_loop{len(self.by_text)}"
            self.by_text[text] = name
            self.definitions.append(f"static __attribute__((noinline)) void {name}{text}")
        return self.by_text[text]


class Renderer:
    def __init__(self, kernels: LoopKernels, roots: dict, params: set):
        self.lines: list[str] = []
        self.indent = 1
        self.kernels = kernels
        self.roots = roots  # alias var id -> root var id
        self.params = params  # ids of continuation and function parameters
        self.rename: dict = {}  # var id -> parameter name, inside a loop function
        self.hoisted: dict = {}  # load text -> the local it was read into, inside one loop body
        self.locals: dict = {}  # Let name -> positional name, inside a loop function
        # Ids of the buffers allocated by the function (continuation) body
        # being rendered, innermost last: no parameter of that body can point
        # into them (they did not exist when it was called).
        self.allocated: list[set] = [set()]

    def line(self, text: str) -> None:
        self.lines.append("  " * self.indent + text)

    # ------------------------------------------------------------ blocks
    def block(self, block: ir.Block, scoped: bool = True) -> None:
        if scoped and any(isinstance(s, ir.Alloc) for s in block.stmts):
            self.line("lt::ArenaScope frame(arena);")
        last_note = None
        for stmt in block.stmts:
            note = getattr(stmt, "loc", "")
            if note and note != last_note:
                self.line(f"// {note}")
            last_note = note
            self.stmt(stmt)

    def nested(self, header: str, block: ir.Block, footer: str = "}", frame_guard: bool = False) -> None:
        self.line(header)
        self.indent += 1
        if frame_guard:
            self.line("lt::Runtime::Frame guard(rt);")
        self.block(block)
        self.indent -= 1
        self.line(footer)

    # ------------------------------------------------------------ statements
    def stmt(self, s: ir.Stmt) -> None:
        if isinstance(s, ir.Alloc):
            self.allocated[-1].add(id(s.var))
            fn = "alloc_zeroed" if s.zero else "alloc"
            t = CPP_TYPE[s.var.dtype]
            self.line(f"{t}* {s.var.name} = arena.{fn}<{t}>({max(s.var.size, 1)});")
        elif isinstance(s, ir.Alias):
            self.line(f"{cpp_type(s.var)} {s.var.name} = {s.base.name} + {s.offset};")
        elif isinstance(s, ir.ScalarDef):
            self.line(f"const {CPP_TYPE[s.var.dtype]} {s.var.name} = {self.expr(s.expr, {})};")
        elif isinstance(s, ir.Map):
            self.map(s)
        elif isinstance(s, ir.Prim):
            self.line(render_prim(s))
        elif isinstance(s, ir.Comment):
            self.line(f"// {s.text}")
        elif isinstance(s, ir.Nested):
            self.nested("{", s.body)
        elif isinstance(s, ir.LamDef):
            lam = s.lam
            params = ", ".join(param_decl(p) for p in lam.params)
            self.allocated.append(set())
            self.nested(f"auto {lam.name} = [&]({params}) -> void {{  // continuation", lam.body, "};")
            self.allocated.pop()
        elif isinstance(s, ir.FunDef):
            fun = s.fun
            sig = ", ".join([cpp_type(p) for p in fun.params] + [cont_signature(fun.k.arg_types)])
            params = ", ".join([param_decl(p) for p in fun.params] + [f"{cont_signature(fun.k.arg_types)} {fun.k.name}"])
            self.line(f"lt::FnRef<void({sig})> {fun.name};")
            self.allocated.append(set())
            self.nested(f"auto {fun.name}_body = [&]({params}) -> void {{", fun.body, "};", frame_guard=True)
            self.allocated.pop()
            self.line(f"{fun.name} = {fun.name}_body;")
        elif isinstance(s, ir.If):
            self.nested(f"if ({scalar_value(s.cond)}) {{", s.then)
            self.nested("else {", s.else_)
        elif isinstance(s, ir.Call):
            args = ", ".join([pass_arg(a, p) for a, p in zip(s.args, s.fun.params)] + [s.k.name])
            self.line(f"{s.fun.name}({args});")
        elif isinstance(s, ir.Jump):
            params = s.k.params if isinstance(s.k, ir.Lam) else s.k.arg_types
            self.line(f"{s.k.name}({', '.join(pass_arg(a, p) for a, p in zip(s.args, params))});")
        elif isinstance(s, ir.Loop):
            self.line("while (true) {")
            self.indent += 1
            self.line("lt::poll_interrupt();  // Ctrl-C")
            self.line("lt::ArenaScope frame(arena);")
            self.block(s.head, scoped=False)
            self.line(f"if (!{scalar_value(s.cond)}) break;")
            self.block(s.body, scoped=False)
            self.indent -= 1
            self.line("}")
        else:
            raise ValueError(f"internal: cannot render {s}")

    # ------------------------------------------------------------ expressions
    def expr(self, e: ir.Expr, index: dict) -> str:
        tag = e[0]
        if tag == "load":
            return self.load(e[1], index)
        if tag == "local":
            return self.locals.get(e[1], e[1])
        args = [self.expr(a, index) for a in e[2]]
        if not args:
            return e[1]
        return "(" + e[1].format(*args) + ")"

    def load(self, view: ir.View, index: dict) -> str:
        var = view.var
        name = self.rename.get(id(var), var.name)
        if var.storage == "scalar":
            return name
        if var.storage == "const":
            return str(var.value)
        text = f"{name}[{index.get(id(view), view.offset)}]"
        return self.hoisted.get(text, text)

    # ------------------------------------------------------------ loops
    def map(self, m: ir.Map) -> None:
        if not m.shape or all(n == 1 for n in m.shape):
            self.loop(m)  # one element: inline
            return
        operands = []
        for v in _views(m):
            if v.var.storage in ("buf", "scalar") and id(v.var) not in {id(o) for o in operands}:
                operands.append(v.var)
        params, self.rename = [], {}
        # Registers named by position, not by the fusion pass's global counter:
        # identical loops (the unrolled steps of an RNN) then render identically
        # and share one function.
        self.locals = {a.name: f"t{k}" for k, a in enumerate(x for x in m.assigns if isinstance(x, ir.Let))}
        for k, var in enumerate(operands):
            self.rename[id(var)] = f"p{k}"
            ctype = CPP_TYPE[var.dtype]
            params.append(f"{ctype}* p{k}" if var.storage == "buf" else f"const {ctype} p{k}")
        restrict = self._restrict(m, operands)
        outer_lines, outer_indent = self.lines, self.indent
        self.lines, self.indent = [], 1
        try:
            self.loop(m, overlap_tail=restrict and _rerunnable(m, self.roots))
            body = self.lines
        finally:
            self.lines, self.indent, self.rename, self.locals = outer_lines, outer_indent, {}, {}
        name = self.kernels.function(params, body, restrict)
        self.line(f"{name}({', '.join(v.name for v in operands)});")

    def _restrict(self, m: ir.Map, operands: list) -> bool:
        """Whether the loop function's pointers may all be __restrict: no
        buffer written through one pointer is reachable through another.
        (C's restrict constrains only objects that are modified, so pointers
        that are only read may overlap: the gate slices of one product.)
        A written buffer must have a root of its own and not be a
        continuation or function parameter (the caller's buffers, possibly
        one passed twice or an outer variable under another name); when a
        parameter is read, a written buffer must moreover be one this body
        allocated, which no parameter can point into."""
        root = lambda v: self.roots.get(id(v), id(v))  # noqa: E731
        bufs = [root(v) for v in operands if v.storage == "buf"]
        written = {root(v) for v in m.writes() if v.storage == "buf"}
        if any(w in self.params for w in written) or sum(r in written for r in bufs) != len(written):
            return False  # a written parameter, or a written buffer under two pointers
        read_params = any(r in self.params for r in bufs if r not in written)
        return not read_params or written <= self.allocated[-1]

    def loop(self, m: ir.Map, overlap_tail: bool = False) -> None:
        """The loop nest of `m`.  With `overlap_tail` (the map may run an
        element twice), an innermost loop of n > TAIL_BLOCK elements, n not a
        multiple of it, runs in blocks of TAIL_BLOCK, the last block moved
        back to end at n: every block is one vector iteration, where g++
        would leave n mod 8 scalar iterations (two of each row of the LSTM
        gates' 50: the loop went 4.85 -> 3.85 us, benchmarks/NOTES.md)."""
        views = _views(m)
        shape, strides = _collapse(m.shape, [v.strides for v in views])
        stride_of = {id(v): st for v, st in zip(views, strides)}
        sums = self._float_sums(m, stride_of)
        if _reorderable(m, stride_of, sums, self.roots):
            order = _reduction_order(shape, [stride_of[id(a.dst)] for a in sums])
            shape = [shape[d] for d in order]
            strides = [[st[d] for d in order] for st in strides]
            stride_of = {id(v): st for v, st in zip(views, strides)}
        names = [f"i{d}" for d in range(len(shape))]
        index = {}
        for v, st in zip(views, strides):
            terms = [str(v.offset)] if v.offset else []
            for name, s in zip(names, st):
                if s == 1:
                    terms.append(name)
                elif s:
                    terms.append(f"{name} * {s}")
            index[id(v)] = " + ".join(terms) or "0"
        # Sums add into doubles (_accumulator), then once into memory: float32
        # running sums drift by n * 6e-8 (see reduce_sum in kernels.h).
        accs = {}  # id(assign) -> (name, level, [(dim, compact stride)] or None)
        for a in sums:
            acc = _accumulator(shape, stride_of[id(a.dst)])
            if acc is not None:
                accs[id(a)] = (f"acc{len(accs)}", acc[0], acc[1])
        blocked = overlap_tail and not accs and shape and shape[-1] > TAIL_BLOCK and shape[-1] % TAIL_BLOCK
        for d, (name, n) in enumerate(zip(names, shape)):
            for acc, level, kept in accs.values():
                if level == d:
                    size = prod(shape[k] for k, _ in kept) if kept is not None else None
                    self.line(f"double {acc} = 0.0;" if kept is None else f"double {acc}[{size}] = {{}};")
            if blocked and d == len(shape) - 1:
                self.line(f"for (long {name}b = 0; {name}b < {n}; {name}b += {TAIL_BLOCK}) {{")
                self.line(f"  const long {name}s = {name}b + {TAIL_BLOCK} <= {n} ? {name}b : {n - TAIL_BLOCK};")
                self.line(f"  for (long {name}v = 0; {name}v < {TAIL_BLOCK}; ++{name}v) {{")
                self.line(f"    const long {name} = {name}s + {name}v;")
                self.indent += 2
                continue
            self.line(f"for (long {name} = 0; {name} < {n}; ++{name}) {{")
            self.indent += 1
        if not shape:
            self.line("{")
            self.indent += 1
        self._hoist_conditional_loads(m, index)
        for a in m.assigns:
            if isinstance(a, ir.Let):
                self.line(f"const auto {self.locals.get(a.name, a.name)} = {self.expr(a.expr, index)};")
            elif id(a) in accs:
                acc, _, kept = accs[id(a)]
                target = acc if kept is None else f"{acc}[{_compact_index(names, kept)}]"
                self.line(f"{target} += {self.expr(a.expr, index)};")
            else:
                op = "+=" if a.accumulate else "="
                self.line(f"{self.load(a.dst, index)} {op} {self.expr(a.expr, index)};")
        self.hoisted = {}
        if blocked:
            self.indent -= 1
            self.line("}")
        for d in reversed(range(max(len(shape), 1))):
            self.indent -= 1
            self.line("}")
            for a in sums:
                if id(a) not in accs or accs[id(a)][1] != d:
                    continue
                acc, _, kept = accs[id(a)]
                if kept is None:
                    self.line(f"{self.load(a.dst, index)} += static_cast<float>({acc});")
                else:  # after every loop: a loop nest over the kept dimensions
                    nest = " ".join(f"for (long {names[k]} = 0; {names[k]} < {shape[k]}; ++{names[k]})"
                                    for k, _ in kept)
                    self.line(f"{nest} {self.load(a.dst, index)} += "
                              f"static_cast<float>({acc}[{_compact_index(names, kept)}]);")

    def _float_sums(self, m: ir.Map, stride_of: dict) -> list:
        """The float sums of `m` that may be held in accumulators: no other
        view of the map touches their destination's buffer (only other sums
        into it), so nothing reads a partial sum.  Fusion never makes such a
        map (passes/fusion.py, `_compatible`); this keeps the meaning of one
        that does: sequential float32 running sums."""
        sums = [a for a in m.assigns if isinstance(a, ir.Assign) and _is_float_sum(a, stride_of[id(a.dst)])]
        sum_ids = {id(a) for a in sums}
        touched = set()
        for a in m.assigns:
            views = list(ir.expr_loads(a.expr))
            if isinstance(a, ir.Assign) and id(a) not in sum_ids:
                views.append(a.dst)
            touched.update(self.roots.get(id(v.var), id(v.var)) for v in views)
        return [a for a in sums if self.roots.get(id(a.dst.var), id(a.dst.var)) not in touched]

    def _hoist_conditional_loads(self, m: ir.Map, index: dict) -> None:
        """Read the operands of `c ? a : b` into locals first, so that every
        load is unconditional.  A conditional load becomes a masked vector
        load (vmaskmovps), and g++ 12.2 at -O3 with AVX miscompiles such a
        loop when it also accumulates into a broadcast operand
        (`p2[i] = x[i] > 0 ? g[i] : 0; p3[i1] += ...`: wrong sums, measured
        on znver3).  Only buffers this map does not write are hoisted, so an
        operand written earlier in the same iteration is still read after."""
        written = {id(a.dst.var) for a in m.assigns if isinstance(a, ir.Assign)}
        loads = {}
        stack = [(a.expr, False) for a in m.assigns]
        while stack:
            e, conditional = stack.pop()
            if e[0] == "load":
                v = e[1]
                if conditional and v.var.storage == "buf" and id(v.var) not in written:
                    loads.setdefault(self.load(v, index), v)
            elif e[0] == "fmt":
                stack.extend((x, conditional or "?" in e[1]) for x in e[2])
        for k, text in enumerate(sorted(loads)):
            self.line(f"const {CPP_TYPE[loads[text].var.dtype]} r{k} = {text};")
            self.hoisted[text] = f"r{k}"


def _rerunnable(m: ir.Map, roots: dict) -> bool:
    """Running some elements of `m` twice leaves what running each once does:
    every write is a plain float store (no `+=`, no zero stride), no buffer it
    writes is read in the loop, and the stores into one buffer go through one
    var into disjoint views (the four gate blocks of a gradient)."""
    stores = {}  # root id -> the store views
    for a in m.assigns:
        if isinstance(a, ir.Assign):
            if a.accumulate or a.dst.var.dtype != "float32" or 0 in a.dst.strides:
                return False
            stores.setdefault(roots.get(id(a.dst.var), id(a.dst.var)), []).append(a.dst)
    loaded = {roots.get(id(v.var), id(v.var)) for a in m.assigns for v in ir.expr_loads(a.expr)}
    if loaded & set(stores):
        return False
    shape = tuple(m.shape)
    for views in stores.values():
        if len({id(v.var) for v in views}) != 1:
            return False
        for i, a in enumerate(views):
            if any(not views_disjoint(shape, (a.offset, a.strides), (b.offset, b.strides)) for b in views[i + 1:]):
                return False
    return True


def _is_float_sum(a, dst_strides) -> bool:
    """An accumulation of floats into one element over a loop (stride 0)."""
    return a.accumulate and a.dst.var.dtype == "float32" and any(s == 0 for s in dst_strides)


# One 256-bit vector of floats: the block of the overlapped tail
# (`Renderer.loop`); measured with AVX2 only, not on an AVX-512 CPU.
TAIL_BLOCK = 8

# Most elements a sum's block of double accumulators may have (32 KB of stack).
ROW_SUM_MAX = 4096
# Sums over fewer loop iterations than this keep float32 running sums (error
# below 64 * 6e-8) unless one row or one scalar of doubles holds them.
SHORT_SUM = 64


def _accumulator(shape, st):
    """(level, kept, whole) of the doubles that hold a sum with destination
    strides `st` in loop order, or None (float32 running sums in memory);
    `whole` when they hold all of it:

    * over trailing loops only: one double, declared before loop `level`, the
      first reduced one (kept None);
    * else, over at most ROW_SUM_MAX destination elements: a block of doubles
      indexed by the kept loops, [(loop, compact stride)], declared before
      every loop (level 0) and added into memory after them.  A bias gradient
      (rows into one row) is the common case: the loop keeps its order and
      stays vectorised.  A block that is not one row is worth its zeroing and
      its final pass only for sums of SHORT_SUM or more terms;
    * else, trailing reduced loops (if any) in one double, the rest in memory.
    """
    n = len(st)
    reduced = [d for d in range(n) if st[d] == 0]
    kept = [d for d in range(n) if st[d] != 0]
    if reduced == list(range(n - len(reduced), n)):
        return reduced[0], None, True
    size = prod(shape[d] for d in kept)
    if size <= ROW_SUM_MAX and (kept == [n - 1] or prod(shape[d] for d in reduced) >= SHORT_SUM):
        compact, stride = [], 1
        for d in reversed(kept):
            compact.append((d, stride))
            stride *= shape[d]
        return 0, compact[::-1], True
    if st[-1] == 0:
        return next(d for d in range(n) if all(x == 0 for x in st[d:])), None, False
    return None


def _compact_index(names, kept) -> str:
    return " + ".join(names[d] if c == 1 else f"{names[d]} * {c}" for d, c in kept)


def _reorderable(m: ir.Map, stride_of: dict, sums, roots: dict) -> bool:
    """Whether the loops of `m` may run in another order: each element is
    touched by one iteration only, except through the sums (which commute).
    So no other write has a zero stride, and a buffer written (other than by
    the sums) is read and written through that one view of that one var."""
    sum_ids = {id(a) for a in sums}
    written = {}  # root id -> the views of it
    for a in m.assigns:
        if isinstance(a, ir.Assign) and id(a) not in sum_ids:
            if any(x == 0 for x in stride_of[id(a.dst)]):
                return False
            written.setdefault(roots.get(id(a.dst.var), id(a.dst.var)), set())
    for v in _views(m):
        root = roots.get(id(v.var), id(v.var))
        if root in written:
            written[root].add((id(v.var), v.offset, v.strides))
    return all(len(views) == 1 for views in written.values())


def _reduction_order(shape, sum_strides) -> list[int]:
    """Loop order for the sums of one loop: the given one unless every sum is
    of one kind that _accumulator cannot hold in doubles whole (over
    non-trailing loops into more than ROW_SUM_MAX elements) and is not short;
    then its reduced loops move innermost, keeping their relative order, and
    one double holds it."""
    order = list(range(len(shape)))
    zero_sets = {tuple(d for d, s in enumerate(st) if s == 0) for st in sum_strides}
    if len(zero_sets) != 1:
        return order
    reduced = zero_sets.pop()
    acc = _accumulator(shape, sum_strides[0])
    if (acc is not None and acc[2]) or prod(shape[d] for d in reduced) < SHORT_SUM:
        return order
    return [d for d in order if d not in reduced] + list(reduced)


def _views(m: ir.Map) -> list[ir.View]:
    return m.views()


def _collapse(shape, strides_list):
    """Merge adjacent dimensions that every view walks contiguously, and drop
    size-1 dimensions, so most loops become one flat vectorisable loop."""
    dims = [(n, [s[d] for s in strides_list]) for d, n in enumerate(shape) if n != 1]
    merged: list = []
    for n, st in dims:
        if merged:
            pn, pst = merged[-1]
            if all(p == s * n for p, s in zip(pst, st)):
                merged[-1] = (pn * n, st)
                continue
        merged.append((n, st))
    new_shape = [n for n, _ in merged]
    new_strides = [[st[i] for _, st in merged] for i in range(len(strides_list))]
    return new_shape, new_strides


def render_body(block: ir.Block, kernels: LoopKernels) -> str:
    roots, params = {}, set()
    for _, stmt in ir.walk(block):
        if isinstance(stmt, ir.Alias):
            roots[id(stmt.var)] = roots.get(id(stmt.base), id(stmt.base))
        elif isinstance(stmt, (ir.LamDef, ir.FunDef)):
            fn = stmt.lam if isinstance(stmt, ir.LamDef) else stmt.fun
            params.update(id(p) for p in fn.params)
    r = Renderer(kernels, roots, params)
    r.block(block, scoped=False)
    return "\n".join(r.lines)
