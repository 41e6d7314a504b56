"""Staged control flow: `cond`, `fori_loop`, `while_loop` and `@recursive`.

One mechanism serves all of them.  Operands and results are any nesting of
tuples / lists / dicts of staged values: they are flattened to a list of
leaves, each leaf travelling as its value and, while differentiating, its
gradient buffer (with that buffer's tangent buffers inside forward levels).
Inside forward levels (`jvp`) a float leaf travels with its tangents as
extra leaves (`expand` / `collapse`; a missing tangent is zeros), so
tangents cross every construct as ordinary values - and get gradient
buffers of their own when reverse mode runs over forward mode.  Under `value_and_grad` every construct reifies "the rest of
the program" as a continuation `Lam` and each branch or call runs
`forward; k(results); backward` (the paper's IF and FUN); loops are recursive
functions (its LOOP).  Outside differentiation, `cond` and loops compile to
plain if/else and while loops.

The result type of a recursive function is needed at its own recursive call
sites, before its body is staged: a first, discarded staging of the body
treats a call of the function as "bottom", so `cond` takes the type of the
other branch (the base case).
"""
from __future__ import annotations

import functools

from . import ir
from .ops.registry import Emitter, as_rep, staged_leaves, touch
from .staging import Acc, Rep, current, staging_error
from .tree import TreeDef, tree_flatten, tree_unflatten
from .types import TensorType


class _Bottom(Exception):
    """A recursive call whose result type is not known yet (type inference)."""


# ------------------------------------------------------------------ leaves
_leaves = staged_leaves


def _signature(reps: list[Rep]) -> list[TensorType]:
    return [r.type for r in reps]


def _describe(tree: TreeDef, types) -> str:
    """The structure with each leaf's type, e.g. (float32[3], int32[])."""
    return str(tree_unflatten(tree, [str(t) for t in types])).replace("'", "")


def expand(b, reps: list[Rep], levels=None) -> list[Rep]:
    """Float leaves followed by their tangents at every open forward level
    (recursively: a tangent at level i has tangents below i)."""
    levels = list(b.jvp_levels if levels is None else levels)
    out = []
    for r in reps:
        out.extend(_expand_one(r, levels))
    return out


def _expand_one(r: Rep, levels) -> list[Rep]:
    if not levels or not _is_float(r.type):
        return [r]
    t = r.tangents.get(levels[-1])
    if t is None:
        from .ops.shape import full

        t = full(shape=r.shape, value=0.0, dtype="float32")
    return _expand_one(r, levels[:-1]) + _expand_one(t, levels[:-1])


def expand_types(types, levels) -> list:
    out = []
    for t in types:
        out.extend(_expand_type(t, list(levels)))
    return out


def _expand_type(t, levels):
    if not levels or not _is_float(t):
        return [t]
    return _expand_type(t, levels[:-1]) * 2


def collapse(flat: list[Rep], types, levels) -> list[Rep]:
    """The inverse of `expand`: one Rep per type, with its tangents."""
    it = iter(flat)
    levels = list(levels)

    def take(t, lv):
        if not lv or not _is_float(t):
            return next(it)
        p = take(t, lv[:-1])
        tan = take(t, lv[:-1])
        return Rep(p.var, p.block, p.grad, {**p.tangents, lv[-1]: tan})

    return [take(t, levels) for t in types]


def _is_float(t) -> bool:
    return isinstance(t, TensorType) and t.is_float


def _params(b, types, grad: bool, prefix: str) -> tuple[list[ir.Var], list[tuple[ir.Var, Acc | None]]]:
    """Parameter vars for flattened values: a value var, and a gradient
    buffer (with its tangent buffers) for float tensors while differentiating."""
    flat, pairs = [], []
    for t in types:
        v = b.new_var(t, prefix)
        acc = None
        if grad and t.is_float:
            acc = _param_acc(b, "d_" + v.name, t, b.rev, list(b.rev.jvp_levels))
        flat.append(v)
        if acc is not None:
            flat.extend(acc.flat())
        pairs.append((v, acc))
    return flat, pairs


def _param_acc(b, name, t, level, levels) -> Acc:
    var = ir.Var(name, t, "buf")
    tangents = {lv: _param_acc(b, b.fresh("t" + name + "_"), t, level, levels[:i]) for i, lv in enumerate(levels)}
    return Acc(var, level, tangents)


