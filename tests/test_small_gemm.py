"""Matrix products of few rows (cpp_runtime/blas.h: `small_rows::gemm` on AVX2
CPUs without AVX-512, and on AVX-512 CPUs for shallow products past OpenBLAS's
small-matrix path only; `small_rows::gemm_bt` on every AVX2 CPU, for at most 8
rows where it has AVX-512; OpenBLAS elsewhere) against float64, over the shapes
its blocking treats apart: rows in blocks of 6 and a remainder of 1-5, columns
in panels of 16, one of 8, and a masked last one of 1-7; strided rows (slices
of wider arrays), a transposed left operand, and sums into a gradient.  The
same for products with a transposed right operand (x W^T, `small_rows::gemm_bt`
for few rows): rows in blocks of 2 or 4 and a remainder, columns of B^T in
groups of 4, 2 and 1, depths with every remainder mod 8 (masked), and the
shapes `takes_bt` sends to OpenBLAS instead.  And deep products of at most
4 rows (`small_rows::stream_rows`), and shallow, narrow products of many
rows (`small_rows::takes_shallow`)."""
# No `from __future__ import annotations`: the staged annotations use local sizes.

import numpy as np
import pytest

import lantern_stage as lt

# (rows, inner, columns) of op(A) B
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 3, 8), (6, 50, 16), (7, 26, 15), (12, 1, 24), (13, 50, 26),
          (20, 50, 200), (20, 26, 200), (20, 200, 50), (32, 9, 33), (33, 5, 17), (4, 80, 219)]
A_SHAPE, B_SHAPE = (40, 80), (80, 220)


@pytest.fixture(scope="module")
def products():
    def f(a: lt.Tensor[A_SHAPE], b: lt.Tensor[B_SHAPE]):
        plain = [a[:m, :k] @ b[:k, :n] for m, k, n in SHAPES]
        transposed = [lt.transpose(a[:k, :m]) @ b[:k, :n] for m, k, n in SHAPES if k <= A_SHAPE[0]]
        return plain, transposed

    rng = np.random.default_rng(7)
    a = rng.standard_normal(A_SHAPE).astype(np.float32)
    b = rng.standard_normal(B_SHAPE).astype(np.float32)
    return lt.compile(f)(a, b), a.astype(np.float64), b.astype(np.float64)


# (rows, inner, columns) of A B^T (`lt.linear`, one row a gemv): rows 2-4 at
# any depth; 5-24 rows at depth >= 64 (gemm_bt: blocks of 4 and a remainder
# of 1-3) and below (OpenBLAS); 25+ rows (OpenBLAS)
BT_SHAPES = [(1, 7, 5), (2, 8, 4), (2, 13, 7), (2, 1, 1), (3, 9, 6), (4, 300, 11), (4, 17, 3), (3, 300, 150),
             (5, 64, 9), (6, 71, 13), (7, 99, 2), (9, 80, 1), (8, 200, 26), (8, 26, 200), (11, 150, 33),
             (24, 96, 10), (23, 65, 31), (25, 100, 12), (7, 63, 5)]
BT_A, BT_B = (32, 310), (160, 320)


@pytest.fixture(scope="module")
def bt_products():
    def f(a: lt.Tensor[BT_A], b: lt.Tensor[BT_B]):
        return [lt.linear(a[:m, :k], b[:n, :k]) for m, k, n in BT_SHAPES]

    rng = np.random.default_rng(9)
    a = rng.standard_normal(BT_A).astype(np.float32)
    b = rng.standard_normal(BT_B).astype(np.float32)
    return lt.compile(f)(a, b), a.astype(np.float64), b.astype(np.float64)


# (rows, inner, columns) of deep products of at most 4 rows (small_rows::stream_rows:
# depth >= 128, every depth remainder mod 4, columns past one 512-wide block of
# sums, masked tails), and the shapes next to its bounds that take the panels
STREAM_SHAPES = [(1, 128, 300), (2, 129, 7), (3, 130, 513), (4, 131, 1030), (4, 750, 300), (1, 200, 8),
                 (2, 515, 520), (3, 128, 1), (4, 127, 64), (5, 200, 40)]
STREAM_A, STREAM_B = (8, 760), (760, 1040)


