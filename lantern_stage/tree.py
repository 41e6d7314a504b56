"""Flattening nested tuples / lists / dicts of values (pytrees) and back."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TreeDef:
    kind: str  # "leaf", "tuple", "list", "dict", "none"
    children: tuple = ()
    keys: tuple = ()

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)

    def to_json(self):
        """The JSON form compiled packages store (lantern_stage.runtime reads it)."""
        if self.kind in ("leaf", "none"):
            return self.kind
        out = {"kind": self.kind, "children": [c.to_json() for c in self.children]}
        if self.kind == "dict":
            out["keys"] = list(self.keys)
        return out

    def leaf_keys(self) -> list[tuple]:
        """The path of each leaf, in order: a tuple of dict keys and sequence indices."""
        out: list[tuple] = []
        work = [(self, ())]
        while work:
            tree, keys = work.pop()
            if tree.kind == "leaf":
                out.append(keys)
                continue
            labels = tree.keys if tree.kind == "dict" else range(len(tree.children))
            work.extend(reversed([(c, keys + (k,)) for k, c in zip(labels, tree.children)]))
        return out

    def __str__(self) -> str:
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        inner = ", ".join(str(c) for c in self.children)
        if self.kind == "dict":
            inner = ", ".join(f"{k!r}: {c}" for k, c in zip(self.keys, self.children))
            return "{" + inner + "}"
        return f"({inner})" if self.kind == "tuple" else f"[{inner}]"


def tree_flatten(x) -> tuple[list, TreeDef]:
    leaves: list = []
    return leaves, _flatten(x, leaves)


def _flatten(x, leaves) -> TreeDef:
    # Recursion follows the nesting of the user's structure, not program size.
    if x is None:
        return TreeDef("none")
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return TreeDef("tuple", tuple(_flatten(c, leaves) for c in x))
    if isinstance(x, list):
        return TreeDef("list", tuple(_flatten(c, leaves) for c in x))
    if isinstance(x, dict):
        keys = tuple(x.keys())
        return TreeDef("dict", tuple(_flatten(x[k], leaves) for k in keys), keys)
    leaves.append(x)
    return TreeDef("leaf")


def tree_unflatten(tree: TreeDef, leaves) -> object:
    it = iter(leaves)
    out = _unflatten(tree, it)
    return out


def _unflatten(tree: TreeDef, it):
    if tree.kind == "leaf":
        return next(it)
    if tree.kind == "none":
        return None
    kids = [_unflatten(c, it) for c in tree.children]
    if tree.kind == "tuple":
        return tuple(kids)
    if tree.kind == "list":
        return kids
    return dict(zip(tree.keys, kids))


def tree_map(fn, x):
    leaves, tree = tree_flatten(x)
    return tree_unflatten(tree, [fn(leaf) for leaf in leaves])