def _args(b, reps: list[Rep], grad: bool) -> list[ir.Var]:
    """Argument vars passing `reps` to parameters made by `_params`; a value
    with no gradient gets a zeroed one, so every branch and call agrees."""
    em = Emitter(b, "pass values")
    out = []
    rev = b.rev
    for r in reps:
        v = r.var
        if v.storage == "const":
            v = b.alloc(r.type, "lit")
            em.map(v, "{0}", r.var)
        out.append(v)
        if grad and r.type.is_float:
            acc = rev.lookup(r)
            if acc is None:
                if rev.tracked_outside(r):
                    rev.reads[id(r)] = r  # an input of the whole value_and_grad (autodiff.py)
                acc = b.new_acc(r.type, rev, "nograd")
            elif acc.forbidden:
                raise staging_error(acc.forbidden)
            _touch_tree(acc)  # what the construct adds into it is not seen here
            out.extend(acc.flat())
    return out


def _touch_tree(acc: Acc) -> None:
    touch(acc)
    for t in acc.tangents.values():
        _touch_tree(t)


def _reps(pairs, block) -> list[Rep]:
    return [Rep(v, block, g) for v, g in pairs]


def _check_same(what: str, first, second, names=("first", "second")) -> None:
    (tree1, types1), (tree2, types2) = first, second
    if tree1 != tree2 or list(types1) != list(types2):
        raise staging_error(
            f"{what}: the {names[0]} gives {_describe(tree1, types1)} "
            f"but the {names[1]} gives {_describe(tree2, types2)}; they must match"
        )


# ------------------------------------------------------------------ cond
def cond(pred, true_fn, false_fn, *operands):
    """`true_fn(*operands)` if `pred` else `false_fn(*operands)`, staged: both
    branches are compiled and chosen at run time.  A Python bool chooses now."""
    if isinstance(pred, bool):
        return true_fn(*operands) if pred else false_fn(*operands)
    b = current()
    pred = as_rep(pred)
    if pred.type.shape != () or pred.type.dtype not in ("bool", "int32"):
        raise staging_error(f"cond: the predicate must be a staged 0-d bool, got {pred.type}")
    if b.in_grad:
        return _cond_cps(b, pred, (true_fn, false_fn), operands)
    return _cond_direct(b, pred, (true_fn, false_fn), operands)


def _trace_branch(b, label, fn, operands, tail_for):
    """Stage `fn(*operands)` in a new scope; `tail_for(reps, tree)` emits its
    tail.  Returns (block, (tree, types)), or None when the branch is bottom."""
    depth = b.depth()
    block = b.open_scope(label)
    try:
        reps, tree = _leaves(fn(*operands), "cond branch")
        b.close_scope(lambda: tail_for(reps, tree))
    except _Bottom:
        b.unwind_to(depth)
        return None
    except BaseException:
        b.unwind_to(depth)
        raise
    return block, (tree, _signature(reps))


def _cond_cps(b, pred, fns, operands):
    here = b.block
    lam = ir.Lam(b.fresh("k"), [], ir.Block(parent=here, label="continuation"))
    state = {}

    def tail_for(reps, tree):
        sig = (tree, _signature(reps))
        flat = expand(b, reps)
        if "sig" not in state:
            state["sig"] = sig
            lam.params, state["pairs"] = _params(b, _signature(flat), True, "r")
        else:
            _check_same("cond", state["sig"], sig, ("true branch", "false branch"))
        b.emit(ir.Jump(lam, _args(b, flat, True)))

    traced = [_trace_branch(b, name, fn, operands, tail_for) for name, fn in zip(("then", "else"), fns)]
    if traced[0] is None and traced[1] is None:
        raise _Bottom()
    blocks = [t[0] if t else ir.Block(parent=here, stmts=[ir.Comment("unreachable during type inference")]) for t in traced]
    b.emit(ir.LamDef(lam))
    b.emit(ir.If(pred.var, blocks[0], blocks[1]))
    b.continue_in(lam.body)
    tree, types = state["sig"]
    return tree_unflatten(tree, collapse(_reps(state["pairs"], lam.body), types, b.jvp_levels))


def _cond_direct(b, pred, fns, operands):
    here = b.block
    state = {}

    def tail_for(reps, tree):
        sig = (tree, _signature(reps))
        flat = expand(b, reps)
        if "sig" not in state:
            state["sig"] = sig
            state["outs"] = [ir.Var(b.fresh("cond_out"), r.type, "buf") for r in flat]
        else:
            _check_same("cond", state["sig"], sig, ("true branch", "false branch"))
        em = Emitter(b, "cond result")
        for out, r in zip(state["outs"], flat):
            em.map(out, "{0}", r.var)

    traced = [_trace_branch(b, name, fn, operands, tail_for) for name, fn in zip(("then", "else"), fns)]
    if traced[0] is None and traced[1] is None:
        raise _Bottom()
    blocks = [t[0] if t else ir.Block(parent=here) for t in traced]
    for out in state["outs"]:
        b.emit(ir.Alloc(out, False))
    b.emit(ir.If(pred.var, blocks[0], blocks[1]))
    tree, types = state["sig"]
    return tree_unflatten(tree, collapse([Rep(v, here) for v in state["outs"]], types, b.jvp_levels))


