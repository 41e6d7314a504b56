"""Small helpers shared by the framework modules."""
from __future__ import annotations

import importlib.metadata


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def missing(package: str, e: BaseException) -> str:
    return f"{package} not importable ({type(e).__name__}: {e}); see benchmarks/requirements.txt"
