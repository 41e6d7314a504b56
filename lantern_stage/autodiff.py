"""Differentiation at staging time: reverse mode by callbacks (`grad`,
`value_and_grad`, `vjp`, `jacrev`), forward mode (`jvp`, `jacfwd`) and their
compositions (`hessian`, grad of grad, jvp of grad).

Reverse mode.  Staging `f` inside a value_and_grad scope records each op's
forward statements and pushes its backward closure; when `f` returns, the
scope's continuation point - its reset - is reached: the loss is copied out,
its gradient seeded with 1, and every pending closure runs in reverse,
staging its op's VJP rule (staged ops, ops/registry.py) and adding the
cotangents into the inputs' gradient buffers - `fwd; k(y); bwd` flattened,
no tape at run time.  Control flow inside `f` splits the scope into
continuation blocks (control.py); closing the scope closes them all.

Levels.  Each value_and_grad being staged is a reverse level (`RevLevel`),
each jvp a forward level (`JvpLevel`), as JAX's trace levels.  A Rep's
gradient buffer belongs to one reverse level; its tangents are a dict from
forward level to tangent.  An op tracks only the innermost reverse level
and every open forward level.

Forward mode is a local transform: inside a jvp level every applied op also
stages its JVP rule.  Tangents travel with values through cond / loops /
@recursive as extra leaves (control.py), and through backward code: a
gradient buffer opened inside forward levels has a tangent buffer per level,
accumulated by the same `accumulate` (whose derivative is the accumulation
of the tangents), so jvp(grad(f)) - a Hessian-vector product - falls out.

How nested reverse scopes compose.  An inner value_and_grad staged while an
outer one is open has its own reset point: the end of the inner `f`.  Its
backward code is flushed there, inside the outer scope's forward code, so
the outer continuation is NOT threaded through the inner one: from the outer
level's point of view, the whole inner call - forward, reset, backward - is
ONE op, whose inputs are the inner arguments x and every outer-tracked value
w that the inner function read (closed-over values, bound parameters;
recorded while staging it), and whose outputs are the value f and the
gradient g = df/dx.  That op's VJP, staged when the outer backward reaches
it, is a recomputation in forward-over-reverse: with cotangents u on f and
c on g,

    d/d(x, w) [u f + c . g] = u grad f + H_f (c, 0)

and both terms come from ONE staged pass: value_and_grad of f with respect
to (x, w), inside a fresh forward level with tangent c on x (and 0 on w).
Its primal gradient is grad f, its tangent H_f (c, 0) (symmetry of mixed
partials).  That needs only first-order reverse and forward mode, both
local, so it works through any control flow, and to any depth: a grad of a
grad of a grad recomputes the inner one inside the recomputation.  Aux
outputs of an inner value_and_grad get no such rule; using one where an
outer gradient would need it is a StagingError.
"""
from __future__ import annotations

import functools

import numpy as np

from . import ir
from .ops.registry import Emitter, acc_value, accumulate, as_rep, staged_leaves, touch
from .staging import JvpLevel, Rep, RevLevel, current, staging_error
from .tree import tree_flatten, tree_unflatten