# ------------------------------------------------------------------ recursion
class RecursiveFunction:
    """A staged function that may call itself; see `recursive`."""

    def __init__(self, fn, returns=None, signature=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.returns = returns
        self.signature = signature  # (tree, types) of the result, when known up front
        self._defs: dict = {}  # key -> list of (defining block, Fun, result signature)
        self._probing: set = set()

    def __call__(self, *args):
        b = current()
        reps, arg_tree = _leaves(args, f"{self.fn.__name__} argument")
        types = _signature(reps)
        # A function staged for one reverse level and set of forward levels
        # tracks exactly those: another needs its own definition.
        key = (arg_tree, tuple(types), b.rev, tuple(b.jvp_levels))
        found = self._lookup(b, key)
        if found is None:
            if key in self._probing:
                raise _Bottom()
            found = self._define(b, key, arg_tree, types)
        fun, (out_tree, out_types) = found
        levels = b.jvp_levels
        lam = ir.Lam(b.fresh("k"), [], ir.Block(parent=b.block, label="continuation"))
        lam.params, pairs = _params(b, expand_types(out_types, levels), b.in_grad, "r")
        b.emit(ir.LamDef(lam))
        b.emit(ir.Call(fun, _args(b, expand(b, reps), b.in_grad), lam))
        b.note_call()  # its body (staged before, maybe) may assign captured arrays
        b.continue_in(lam.body)
        return tree_unflatten(out_tree, collapse(_reps(pairs, lam.body), out_types, levels))

    def _lookup(self, b, key):
        for block, fun, sig in self._defs.get(key, []):
            if b.visible(block):
                return fun, sig
        return None

    def _result_signature(self, b, key, arg_tree, types):
        if self.signature is not None:
            return self.signature
        if self.returns is not None:
            leaves, tree = tree_flatten(self.returns)
            return tree, [t if isinstance(t, TensorType) else TensorType((), "int32") for t in leaves]
        depth = b.depth()
        self._probing.add(key)
        b.open_scope("type inference", barrier=True)
        try:
            _, pairs = _params(b, expand_types(types, b.jvp_levels), b.in_grad, "a")
            args = collapse(_reps(pairs, b.block), types, b.jvp_levels)
            reps, tree = _leaves(self.fn(*tree_unflatten(arg_tree, args)), "result")
            return tree, _signature(reps)
        except _Bottom:
            raise staging_error(
                f"cannot infer the result type of recursive function {self.fn.__name__}: every path "
                "calls it again; give a base case through lt.cond, or returns=..."
            ) from None
        finally:
            b.unwind_to(depth)
            self._probing.discard(key)

    def _define(self, b, key, arg_tree, types):
        sig = self._result_signature(b, key, arg_tree, types)
        name = b.fresh(self.fn.__name__ + "_")
        here = b.block
        grad = b.in_grad
        levels = b.jvp_levels
        out_flat, _ = _params(b, expand_types(sig[1], levels), grad, "k_arg")
        params, pairs = _params(b, expand_types(types, levels), grad, "a")
        depth = b.depth()
        body = b.open_scope(f"function {self.fn.__name__}", barrier=True)
        fun = ir.Fun(name, params, ir.KParam(b.fresh("k"), out_flat), body)
        self._defs.setdefault(key, []).append((here, fun, sig))
        try:
            args = collapse(_reps(pairs, body), types, levels)
            reps, tree = _leaves(self.fn(*tree_unflatten(arg_tree, args)), "result")
            _check_same(f"recursive function {self.fn.__name__}", sig, (tree, _signature(reps)),
                        ("declared or inferred result", "body"))
            b.close_scope(lambda: b.emit(ir.Jump(fun.k, _args(b, expand(b, reps), grad))))
        except BaseException:
            b.unwind_to(depth)
            self._defs[key].pop()
            raise
        b.emit(ir.FunDef(fun))
        return fun, sig


def recursive(fn=None, *, returns=None):
    """Decorator for a staged recursive function (of staged ints and tensors).
    `returns=` optionally gives its result types (a nesting of lt.Tensor[...]
    types); without it they are inferred from the base case."""
    if fn is None:
        return functools.partial(recursive, returns=returns)
    return RecursiveFunction(fn, returns)


# ------------------------------------------------------------------ loops
def fori_loop(lower, upper, body_fn, init):
    """JAX's fori_loop: carry = body_fn(i, carry) for i in [lower, upper)."""
    b = current()
    reps, tree = _leaves(init, "fori_loop carry")
    if b.in_grad:
        sig = (tree, _signature(reps))

        def step(i, carry):
            return cond(i < upper, lambda: loop(i + 1, _checked(body_fn(i, carry), sig, "fori_loop")),
                        lambda: carry)

        loop = RecursiveFunction(step, signature=sig)  # a loop returns its carry's type
        return loop(as_rep(lower), tree_unflatten(tree, reps))
    counter = _direct_counter(b, lower)
    return _direct_loop(b, tree, reps, lambda carry: Rep(counter, b.block) < upper,
                        lambda carry: body_fn(Rep(counter, b.block), carry), "fori_loop", counter)


def while_loop(cond_fn, body_fn, init):
    """JAX's while_loop: while cond_fn(carry): carry = body_fn(carry)."""
    b = current()
    reps, tree = _leaves(init, "while_loop carry")
    if b.in_grad:
        sig = (tree, _signature(reps))

        def step(carry):
            return cond(cond_fn(carry), lambda: loop(_checked(body_fn(carry), sig, "while_loop")),
                        lambda: carry)

        loop = RecursiveFunction(step, signature=sig)
        return loop(tree_unflatten(tree, reps))
    return _direct_loop(b, tree, reps, cond_fn, body_fn, "while_loop", None)


def _checked(carry, sig, what):
    reps, tree = _leaves(carry, f"{what} carry")
    _check_same(what, sig, (tree, _signature(reps)), ("initial carry", "body"))
    return carry


def _mutable(b, type_, prefix) -> ir.Var:
    """A buffer the loop overwrites each iteration (even for 0-d ints, which
    are otherwise immutable C++ scalars)."""
    var = ir.Var(b.fresh(prefix), type_, "buf")
    b.emit(ir.Alloc(var, False))
    return var


def _direct_counter(b, lower) -> ir.Var:
    counter = _mutable(b, TensorType((), "int32"), "iter")
    Emitter(b, "loop counter").map(counter, "{0}", as_rep(lower).var)
    return counter


def _direct_loop(b, tree, reps, cond_fn, body_fn, what, counter):
    """A plain while loop over carry buffers (no differentiation)."""
    here = b.block
    em = Emitter(b, f"{what} carry")
    carry_vars = []
    types = _signature(reps)
    for r in expand(b, reps):
        v = _mutable(b, r.type, "carry")
        em.map(v, "{0}", r.var)
        carry_vars.append(v)
    carry = tree_unflatten(tree, collapse([Rep(v, here) for v in carry_vars], types, b.jvp_levels))

    depth = b.depth()
    head = b.open_scope(f"{what} test", parent=here, barrier=True)
    try:
        test = as_rep(cond_fn(carry))
        if test.type.shape != () or test.type.dtype not in ("bool", "int32"):
            raise staging_error(f"{what}: the loop condition must be a staged 0-d bool, got {test.type}")
        test_var = test.var
        if test_var.storage == "const":
            test_var = Emitter(b).scalar("bool", "{0}", test_var)
        b.close_scope()
    except BaseException:
        b.unwind_to(depth)
        raise

    body = b.open_scope(f"{what} body", parent=head, barrier=True)
    try:
        new = _checked(body_fn(carry), (tree, _signature(reps)), what)

        def tail():
            new_reps, _ = _leaves(new, f"{what} carry")
            new_reps = expand(b, new_reps)
            em = Emitter(b, f"{what} next carry")
            # Values computed before this iteration's body (an unchanged or
            # swapped carry, or a view of one) go through a temporary so no
            # copy overwrites a value another copy still reads.
            staged = []
            for v, r in zip(carry_vars, new_reps):
                if r.var is v:
                    continue
                if r.block is not None and r.block is not body and not body.encloses(r.block) or _is_alias(body, r.var):
                    t = _mutable(b, r.type, "next")
                    em.map(t, "{0}", r.var)
                    staged.append((v, t))
                else:
                    staged.append((v, r.var))
            for v, src in staged:
                em.map(v, "{0}", src)
            if counter is not None:
                em.map(counter, "{0} + 1", counter)

        b.close_scope(tail)
    except BaseException:
        b.unwind_to(depth)
        raise
    b.emit(ir.Loop(head, test_var, body))
    return carry


def _is_alias(block: ir.Block, var: ir.Var) -> bool:
    return any(isinstance(s, ir.Alias) and s.var is var for _, s in ir.walk(block))
