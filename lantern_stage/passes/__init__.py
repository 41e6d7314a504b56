"""IR-to-IR passes, run as a flat, named list."""
from __future__ import annotations

from .. import ir

PIPELINE: list = []


def run_passes(program) -> None:
    defined = {v.name for _, v in program.inputs} | {v.name for _, v in program.captures}
    for _name, fn in PIPELINE:
        fn(program)
    ir.verify(program.body, defined)