# ------------------------------------------------------------ reverse mode
def value_and_grad(f, argnums=0, has_aux=False):
    """JAX's value_and_grad: returns a function giving (value, grads), or
    ((value, aux), grads) with has_aux; grads mirror the structure of the
    differentiated arguments.  Nests (grad of grad) and composes with jvp."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    @functools.wraps(f)
    def wrapped(*args):
        b = current()
        for n in nums:
            if not -len(args) <= n < len(args):
                raise staging_error(f"argnums {n} out of range for {len(args)} arguments")
        norm = tuple(n % len(args) for n in nums)
        res = _stage_value_and_grad(b, f, norm, has_aux, list(args), ())
        if b.rev is not None:
            _outer_rule(b, f, norm, has_aux, list(args), res)
        grads = [tree_unflatten(tree, reps) for tree, reps in res.grads]
        grads_out = grads[0] if isinstance(argnums, int) else tuple(grads)
        if has_aux:
            return (res.value, tree_unflatten(res.aux_tree, res.aux)), grads_out
        return res.value, grads_out

    return wrapped


def value_and_grad_into(f, params, buffers, has_aux=False, logs=None):
    """value_and_grad of f(params) (a list of float32 tensors) whose gradients
    are added into `buffers` - existing staged buffers, one per parameter, of
    the same types - instead of into fresh zeroed ones; a None buffer is a
    fresh zeroed one.  Returns (f's value (and aux), the gradients of the
    parameters whose buffer is None, None for the others).  A gradient
    accumulated over calls (lt.train_step(accumulate=K)) then needs neither a
    zero fill nor a pass adding it into the accumulator: the backward code
    (and the deferred weight-gradient gemms) add into it.
    logs=(fresh, flush), two staged bools: the deferred weight-gradient rows
    are kept over calls, dropped first when `fresh`, added when `flush`
    (passes/defer_outer.py)."""
    b = current()
    if b.rev is not None or b.jvp_levels:
        raise staging_error("value_and_grad_into: only outside other grad / jvp scopes")
    buffers = [None if x is None else as_rep(x) for x in buffers]
    if len(buffers) != len(params):
        raise staging_error(f"value_and_grad_into: {len(buffers)} buffers for {len(params)} parameters")
    seen = {}
    for k, (p, g) in enumerate(zip(params, buffers)):
        if g is None:
            continue
        want = as_rep(p).type
        if g.var.storage != "buf":
            held = {"const": f"the literal {g.var.value!r}", "scalar": f"a staged {g.type} held by value",
                    "array": "an IntArray"}[g.var.storage]
            raise staging_error(f"value_and_grad_into: buffer {k} is {held}, not a tensor in memory to add its "
                                f"gradient into; expected a staged {want} (its parameter's type)")
        if g.type != want:
            raise staging_error(f"value_and_grad_into: buffer {k} is {g.type}; expected {want}, its parameter's type")
        if id(g.var) in seen:  # e.g. two lt.zeros of one shape: hash-consing makes them one buffer
            raise staging_error(f"value_and_grad_into: buffers {seen[id(g.var)]} and {k} are the same buffer "
                                f"({g.var.name}); each parameter needs a buffer of its own")
        seen[id(g.var)] = k
    res = _stage_value_and_grad(b, f, (0,), has_aux, [list(params)], (), into=[buffers], logs=logs)
    fresh = [g if buf is None else None for g, buf in zip(res.grads[0][1], buffers)]
    if has_aux:
        return (res.value, tree_unflatten(res.aux_tree, res.aux)), fresh
    return res.value, fresh


def grad(f, argnums=0, has_aux=False):
    """JAX's grad: the gradients only (and aux with has_aux)."""
    vg = value_and_grad(f, argnums, has_aux)

    @functools.wraps(f)
    def wrapped(*args):
        value, grads = vg(*args)
        return (grads, value[1]) if has_aux else grads

    return wrapped


class _Staged:
    """What staging one value_and_grad produced."""

    def __init__(self, level, value, aux, aux_tree, grads, originals, extra_grads):
        self.level = level
        self.value = value  # Rep
        self.aux = aux  # list of Reps
        self.aux_tree = aux_tree
        self.grads = grads  # [(tree, [Rep])] per argnum
        self.originals = originals  # the differentiated leaves as passed
        self.extra_grads = extra_grads  # gradients of `extra`, in order


