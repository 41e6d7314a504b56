"""How each kernel primitive (`ir.Prim`) is rendered: one line per kind,
calling into cpp_runtime/.  Adding a primitive means adding its line here."""
from __future__ import annotations

from ..ir import Prim, Var
from ..types import CPP_TYPE


def ptr(v: Var) -> str:
    if v.storage == "buf" or v.storage == "array":
        return v.name
    if v.storage == "scalar":
        return f"&{v.name}"
    raise ValueError(f"internal: kernel operand {v!r} has no memory")


def val(v: Var) -> str:
    if v.storage == "scalar":
        return v.name
    if v.storage == "const":
        return ("true" if v.value else "false") if v.dtype == "bool" else str(v.value)
    return f"{v.name}[0]"


def cbool(x) -> str:
    return "true" if x else "false"


def _beta(p: Prim) -> str:
    return "1.0f" if p.accumulate else "0.0f"


def _assigns(p: Prim) -> list[str]:
    """The trailing `false` argument of a kernel that adds into its output unless it
    is the output's first write (passes/first_write.py)."""
    return [] if p.accumulate else ["false"]


def _gemm(p: Prim) -> str:
    a = p.attrs
    return (f"lt::gemm({cbool(a['ta'])}, {cbool(a['tb'])}, {a['M']}, {a['N']}, {a['K']}, "
            f"{ptr(p.ins[0])}, {ptr(p.ins[1])}, {ptr(p.outs[0])}, {_beta(p)});")


def _batched_gemm(p: Prim) -> str:
    a = p.attrs

    def lst(xs):
        return "{" + ", ".join(str(int(x)) for x in xs) + "}"

    def at(k, key):  # operand k's pointer, moved to its first matrix
        off = a.get(key, 0)
        return ptr(k) + (f" + {off}" if off else "")

    # Row strides only when some matrix is a block of a wider one (attention's heads).
    lds = f", {a['lda']}, {a['ldb']}, {a['ldc']}" if "lda" in a else ""
    return (f"lt::batched_gemm({cbool(a['ta'])}, {cbool(a['tb'])}, {a['M']}, {a['N']}, {a['K']}, "
            f"{at(p.ins[0], 'oa')}, {at(p.ins[1], 'ob')}, {at(p.outs[0], 'oc')}, {_beta(p)}, "
            f"{lst(a['batch'])}, {lst(a['sa'])}, {lst(a['sb'])}, {lst(a['so'])}{lds});")


def _gemv(p: Prim) -> str:
    a = p.attrs
    return (f"lt::gemv({cbool(a['trans'])}, {a['M']}, {a['N']}, {ptr(p.ins[0])}, {ptr(p.ins[1])}, "
            f"{ptr(p.outs[0])}, {_beta(p)});")


def _ger(p: Prim) -> str:
    a = p.attrs
    assert p.accumulate, "ger only accumulates"
    return f"lt::ger({a['M']}, {a['N']}, {ptr(p.ins[0])}, {ptr(p.ins[1])}, {ptr(p.outs[0])});"


def _dot(p: Prim) -> str:
    return f"lt::dot({p.attrs['N']}, {ptr(p.ins[0])}, {ptr(p.ins[1])}, {ptr(p.outs[0])}, {cbool(p.accumulate)});"


def _layout_call(fn: str, extra=lambda p: []):
    """A kernel taking its inputs, its outputs, the layout (outer, n, inner),
    then the arguments `extra(p)` lists."""

    def render(p: Prim) -> str:
        a = p.attrs
        args = [ptr(v) for v in p.ins + p.outs] + [str(a["outer"]), str(a["n"]), str(a["inner"])] + extra(p)
        return f"lt::{fn}({', '.join(args)});"

    return render


# Adds into dx, or assigns when it is dx's first write (passes/first_write.py).
_softmax_backward = _layout_call("softmax_backward", _assigns)


def _nll(p: Prim) -> str:
    a = p.attrs
    return f"lt::nll({ptr(p.ins[0])}, {ptr(p.ins[1])}, {ptr(p.outs[0])}, {a['N']}, {a['C']}, {a['scale']!r}f);"


def _nll_backward(p: Prim) -> str:
    a = p.attrs
    return (f"lt::nll_backward({ptr(p.ins[0])}, {ptr(p.ins[1])}, {ptr(p.outs[0])}, "
            f"{a['N']}, {a['C']}, {a['scale']!r}f);")


def _take_row(p: Prim) -> str:
    a = p.attrs
    return f"lt::take_row({ptr(p.ins[0])}, {val(p.ins[1])}, {ptr(p.outs[0])}, {a['rows']}, {a['width']});"


def _take_row_backward(p: Prim) -> str:
    a = p.attrs
    return f"lt::take_row_backward({ptr(p.ins[0])}, {val(p.ins[1])}, {ptr(p.outs[0])}, {a['rows']}, {a['width']});"


def _nn_call(fn: str, *attrs: str, arena: bool = False, extra=lambda p: []):
    """A kernel taking its inputs, then its outputs, then integer attributes,
    then the arguments `extra(p)` lists."""

    def render(p: Prim) -> str:
        args = [ptr(v) for v in p.ins + p.outs] + [repr(p.attrs[a]) for a in attrs] + extra(p)
        return f"lt::{fn}({', '.join(args + (['arena'] if arena else []))});"

    return render


