"""Run-time row indexing: an IntArray read at an int32 tensor of indices, and
`lt.assign` of rows (index=, add=) into captured arrays; `value_and_grad_into`
with fresh buffers; the OpenBLAS kernels lantern_stage loads with."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lantern_stage as lt
from lantern_stage.autodiff import value_and_grad_into
from lantern_stage.runtime import SKYLAKEX_FLAGS, openblas_kernels, openblas_loading


def test_intarray_gather_and_row_assign_match_numpy():
    store = np.zeros((6, 3), np.float32)
    acc = np.ones((6, 3), np.float32)

    @lt.compile
    def f(a: lt.IntArray, start: lt.Int, x: lt.Tensor[3, 3]):
        rows = a[lt.arange(3) + start]        # a gather of the IntArray
        lt.assign(store, x * 2.0, index=rows)
        lt.assign(acc, x, index=rows, add=True)
        return lt.embedding(store, rows) + 1.0, rows

    x = np.arange(9, dtype=np.float32).reshape(3, 3)
    a = np.array([5, 0, 5, 0], np.int32)       # rows 0, 5, 0: one repeated
    got, rows = f(a, -3, x)                   # IntArray indices -3, -2, -1 count from the end
    np.testing.assert_array_equal(rows, a[1:4])
    want_store = np.zeros((6, 3), np.float32)
    want_store[a[1:4]] = x * 2.0              # a repeated row keeps the last write, as numpy's
    want_acc = np.ones((6, 3), np.float32)
    np.add.at(want_acc, a[1:4], x)            # a repeated row adds up
    np.testing.assert_array_equal(store, want_store)
    np.testing.assert_array_equal(acc, want_acc)
    np.testing.assert_array_equal(got, want_store[a[1:4]] + 1.0)

    with pytest.raises(IndexError, match="IntArray read: index 4 out of range"):
        f(a, 2, x)
    with pytest.raises(IndexError, match="assign index: index -2 out of range"):   # rows of lt.assign, as of lt.embedding, are in [0, rows)
        f(np.array([0, 1, -2], np.int32), 0, x)


def test_row_assign_errors_name_the_problem():
    store = np.zeros((4, 3), np.float32)

    def staged(fn, *args):
        return lt.compile(fn)(*args)

    with pytest.raises(lt.StagingError, match=r"do not fit into the rows of float32\[4,3\]"):
        staged(lambda x, i: lt.assign(store, x, index=i) and x, np.zeros((2, 2), np.float32), np.zeros(2, np.int32))
    with pytest.raises(lt.StagingError, match="index must be a 1-D int32 tensor"):
        staged(lambda x, i: lt.assign(store, x, index=i) and x, np.zeros((2, 3), np.float32), np.zeros(2, np.float32))


def test_value_and_grad_into_fresh_buffers_and_a_shared_one():
    w0 = np.array([1.0, 2.0, 3.0], np.float32)
    acc = np.full(3, 10.0, np.float32)

    @lt.compile
    def f(w: lt.Tensor[3], x: lt.Tensor[3]):
        value, fresh = value_and_grad_into(lambda p: lt.sum(p[0] * p[0] * p[1]), [w, x], [acc, None])
        assert fresh[0] is None
        return value, fresh[1]

    x = np.array([0.5, -1.0, 2.0], np.float32)
    value, dx = f(w0, x)
    assert value == pytest.approx(float(np.sum(w0 * w0 * x)))
    np.testing.assert_allclose(acc, 10.0 + 2 * w0 * x)    # added into the given buffer
    np.testing.assert_allclose(dx, w0 * w0)               # a fresh one, returned

    def shared(w: lt.Tensor[3]):
        zs = [lt.zeros(3), lt.zeros(3)]    # hash-consing: one buffer
        value_and_grad_into(lambda p: lt.sum(p[0] * p[1]), [w, w * 2.0], zs)
        return w

    with pytest.raises(lt.StagingError, match="buffers 0 and 1 are the same buffer"):
        lt.compile(shared)(w0)


def test_openblas_kernels_follow_the_cpu_not_the_inherited_coretype(tmp_path):
    avx512 = tmp_path / "avx512"
    avx512.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 " + " ".join(SKYLAKEX_FLAGS) + "\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert openblas_kernels({"OPENBLAS_CORETYPE": "Haswell"}, str(avx512)) == "SkylakeX"
    assert openblas_kernels({}, str(avx2)) is None
    assert openblas_kernels({"LANTERN_OPENBLAS_CORETYPE": "Haswell"}, str(avx512)) == "Haswell"
    env = {"OPENBLAS_CORETYPE": "Haswell"}
    with openblas_loading(env) as kernels:
        assert env.get("OPENBLAS_CORETYPE") == kernels
    assert env == {"OPENBLAS_CORETYPE": "Haswell"}   # what others load is left as it was

    # In a fresh process with an inherited OPENBLAS_CORETYPE=Haswell, the
    # library a compiled module links loads with the kernels for this CPU.
    code = textwrap.dedent("""
        import ctypes, os
        import numpy as np
        import lantern_stage as lt
        from lantern_stage.runtime import openblas_kernels
        f = lt.compile(lambda a: a @ a)
        f(np.ones((64, 64), np.float32))
        import scipy_openblas32 as ob
        lib = ctypes.CDLL(os.path.join(ob.get_lib_dir(), "lib" + ob.get_library() + ".so"))
        lib.scipy_openblas_get_corename.restype = ctypes.c_char_p
        print(lib.scipy_openblas_get_corename().decode(), openblas_kernels(), os.environ["OPENBLAS_CORETYPE"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "LANTERN_OPENBLAS_CORETYPE"}
    env["OPENBLAS_CORETYPE"] = "Haswell"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    core, chosen, inherited = out.stdout.split()
    assert inherited == "Haswell"
    if chosen != "None":   # an AVX-512 CPU (else OpenBLAS's own choice, whatever it is)
        assert core == chosen