def _stage_value_and_grad(b, f, nums, has_aux, args, extra, into=None, logs=None) -> _Staged:
    """value_and_grad of f(*args) w.r.t. the leaves of args[n] for n in nums,
    and w.r.t. the Reps `extra` wherever f reads them.  `into`: per argnum, a
    list of existing buffers (Reps) to add the leaves' gradients into; `logs`:
    see value_and_grad_into."""
    from .control import collapse, expand
    from .staging import Acc

    level = RevLevel(b.rev, tuple(b.jvp_levels))
    originals, grad_accs = [], []
    for i, n in enumerate(nums):
        leaves, tree = tree_flatten(args[n])
        tracked, accs = [], []
        for k, leaf in enumerate(leaves):
            rep = _differentiable(leaf, n)
            if into is None or into[i][k] is None:
                acc = b.new_acc(rep.type, level, "d_" + rep.var.name)
            else:  # not known to be zero: what is in it stays and is added to
                acc = Acc(into[i][k].var, level)
                acc.touched = True
            tracked.append(Rep(rep.var, rep.block, acc, rep.tangents))
            accs.append(acc)
            originals.append(rep)
        args[n] = tree_unflatten(tree, tracked)
        grad_accs.append((tree, accs))
    extra_accs = []
    for r in extra:
        acc = b.new_acc(r.type, level, "d_" + r.var.name)
        level.extra[id(r)] = acc
        extra_accs.append(acc)

    depth = b.depth()
    body = b.open_scope("value_and_grad", rev=level)
    try:
        out = f(*args)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise staging_error("with has_aux=True the function must return (loss, aux)")
            loss, aux = out
        else:
            loss, aux = out, None
        loss = as_rep(loss)
        if loss.shape != () or loss.dtype != "float32":
            raise staging_error(
                f"value_and_grad: the function must return a float32 scalar, got {loss.type}"
            )
        aux_reps, aux_tree = staged_leaves(aux, "aux")
        outs = [loss] + aux_reps
        flat = expand(b, outs)  # with their tangents, when inside jvp levels
        # Buffers outside the scope: what the function returns outlives it.
        slots = [ir.Var(b.fresh("value_"), r.type, "buf") for r in flat]

        def tail():
            em = Emitter(b, "value_and_grad: copy out, seed")
            for slot, r in zip(slots, flat):
                em.map(slot, "{0}", r.var)
            seed = level.lookup(loss)
            if seed is not None:
                em.fill(seed.var, 1.0)
                touch(seed)

        b.close_scope(tail)
    except BaseException:
        b.unwind_to(depth)
        raise
    for slot in slots:
        b.emit(ir.Alloc(slot, False))
    accs = [a for _, group in grad_accs for a in group] + extra_accs
    fresh, flush = (as_rep(x).var for x in logs) if logs is not None else (None, None)
    b.emit(ir.Nested(body, [v for a in accs for v in a.flat()], fresh, flush))
    values = collapse([Rep(s, b.block) for s in slots], [r.type for r in outs], b.jvp_levels)
    grads = [(tree, [_grad_rep(b, a) for a in group]) for tree, group in grad_accs]
    return _Staged(level, values[0], values[1:], aux_tree, grads, originals,
                   [_grad_rep(b, a) for a in extra_accs])


def _grad_rep(b, acc) -> Rep:
    r = acc_value(acc)
    return Rep(r.var, b.block, None, r.tangents)


def _outer_rule(b, f, nums, has_aux, args, res: _Staged) -> None:
    """Inside an enclosing reverse level: the inner value_and_grad call is one
    op of that level, with the recomputation rule of the module docstring."""
    outer = b.rev
    w, seen = [], set()
    for r in res.originals + list(res.level.reads.values()):
        if id(r) in seen:
            continue
        seen.add(id(r))
        if outer.lookup(r) is not None:
            w.append(r)
        elif outer.tracked_outside(r):
            outer.reads[id(r)] = r  # for the levels further out
    if not w:
        return
    x_ids = {id(r) for r in res.originals}
    w_extra = [r for r in w if id(r) not in x_ids]
    value = res.value
    value.grad = b.new_acc(value.type, outer, "d_value")
    grad_reps = [g for _, group in res.grads for g in group]
    for g in grad_reps:
        g.grad = b.new_acc(g.type, outer, "d_grad")
    for a in res.aux:
        if a.type.is_float:
            a.grad = b.new_acc(a.type, outer, "d_aux")
            a.grad.forbidden = (
                "value_and_grad(has_aux=True) inside another grad: an outer gradient through the aux "
                "output is not supported; return that value from the inner function's loss, or compute "
                "it outside the inner grad"
            )

    def backward():
        use_u = value.grad.touched
        cs = [g.grad for g in grad_reps]
        if not use_u and not any(c.touched for c in cs):
            return
        level = JvpLevel()
        new_args = list(args)
        k = 0
        for n in nums:
            leaves, tree = tree_flatten(args[n])
            new = []
            for leaf in leaves:
                rep = res.originals[k]
                tans = dict(rep.tangents)
                if cs[k].touched:
                    tans[level] = acc_value(cs[k])
                new.append(Rep(rep.var, rep.block, rep.grad, tans))
                k += 1
            new_args[n] = tree_unflatten(tree, new)
        saved = b.jvp_levels
        b.jvp_levels = saved + [level]
        try:
            again = _stage_value_and_grad(b, f, nums, has_aux, new_args, w_extra)
        finally:
            b.jvp_levels = saved
        regrads = [g for _, group in again.grads for g in group] + again.extra_grads
        u = acc_value(value.grad) if use_u else None
        for target, g in zip(res.originals + w_extra, regrads):
            acc = outer.lookup(target)
            if acc is None:
                continue
            if u is not None:
                accumulate(acc, g * u, "d value_and_grad: u * grad")
            h = g.tangents.get(level)
            if h is not None:
                accumulate(acc, h, "d value_and_grad: Hessian term")

    b.push_backward(backward)