def _rows_call(fn: str):
    """A row write (n rows of `width` into `rows`), its indices named in errors
    by the `what` attribute (lt.embedding's gradient, lt.assign with index=)."""
    return _nn_call(fn, "n", "rows", "width", extra=lambda p: [f'"{p.attrs.get("what", "embedding index")}"'])


_CONV_DIMS = ("N", "C", "H", "W", "F", "KH", "KW", "sh", "sw", "ph", "pw")
_POOL_DIMS = ("N", "C", "H", "W", "k", "s")


def _conv2d(p: Prim) -> str:
    x, w = p.ins[:2]
    b = ptr(p.ins[2]) if len(p.ins) > 2 else "nullptr"
    dims = ", ".join(str(p.attrs[d]) for d in _CONV_DIMS)
    return f"lt::conv2d_forward({ptr(x)}, {ptr(w)}, {b}, {ptr(p.outs[0])}, {dims}, arena);"


def _conv2d_backward(p: Prim) -> str:
    x, w, dy = p.ins
    grads = dict(zip(p.attrs["grads"], p.outs))
    outs = ", ".join(ptr(grads[g]) if g in grads else "nullptr" for g in ("dx", "dw", "db"))
    dims = ", ".join(str(p.attrs[d]) for d in _CONV_DIMS)
    return f"lt::conv2d_backward({', '.join([ptr(x), ptr(w), ptr(dy), outs, dims, 'arena'] + _assigns(p))});"


def _dropout_mask(p: Prim) -> str:
    mask, state = p.outs
    return f"lt::dropout_draw({ptr(state)}, {ptr(mask)}, {max(mask.size, 1)}, {p.attrs['p']!r}f);"


def _outer_log_start(p: Prim) -> str:
    a = p.attrs
    fresh = f", {val(p.ins[0])}" if p.ins else ""   # a bool: drop the rows of earlier calls
    return f"{a['log']}.start({a['M']}, {a['N']}{fresh});"   # declared by program.outer_logs


def _outer_log_append(p: Prim) -> str:
    return f"{p.attrs['log']}.append({ptr(p.ins[0])}, {ptr(p.ins[1])}, {p.attrs['rows']});"


def _outer_log_flush(p: Prim) -> str:
    flush = f"{p.attrs['log']}.flush({', '.join([ptr(p.outs[0])] + _assigns(p))});"
    return f"if ({val(p.ins[0])}) {flush}" if p.ins else flush   # ins: a bool, flush now


def _store_output(p: Prim) -> str:
    v, j = p.ins[0], p.attrs["index"]
    ctype = CPP_TYPE[v.dtype]
    if v.storage in ("scalar", "const"):
        return f"*static_cast<{ctype}*>(lt_out[{j}]) = {val(v)};"
    return f"std::memcpy(lt_out[{j}], {v.name}, sizeof({ctype}) * {max(v.size, 1)});"


def _allreduce_mean(p: Prim) -> str:
    return f"lt::allreduce_mean(rt.collective, {ptr(p.outs[0])}, {max(p.outs[0].size, 1)});"


KERNELS = {
    "gemm": _gemm,
    "gemv": _gemv,
    "batched_gemm": _batched_gemm,
    "ger": _ger,
    "dot": _dot,
    "reduce_sum": _layout_call("reduce_sum"),
    "reduce_max": _layout_call("reduce_max"),
    "reduce_min": _layout_call("reduce_min"),
    "reduce_argmax": _layout_call("reduce_argmax"),
    "softmax": _layout_call("softmax"),
    "log_softmax": _layout_call("log_softmax"),
    "softmax_backward": _softmax_backward,
    "log_softmax_backward": _layout_call("log_softmax_backward", _assigns),
    "nll": _nll,
    "nll_backward": _nll_backward,
    "take_row": _take_row,
    "take_row_backward": _take_row_backward,
    "store_output": _store_output,
    "allreduce_mean": _allreduce_mean,  # data-parallel gradients (train.py)
    "outer_log_start": _outer_log_start,
    "outer_log_append": _outer_log_append,
    "outer_log_flush": _outer_log_flush,
    # nn ops (ops/nn.py)
    "conv2d": _conv2d,
    "conv2d_backward": _conv2d_backward,
    "pool_argmax": _nn_call("max_pool2d_argmax", *_POOL_DIMS),
    "pool_gather": _nn_call("gather_plane", "planes", "in_plane", "out_plane"),
    "pool_gather_backward": _nn_call("gather_plane_backward", "planes", "in_plane", "out_plane", extra=_assigns),
    "avg_pool2d": _nn_call("avg_pool2d_forward", *_POOL_DIMS),
    "avg_pool2d_backward": _nn_call("avg_pool2d_backward", *_POOL_DIMS),
    "dropout_mask": _dropout_mask,
    "gather_rows": _nn_call("gather_rows", "n", "rows", "width"),
    "scatter_add_rows": _rows_call("scatter_add_rows"),
    "put_rows": _rows_call("put_rows"),
    "gather_index": lambda p: (f"lt::gather_index({ptr(p.ins[0])}, {p.ins[0].name}_len, {ptr(p.ins[1])}, "
                               f"{ptr(p.outs[0])}, {p.attrs['n']});"),
}


def render_prim(p: Prim) -> str:
    try:
        render = KERNELS[p.kind]
    except KeyError:
        raise ValueError(f"internal: no kernel renderer for primitive {p.kind!r}") from None
    return render(p)
