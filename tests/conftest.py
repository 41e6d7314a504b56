"""Shared pytest set-up.

Compiled modules are cached on disk (LANTERN_CACHE_DIR, default
~/.cache/lantern_stage), so re-runs skip g++; tests that must see the
compiler run (or fail to) use the `fresh_cache` fixture instead.
"""
from __future__ import annotations

import os
import shutil

import pytest

import lantern_stage as lt


def pytest_report_header(config):
    from lantern_stage.build import cache_dir

    try:
        import torch

        torch_note = f"torch {torch.__version__}"
    except ImportError:
        torch_note = "torch not installed: PyTorch comparisons are skipped"
    cxx = os.environ.get("CXX", "g++")
    return [
        f"lantern_stage {lt.__version__}; compile cache {cache_dir()}; "
        f"CXX={cxx} ({shutil.which(cxx) or 'not found'}); {torch_note}"
    ]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty compile cache for this test only, so the compiler must run."""
    path = tmp_path / "lantern_cache"
    path.mkdir()
    monkeypatch.setenv("LANTERN_CACHE_DIR", str(path))
    return path
