"""`lt.einsum`: numpy's / PyTorch's subscript strings, lowered to existing ops.

A contraction is staged as ops that already have derivative rules, so its
gradients (and higher derivatives) need nothing of their own:
  * a label repeated within one operand ('ii->i') is a strided view of the
    diagonal (`shape.strided`, stride = the sum of the repeated axes' strides);
  * a label only one operand has and the result does not need is summed out;
  * a size-1 dimension against a larger one of the same label is dropped (a
    free reshape), so it broadcasts, as numpy does;
  * two operands are contracted as one product: each is permuted (a view when
    it already is in order, else `transpose`) to [batch, free, contracted]
    and reshaped to 3-D, and `mm` / `bmm` multiply them, taking an operand
    laid out [batch, contracted, free] through the transpose flag instead of
    a copy; with nothing contracted it is a broadcast multiply (an outer
    product);
  * more than two operands are contracted left to right;
  * the result is permuted to the output's order.
"""
from __future__ import annotations

from math import prod

from .ops import elementwise as ew
from .ops import linalg, reduce, shape
from .ops.registry import as_rep
from .staging import staging_error
from .types import contiguous_strides

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _ellipsis(k: int, total: int) -> list[str]:
    """Labels of the last k of `total` broadcast (ellipsis) dimensions: right-aligned, as numpy."""
    return [f"...{d}" for d in range(total - k, total)]


def _split_term(term: str, what: str) -> tuple[list[str], bool]:
    """A term's letters (with "..." as one marker) and whether it has an ellipsis."""
    if term.count("...") > 1:
        raise staging_error(f"einsum: {what} '{term}' has more than one '...'")
    labels = []
    rest = term.replace("...", "\0")
    for ch in rest:
        if ch == "\0":
            labels.append("...")
        elif ch in _LETTERS:
            labels.append(ch)
        else:
            raise staging_error(f"einsum: invalid subscript {ch!r} in {what} '{term}' (use letters a-z, A-Z and '...')")
    return labels, "\0" in rest


def parse(subscripts: str, shapes: list[tuple[int, ...]]) -> tuple[list[list[str]], list[str]]:
    """Each operand's label per dimension and the output's labels, with the
    ellipsis expanded into numbered labels."""
    if not isinstance(subscripts, str):
        raise staging_error(f"einsum: the first argument must be a subscript string, got {type(subscripts).__name__}")
    spec = subscripts.replace(" ", "")
    if spec.count("->") > 1:
        raise staging_error(f"einsum: '{subscripts}' has more than one '->'")
    lhs, arrow, rhs = spec.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise staging_error(f"einsum: '{subscripts}' has {len(terms)} input term(s) for {len(shapes)} operand(s)")
    parsed = [_split_term(t, f"input term {k}") for k, t in enumerate(terms)]
    n_ellipsis = 0
    for (labels, has_ellipsis), term, shp in zip(parsed, terms, shapes):
        letters = len(labels) - has_ellipsis
        if letters > len(shp) or not has_ellipsis and letters != len(shp):
            raise staging_error(f"einsum: term '{term}' has {letters} subscript(s) for an operand of shape {shp}")
        n_ellipsis = max(n_ellipsis, len(shp) - letters if has_ellipsis else 0)
    inputs = []
    for (labels, _), shp in zip(parsed, shapes):
        out = []
        for label in labels:
            out += _ellipsis(len(shp) - (len(labels) - 1), n_ellipsis) if label == "..." else [label]
        inputs.append(out)
    if arrow:
        labels, has_ellipsis = _split_term(rhs, "output")
        output = []
        for label in labels:
            output += _ellipsis(n_ellipsis, n_ellipsis) if label == "..." else [label]
        seen = {label for term in inputs for label in term}
        for label in output:
            if output.count(label) > 1:
                raise staging_error(f"einsum: output subscript '{label}' appears more than once in '{subscripts}'")
            if label not in seen:
                raise staging_error(f"einsum: output subscript '{label}' does not appear in the inputs of '{subscripts}'")
    else:  # implicit: the broadcast dimensions, then the letters seen once, sorted
        counts: dict[str, int] = {}
        for term in inputs:
            for label in term:
                counts[label] = counts.get(label, 0) + 1
        output = _ellipsis(n_ellipsis, n_ellipsis) + sorted(c for c, n in counts.items() if n == 1 and c in _LETTERS)
    return inputs, output


def _sizes(inputs, reps, subscripts) -> dict[str, int]:
    """Each label's size; size-1 dimensions broadcast against larger ones."""
    sizes: dict[str, int] = {}
    for term, r in zip(inputs, reps):
        for label, n in zip(term, r.shape):
            m = sizes.get(label, 1)
            if m != n and 1 not in (m, n):
                what = "a broadcast (...) dimension" if label.startswith("...") else f"subscript '{label}'"
                raise staging_error(f"einsum: {what} has sizes {m} and {n} in '{subscripts}'")
            sizes[label] = max(m, n)
    return sizes


