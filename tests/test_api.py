"""The user-facing API: staged negative indices, pytree annotations,
annotation-free compile (one compile per new signature), and the public
names (`lt.__all__`, `dir(lt)`, the README's API reference).

Compiled functions are module-level objects, so each is staged and built
once per session (and found in the on-disk cache on later runs)."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import lantern_stage as lt


# ---------------------------------------------------------------- staged negative index
@lt.compile
def pick_row(x: lt.Tensor[4, 3], i: lt.Int, a: lt.IntArray):
    def loss(x):
        return lt.sum(x[i] * x[i])
    value, g = lt.value_and_grad(loss)(x)
    return x[i], a[i], value, g


def test_staged_negative_index_wraps_as_in_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    a = np.array([7, 8, 9, 10], np.int32)
    for i in range(-4, 4):
        row, ai, value, g = pick_row(x, i, a)
        np.testing.assert_array_equal(row, x[i])
        assert int(ai) == a[i]
        np.testing.assert_allclose(value, np.sum(x[i].astype(np.float64) ** 2), rtol=1e-6)
        expected = np.zeros((4, 3))
        expected[i] = 2 * x[i]
        np.testing.assert_allclose(g, expected, rtol=1e-6)


def test_staged_index_out_of_range_still_raises_index_error():
    x = np.ones((4, 3), np.float32)
    a = np.arange(4, dtype=np.int32)
    for i in (4, -5):
        with pytest.raises(IndexError, match=rf"row index: index {i} out of range \[-4, 4\)"):
            pick_row(x, i, a)
    with pytest.raises(IndexError, match=r"IntArray read: index -3 out of range \[-2, 2\)"):
        pick_row(x, -3, np.arange(2, dtype=np.int32))
    assert pick_row(x, -1, a)[1] == 3  # still usable afterwards


# ---------------------------------------------------------------- public names
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_all_lists_the_public_api_and_dir_shows_nothing_else():
    assert len(set(lt.__all__)) == len(lt.__all__)
    missing = [n for n in lt.__all__ if not hasattr(lt, n)]
    assert not missing, f"in lt.__all__ but not defined: {missing}"
    assert set(dir(lt)) == set(lt.__all__) | {n for n in vars(lt) if n.startswith("__") and n.endswith("__")}
    for internal in ("api", "staging", "runtime", "program", "ir", "getitem", "shape_full"):
        assert internal not in dir(lt)
    assert {"nn", "optim", "Tensor", "compile", "train_step"} <= set(lt.__all__)
    # Every public function of lantern_stage.api is listed (a new op must be added to __all__).
    from lantern_stage import api

    assert set(api.__all__) <= set(lt.__all__)


@pytest.mark.parametrize("name", lt.__all__)
def test_every_public_name_is_in_the_readme_and_has_a_docstring(name):
    assert re.search(rf"`lt\.{re.escape(name)}\b", README), f"README.md does not mention lt.{name}"
    doc = inspect.getdoc(getattr(lt, name)) or ""
    # An undocumented dataclass gets "Name(field: type, ...)" as its docstring.
    assert doc.strip() and not re.match(r"^\w+\(\w+: ", doc), f"lt.{name} has no docstring"


def test_readme_documents_the_names_the_issue_listed():
    reference = README[README.index("## API reference"):]
    for fragment in ("`lt.Int`", "`lt.Float`", "a.length", "has_aux", "`lt.cast", "f.signatures"):
        assert fragment in reference