@pytest.fixture(scope="module")
def stream_products():
    def f(a: lt.Tensor[STREAM_A], at: lt.Tensor[STREAM_A[::-1]], b: lt.Tensor[STREAM_B]):
        plain = [a[:m, :k] @ b[:k, :n] for m, k, n in STREAM_SHAPES]
        transposed = [lt.transpose(at[:k, :m]) @ b[:k, :n] for m, k, n in STREAM_SHAPES]
        return plain, transposed

    rng = np.random.default_rng(11)
    a = rng.standard_normal(STREAM_A).astype(np.float32)
    at = rng.standard_normal(STREAM_A[::-1]).astype(np.float32)
    b = rng.standard_normal(STREAM_B).astype(np.float32)
    return lt.compile(f)(a, at, b), a.astype(np.float64), at.astype(np.float64), b.astype(np.float64)


# (rows, inner, columns) of products of many rows that are shallow and narrow
# (small_rows::takes_shallow: depth <= 96, columns a multiple of 8 from 16 to 96,
# B's rows at most 96 floats apart: here slices of one 96-wide B), every row
# remainder mod 6; and next to the bounds, shapes that take OpenBLAS instead
# (depth 97, a masked last panel, 8 columns)
# (the last three and (200, 96, 96) are past 10^6 multiply-adds: AVX-512 builds take the
# kernel for them only, OpenBLAS's small-matrix path for the others)
SHALLOW_SHAPES = [(33, 1, 16), (64, 2, 64), (100, 64, 64), (37, 13, 40), (200, 96, 96), (45, 50, 24),
                  (52, 97, 64), (200, 64, 26), (40, 30, 8), (200, 64, 96), (190, 60, 88), (199, 71, 80)]
SHALLOW_A, SHALLOW_B = (200, 100), (100, 96)


@pytest.fixture(scope="module")
def shallow_products():
    def f(a: lt.Tensor[SHALLOW_A], b: lt.Tensor[SHALLOW_B]):
        return [a[:m, :k] @ b[:k, :n] for m, k, n in SHALLOW_SHAPES]

    rng = np.random.default_rng(13)
    a = rng.standard_normal(SHALLOW_A).astype(np.float32)
    b = rng.standard_normal(SHALLOW_B).astype(np.float32)
    return lt.compile(f)(a, b), a.astype(np.float64), b.astype(np.float64)


U = 2.0 ** -24   # float32 unit round-off


def _close(got, want, k, abs_terms):
    """Within the float32 bound of a k-term dot product in any summation order
    (and with or without FMA): (k + 1) u sum_i |a_i b_i|, the +1 for rounding
    the result; `abs_terms` is |op(A)| |B| in float64."""
    err = np.abs(got.astype(np.float64) - want)
    bound = (k + 1) * U * abs_terms + np.finfo(np.float32).tiny
    assert (err <= bound).all(), f"worst error / bound {np.max(err / bound):.3g}"


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_few_row_products_match_float64(products, m, k, n):
    (plain, _), a, b = products
    _close(plain[SHAPES.index((m, k, n))], a[:m, :k] @ b[:k, :n], k, np.abs(a[:m, :k]) @ np.abs(b[:k, :n]))


@pytest.mark.parametrize("m, k, n", [s for s in SHAPES if s[1] <= A_SHAPE[0]])
def test_few_row_products_of_a_transposed_operand_match_float64(products, m, k, n):
    (_, transposed), a, b = products
    index = [s for s in SHAPES if s[1] <= A_SHAPE[0]].index((m, k, n))
    _close(transposed[index], a[:k, :m].T @ b[:k, :n], k, np.abs(a[:k, :m].T) @ np.abs(b[:k, :n]))


@pytest.mark.parametrize("m, k, n", BT_SHAPES)
def test_few_row_products_of_a_transposed_right_operand_match_float64(bt_products, m, k, n):
    got, a, b = bt_products
    want = a[:m, :k] @ b[:n, :k].T
    _close(got[BT_SHAPES.index((m, k, n))], want, k, np.abs(a[:m, :k]) @ np.abs(b[:n, :k].T))


@pytest.mark.parametrize("m, k, n", STREAM_SHAPES)
def test_deep_products_of_few_rows_match_float64(stream_products, m, k, n):
    (plain, transposed), a, at, b = stream_products
    i = STREAM_SHAPES.index((m, k, n))
    _close(plain[i], a[:m, :k] @ b[:k, :n], k, np.abs(a[:m, :k]) @ np.abs(b[:k, :n]))
    _close(transposed[i], at[:k, :m].T @ b[:k, :n], k, np.abs(at[:k, :m].T) @ np.abs(b[:k, :n]))