def _differentiable(leaf, argnum) -> Rep:
    rep = as_rep(leaf)
    if rep.var.storage != "buf" or rep.dtype != "float32":
        raise staging_error(
            f"argument {argnum} of value_and_grad: can only differentiate float32 tensors, got {rep.type}"
        )
    return rep


def vjp(f, *primals):
    """JAX's vjp: (f(*primals), vjp_fn) where vjp_fn(cotangent) gives one
    cotangent per primal; vjp_fn restages f in a value_and_grad of
    sum(f(*primals) * cotangent)."""
    out = f(*primals)
    out_leaves, out_tree = staged_leaves(out, "vjp output")

    def vjp_fn(ct):
        ct_leaves, ct_tree = tree_flatten(ct)
        if ct_tree != out_tree or len(ct_leaves) != len(out_leaves):
            raise staging_error("vjp_fn: the cotangent must have the structure of the function's output")
        cts = [as_rep(c, "float32") for c in ct_leaves]
        for o, c in zip(out_leaves, cts):
            if c.shape != o.shape:
                raise staging_error(f"vjp_fn: cotangent of shape {c.shape} for an output of shape {o.shape}")

        def pairing(*ps):
            from .api import sum as lt_sum

            leaves, _ = staged_leaves(f(*ps), "vjp output")
            total = 0.0
            for o, c in zip(leaves, cts):
                total = total + lt_sum(o * c)
            return total

        g = grad(pairing, argnums=tuple(range(len(primals))))(*primals)
        return tuple(g)

    return out, vjp_fn


# ------------------------------------------------------------ forward mode
def jvp(f, primals, tangents):
    """JAX's jvp: (f(*primals), the directional derivative along tangents);
    primals and tangents are sequences of the same (pytree) structure."""
    b = current()
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise staging_error("jvp: primals and tangents must be tuples (or lists) of arguments")
    p_leaves, p_tree = tree_flatten(tuple(primals))
    t_leaves, t_tree = tree_flatten(tuple(tangents))
    if p_tree != t_tree:
        raise staging_error("jvp: tangents must have the structure of the primals")
    level = JvpLevel()
    wrapped = []
    for k, (p, t) in enumerate(zip(p_leaves, t_leaves)):
        p = as_rep(p)
        t = as_rep(t, "float32")
        if p.dtype != "float32" or p.var.storage == "array":
            raise staging_error(f"jvp: primal {k} is {p.type}; only float32 tensors have tangents")
        if t.shape != p.shape or t.dtype != "float32":
            raise staging_error(f"jvp: tangent {k} is {t.type}, its primal {p.type}")
        wrapped.append(Rep(p.var, p.block, p.grad, {**p.tangents, level: t}))
    saved = b.jvp_levels
    b.jvp_levels = saved + [level]
    try:
        out = f(*tree_unflatten(p_tree, wrapped))
        out_leaves, out_tree = staged_leaves(out, "jvp output")
        tans = []
        for r in out_leaves:
            t = r.tangents.get(level)
            if t is None:
                t = _zeros(r)
            tans.append(t)
    finally:
        b.jvp_levels = saved
    prim = [Rep(r.var, r.block, r.grad, {k: v for k, v in r.tangents.items() if k is not level}) for r in out_leaves]
    return tree_unflatten(out_tree, prim), tree_unflatten(out_tree, tans)


def _zeros(r: Rep) -> Rep:
    from .ops.shape import full

    dtype = "float32" if r.dtype == "float32" else r.dtype
    return full(shape=r.shape, value=0, dtype=dtype)


