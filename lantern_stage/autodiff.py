"""`grad` and `value_and_grad`: reverse mode by callbacks, at staging time.

Staging `f` inside a grad scope records each op's forward statements and
pushes its backward emitter; when `f` returns, the scope's continuation point
is reached: the loss is copied out, its gradient seeded with 1, and every
pending backward emitter runs in reverse - `fwd; k(y); bwd` flattened, with
no tape at run time.  Control flow inside `f` splits the scope into
continuation blocks (see control.py); closing the scope closes them all.
"""
from __future__ import annotations

import functools

from . import ir
from .ops.registry import Emitter, as_rep
from .staging import Rep, current, staging_error
from .tree import tree_flatten, tree_unflatten


def value_and_grad(f, argnums=0, has_aux=False):
    """JAX's value_and_grad: returns a function giving (value, grads), or
    ((value, aux), grads) with has_aux; grads mirror the structure of the
    differentiated arguments."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    @functools.wraps(f)
    def wrapped(*args):
        b = current()
        if b.in_grad:
            raise staging_error("nested differentiation (grad of grad) is not supported")
        for n in nums:
            if not -len(args) <= n < len(args):
                raise staging_error(f"argnums {n} out of range for {len(args)} arguments")
        args = list(args)
        grad_trees = {}
        for n in nums:
            leaves, tree = tree_flatten(args[n])
            tracked, grads = [], []
            for leaf in leaves:
                rep = _differentiable(leaf, n)
                g = b.alloc(rep.type, "d_" + rep.var.name, zero=True)
                tracked.append(Rep(rep.var, rep.block, g))
                grads.append(g)
            args[n] = tree_unflatten(tree, tracked)
            grad_trees[n] = (tree, grads)

        depth = b.depth()
        body = b.open_scope("value_and_grad", grad=True)
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
            aux_leaves, aux_tree = tree_flatten(aux)
            aux_leaves = [as_rep(a) for a in aux_leaves]
            # Buffers outside the scope: what the function returns outlives it.
            slots = [ir.Var(b.fresh("value_"), r.type, "buf") for r in [loss] + aux_leaves]

            def tail():
                em = Emitter(b, "value_and_grad: copy out, seed")
                for slot, r in zip(slots, [loss] + aux_leaves):
                    em.map(slot, "{0}", r.var)
                if loss.grad is not None:
                    em.fill(loss.grad, 1.0)

            b.close_scope(tail)
        except BaseException:
            b.unwind_to(depth)
            raise
        for slot in slots:
            b.emit(ir.Alloc(slot, False))
        b.emit(ir.Nested(body, [g for n in nums for g in grad_trees[n][1]]))
        value = Rep(slots[0], b.block)
        outs = [Rep(s, b.block) for s in slots[1:]]
        grads = []
        for n in nums:
            tree, gs = grad_trees[n]
            grads.append(tree_unflatten(tree, [Rep(g, b.block) for g in gs]))
        grads_out = grads[0] if isinstance(argnums, int) else tuple(grads)
        if has_aux:
            return (value, tree_unflatten(aux_tree, outs)), grads_out
        return value, grads_out

    return wrapped


def grad(f, argnums=0, has_aux=False):
    """JAX's grad: the gradients only (and aux with has_aux)."""
    vg = value_and_grad(f, argnums, has_aux)

    @functools.wraps(f)
    def wrapped(*args):
        value, grads = vg(*args)
        return (grads, value[1]) if has_aux else grads

    return wrapped


def _differentiable(leaf, argnum) -> Rep:
    rep = as_rep(leaf)
    if rep.var.storage != "buf" or rep.dtype != "float32":
        raise staging_error(
            f"argument {argnum} of value_and_grad: can only differentiate float32 tensors, got {rep.type}"
        )
    return rep