@pytest.mark.parametrize("m, k, n", SHALLOW_SHAPES)
def test_shallow_products_of_many_rows_match_float64(shallow_products, m, k, n):
    got, a, b = shallow_products
    _close(got[SHALLOW_SHAPES.index((m, k, n))], a[:m, :k] @ b[:k, :n], k, np.abs(a[:m, :k]) @ np.abs(b[:k, :n]))


def test_input_gradients_summed_over_uses_match_float64():
    """dx = g1 w1^T + g2 w2^T for x of 3 rows: products with a transposed
    right operand, the second added into the first (beta = 1)."""
    def loss(x, w1, w2):
        return lt.sum(lt.tanh(x @ w1)) + lt.sum(lt.sigmoid(x @ w2))

    f = lt.compile(lambda x, w1, w2: lt.grad(loss)(x, w1, w2))
    rng = np.random.default_rng(10)
    x, w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in [(3, 70), (70, 45), (70, 131)])
    got = f(x, w1, w2)
    x, w1, w2 = (v.astype(np.float64) for v in (x, w1, w2))
    y1, s2 = np.tanh(x @ w1), 1 / (1 + np.exp(-(x @ w2)))
    g1, g2 = 1 - y1 ** 2, s2 * (1 - s2)
    want = g1 @ w1.T + g2 @ w2.T
    # As below: cotangents within 1e-6 of float64, then the two products'
    # float32 bound over their 45 + 131 terms and the final sum's rounding.
    abs_terms = np.abs(g1) @ np.abs(w1.T) + np.abs(g2) @ np.abs(w2.T)
    bound = 1e-6 * (np.abs(w1.T).sum(0) + np.abs(w2.T).sum(0)) + (45 + 131 + 2) * U * abs_terms
    err = np.abs(got - want)
    assert (err <= bound).all(), f"worst error / bound {np.max(err / bound):.3g}"


# (W, x1, x2) shapes of the weight-gradient test: W of 13 rows (the panels), and
# W of 3 rows over batches of 200 and 150 (deep products of few rows: stream_rows)
WEIGHT_GRADIENT_SHAPES = [((13, 21), (9, 13), (30, 13)), ((3, 37), (200, 3), (150, 3))]


@pytest.mark.parametrize("shapes", WEIGHT_GRADIENT_SHAPES, ids=["13 rows", "3 rows, deep"])
def test_weight_gradients_summed_over_uses_match_float64(shapes):
    """dW = x1^T g1 + x2^T g2: products of few rows with a transposed left
    operand, the second added into the first (beta = 1)."""
    def loss(w, x1, x2):
        return lt.sum(lt.tanh(x1 @ w)) + lt.sum(lt.sigmoid(x2 @ w) * x2[:, :1])

    f = lt.compile(lambda w, x1, x2: lt.grad(loss)(w, x1, x2))
    rng = np.random.default_rng(8)
    w, x1, x2 = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    got = f(w, x1, x2)
    w, x1, x2 = (v.astype(np.float64) for v in (w, x1, x2))
    y1, s2 = np.tanh(x1 @ w), 1 / (1 + np.exp(-(x2 @ w)))
    g1, g2 = 1 - y1 ** 2, s2 * (1 - s2) * x2[:, :1]
    want = x1.T @ g1 + x2.T @ g2
    # Each cotangent is within 1e-6 of its float64 value (tanh_f, sigmoid_f
    # <= 3e-7 relative, cpp_runtime/math.h, with the forward product's and a
    # few elementwise roundings); then the two products' float32 bound over
    # their x1 + x2 rows of terms, and the final sum's rounding.
    abs_terms = np.abs(x1.T) @ np.abs(g1) + np.abs(x2.T) @ np.abs(g2)
    err = np.abs(got - want)
    bound = 1e-6 * (np.abs(x1.T).sum(1, keepdims=True) + np.abs(x2.T) @ np.abs(x2[:, :1])) \
        + (x1.shape[0] + x2.shape[0] + 2) * U * abs_terms
    assert (err <= bound).all(), f"worst error / bound {np.max(err / bound):.3g}"