# ------------------------------------------------------------ Jacobians
def _jacobian_args(fn_name, argnums, args) -> list[int]:
    """The differentiated argument positions: one int, or a tuple of them
    (JAX's argnums; a tuple gives a tuple of Jacobians)."""
    nums = [argnums] if isinstance(argnums, int) and not isinstance(argnums, bool) else argnums
    if not isinstance(nums, (list, tuple)) or not nums or any(
            isinstance(n, bool) or not isinstance(n, int) for n in nums):
        raise staging_error(f"{fn_name}: argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    out = []
    for n in nums:
        if not -len(args) <= n < len(args):
            raise staging_error(f"{fn_name}: argnums {n} out of range for {len(args)} arguments")
        n %= len(args)
        if n in out:
            raise staging_error(f"{fn_name}: argnums {argnums!r} names argument {n} twice")
        x = as_rep(args[n])
        if x.dtype != "float32":
            raise staging_error(f"{fn_name}: can only differentiate float32 tensors, argument {n} is {x.type}")
        out.append(n)
    return out


def _with(args, nums, values):
    """args with args[n] replaced by its value, for each n of nums."""
    a = list(args)
    for n, v in zip(nums, values):
        a[n] = v
    return a


def _single_output(fn_name, out) -> Rep:
    out = as_rep(out)
    if out.dtype != "float32":
        raise staging_error(f"{fn_name}: the function must return one float32 tensor, got {out.type}")
    return out


def jacfwd(f, argnums=0):
    """The Jacobian out.shape + x.shape by forward mode: one jvp per element
    of x (for small inputs).  With a tuple of argnums, a tuple of Jacobians,
    one per argument; a function returning a tuple (or any nesting) of
    tensors gives that nesting of Jacobians (so `hessian` takes argnums
    tuples too, as JAX's: H[i][j] = d^2 f / dx_i dx_j)."""
    from .api import reshape, stack

    def flat_outputs(out):
        leaves, tree = staged_leaves(out, "jacfwd output")
        for r in leaves:
            if r.dtype != "float32":
                raise staging_error(f"jacfwd: the function must return float32 tensors, got {r.type}")
        return leaves, tree

    @functools.wraps(f)
    def wrapped(*args):
        nums = _jacobian_args("jacfwd", argnums, args)
        per_arg, trees = [], []  # per argument: one Jacobian per output leaf

        def leaves_of(n, v):
            leaves, tree = flat_outputs(f(*_with(args, (n,), (v,))))
            trees.append(tree)
            return tuple(leaves)

        for n in nums:
            x = as_rep(args[n])
            cols, outs = None, None
            for j in range(x.size):
                e = np.zeros(x.size, np.float32)
                e[j] = 1.0
                ys, ts = jvp(lambda v: leaves_of(n, v), (x,), (e.reshape(x.shape),))
                outs = ys
                cols = [[] for _ in ys] if cols is None else cols
                for c, y, t in zip(cols, ys, ts):
                    c.append(reshape(t, (y.size,)))
            if outs is None:
                raise staging_error(f"jacfwd: argument {n} has no elements")
            per_arg.append([reshape(stack(c, axis=1), y.shape + x.shape) for c, y in zip(cols, outs)])
        leaves = [per_arg[0][k] if isinstance(argnums, int) else tuple(jac[k] for jac in per_arg)
                  for k in range(len(per_arg[0]))]
        return tree_unflatten(trees[0], leaves)

    return wrapped


def jacrev(f, argnums=0):
    """The Jacobian out.shape + x.shape by reverse mode: one gradient per
    element of the output (one in all for a scalar function), with respect
    to every argument of a tuple of argnums at once (a tuple of Jacobians)."""
    from .api import reshape, stack

    @functools.wraps(f)
    def wrapped(*args):
        nums = _jacobian_args("jacrev", argnums, args)
        xs = [as_rep(args[n]) for n in nums]

        def at(vs):
            return _single_output("jacrev", f(*_with(args, nums, vs)))

        def row(i):
            def pick(*vs):
                y = at(vs)
                return y if y.shape == () else reshape(y, (y.size,))[i]

            return grad(pick, argnums=tuple(range(len(xs))))(*xs)

        out_shape = _output_shape(lambda: at(xs))
        if out_shape == ():
            jacs = list(row(None))
        else:
            rows = [row(i) for i in range(int(np.prod(out_shape)))]
            jacs = [reshape(stack([reshape(r[k], (x.size,)) for r in rows], axis=0), out_shape + x.shape)
                    for k, x in enumerate(xs)]
        return jacs[0] if isinstance(argnums, int) else tuple(jacs)

    return wrapped


def _output_shape(thunk):
    """The output shape of a function, by staging it once (dead code is removed)."""
    return thunk().shape


def hessian(f, argnums=0):
    """JAX's hessian: jacfwd(jacrev(f)) - forward over reverse."""
    return jacfwd(jacrev(f, argnums), argnums)