def _permute(x, labels: list[str], order: list[str]):
    """x (dimensions `labels`) with its dimensions in `order` (x itself when already so)."""
    from .api import transpose  # api imports this module

    return transpose(x, [labels.index(label) for label in order])


def _reshape(x, dims):
    dims = tuple(dims)
    return x if x.shape == dims else shape.reshape(x, shape=dims)


def _prepare(x, labels: list[str], sizes: dict, keep: set):
    """One operand before contracting: diagonals taken, broadcast size-1
    dimensions dropped, labels nothing else needs summed out."""
    while len(set(labels)) < len(labels):  # a repeated label: its diagonal
        label = next(c for c in labels if labels.count(c) > 1)
        first, strides = labels.index(label), contiguous_strides(x.shape)
        new_labels, new_shape, new_strides = [], [], []
        for k, c in enumerate(labels):
            if c == label and k != first:
                if x.shape[k] != x.shape[first]:
                    raise staging_error(f"einsum: repeated subscript '{label}' has sizes {x.shape[first]} and "
                                        f"{x.shape[k]} in one operand")
                new_strides[first] += strides[k]
                continue
            new_labels.append(c)
            new_shape.append(x.shape[k])
            new_strides.append(strides[k])
        x = shape.strided(x, shape=tuple(new_shape), offset=0, strides=tuple(new_strides))
        labels = new_labels
    squeeze = [k for k, c in enumerate(labels) if x.shape[k] == 1 and sizes[c] > 1]
    if squeeze:
        labels = [c for k, c in enumerate(labels) if k not in squeeze]
        x = _reshape(x, [n for k, n in enumerate(x.shape) if k not in squeeze])
    return _sum_out(x, labels, lambda c: c not in keep)


def _sum_out(x, labels: list[str], drop):
    """x summed over the dimensions whose label `drop` selects; -> (x, labels left)."""
    for k in reversed([k for k, c in enumerate(labels) if drop(c)]):
        x = reduce.sum_axis(x, axis=k, keepdims=False)
    return x, [c for c in labels if not drop(c)]


def _contract(a, la, b, lb, keep: set, sizes: dict):
    """The product of two prepared operands over their common labels that
    `keep` does not need; -> (result, its labels)."""
    # A label on one side only that `keep` does not need: the other side had
    # it as a broadcast size-1 dimension (dropped by _prepare), so it is
    # summed out of this side alone.
    a, la = _sum_out(a, la, lambda c: c not in lb and c not in keep)
    b, lb = _sum_out(b, lb, lambda c: c not in la and c not in keep)
    batch = [c for c in la if c in lb and c in keep]
    inner = [c for c in la if c in lb and c not in keep]
    free_a = [c for c in la if c not in lb]
    free_b = [c for c in lb if c not in la]
    size = lambda labels: prod(sizes[c] for c in labels)  # noqa: E731
    out_labels = batch + free_a + free_b
    if not inner:  # an outer product (per batch element): broadcast multiply
        a3 = _reshape(_permute(a, la, batch + free_a), [sizes[c] for c in batch + free_a] + [1] * len(free_b))
        b3 = _reshape(_permute(b, lb, batch + free_b),
                      [sizes[c] for c in batch] + [1] * len(free_a) + [sizes[c] for c in free_b])
        return ew.mul(a3, b3), out_labels
    nb, m, k, n = size(batch), size(free_a), size(inner), size(free_b)
    ta = la == batch + inner + free_a and la != batch + free_a + inner
    tb = lb == batch + free_b + inner and lb != batch + inner + free_b
    a2 = a if ta else _permute(a, la, batch + free_a + inner)
    b2 = b if tb else _permute(b, lb, batch + inner + free_b)
    if nb == 1:
        out = linalg.mm(a2, b2, M=m, N=n, K=k, ta=ta, tb=tb)
    else:
        out = linalg.bmm(a2, b2, out_shape=(nb, m, n), batch=(nb,), sa=(m * k,), sb=(k * n,), so=(m * n,),
                         M=m, N=n, K=k, ta=ta, tb=tb)
    return _reshape(out, [sizes[c] for c in out_labels]), out_labels


def einsum(subscripts, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):  # torch.einsum(eq, [a, b])
        operands = tuple(operands[0])
    if not operands:
        raise staging_error("einsum: needs at least one operand")
    reps = [as_rep(x) for x in operands]
    inputs, output = parse(subscripts, [r.shape for r in reps])
    sizes = _sizes(inputs, reps, subscripts)

    def needed(after: int) -> set:
        """Labels the output or operands after index `after` still use."""
        return set(output).union(*[set(t) for t in inputs[after + 1:]])

    def others(k: int) -> set:
        return set(output).union(*[set(t) for j, t in enumerate(inputs) if j != k])

    acc, acc_labels = _prepare(reps[0], list(inputs[0]), sizes, others(0))
    for k in range(1, len(reps)):
        x, labels = _prepare(reps[k], list(inputs[k]), sizes, others(k))
        acc, acc_labels = _contract(acc, acc_labels, x, labels, needed(k), sizes)
    return _permute(acc, acc_labels, output)
