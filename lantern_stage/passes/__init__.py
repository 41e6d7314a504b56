"""IR-to-IR passes, run as a flat, named list; `verify` checks the result."""
from __future__ import annotations

from .. import ir
from .copy_alias import alias_copies
from .dce import remove_dead_code
from .defer_outer import defer_outer_products
from .eta import eta_reduce
from .first_write import assign_first_writes
from .fold import fold_accumulations
from .fusion import fuse_elementwise, inline_temporaries
from .pool_values import reuse_pooled_values
from .transpose_weights import transpose_weights

PIPELINE = [
    ("eta-reduce continuations", eta_reduce),
    ("remove dead code", remove_dead_code),
    ("fold accumulations into their kernels", fold_accumulations),
    ("defer weight-gradient outer products", defer_outer_products),
    ("remove dead code", remove_dead_code),
    ("transposed copies of weights read as x W^T", transpose_weights),
    ("max pooling's values from its argmax kernel", reuse_pooled_values),
    ("inline single-use temporaries", inline_temporaries),
    ("assign first writes", assign_first_writes),
    ("whole-buffer copies as views", alias_copies),
    ("fuse elementwise loops", fuse_elementwise),
    ("assign first writes of fused loops", assign_first_writes),
    ("remove dead code", remove_dead_code),
]


def run_passes(program) -> None:
    defined = {v.name for _, v in program.inputs} | {v.name for _, v in program.captures}
    for _name, fn in PIPELINE:
        fn(program)
    ir.verify(program.body, defined)
