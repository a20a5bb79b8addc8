import numpy as np
import pytest
import scipy.sparse as sp

from models.arrays import (
    gathered_sums,
    grouped_order,
    row_dots,
    sorted_contains,
    sorted_unique,
    sparse_row_dots,
    sparse_values,
)


@pytest.mark.parametrize("shape, high", [((0,), 5), ((1,), 5), ((1000,), 7), ((5000,), 10**12),
                                         ((40, 25), 30)])
def test_sorted_unique_is_numpys_unique(shape: tuple[int, ...], high: int) -> None:
    values = np.random.default_rng(0).integers(-high, high, shape)
    got = sorted_unique(values)
    np.testing.assert_array_equal(got, np.unique(values))
    assert got.dtype == values.dtype


def test_sorted_unique_by_hand() -> None:
    np.testing.assert_array_equal(sorted_unique(np.array([3, 1, 3, -2, 1, 3])), [-2, 1, 3])


@pytest.mark.parametrize("n_rows,n_cols,density,dtype", [
    (40, 300, 0.5, np.float32), (7, 50, 0.05, np.float64), (5, 9, 0.0, np.float64),
    (30, 1000, 0.9, np.int64)])
def test_sparse_values_are_scipys_pair_indexing(n_rows: int, n_cols: int, density: float,
                                               dtype: type) -> None:
    rng = np.random.default_rng(n_rows)
    m = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng,
                  dtype=np.float64)
    m.data = (m.data * 100).astype(dtype)
    rows = rng.integers(0, n_rows, 3000)
    cols = rng.integers(0, n_cols, 3000)
    got = sparse_values(m, rows, cols)
    assert got.dtype == m.dtype
    np.testing.assert_array_equal(got, np.asarray(m[rows, cols]).ravel())


def test_sparse_values_sum_duplicates_and_read_unsorted_rows() -> None:
    # row 0 stores column 3 twice and lists its columns out of order; row 1 stores nothing
    m = sp.csr_matrix((np.array([2.0, 5.0, 1.0, 4.0]), np.array([3, 0, 3, 1]),
                       np.array([0, 4, 4])), shape=(2, 5))
    assert not m.has_canonical_format
    got = sparse_values(m, np.array([0, 0, 0, 0, 1, 1]), np.array([3, 0, 1, 4, 0, 4]))
    np.testing.assert_array_equal(got, [3.0, 5.0, 4.0, 0.0, 0.0, 0.0])
    assert not m.has_canonical_format  # the caller's matrix is left as it was
    assert sparse_values(m, np.zeros(0, int), np.zeros(0, int)).shape == (0,)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 136, 257, 1000, 4097, 20_011])
def test_gathered_sums_are_numpys_sums_bit_for_bit(n: int) -> None:
    # lengths on each side of numpy's pairwise thresholds (8 running sums, blocks of 128)
    rng = np.random.default_rng(n)
    values = rng.random((3, max(n, 1))) * rng.choice([1e-3, 1.0, 1e6], size=(3, 1))
    idx = rng.integers(0, max(n, 1), size=(4, n))
    expected = np.stack([v[idx].sum(axis=1) for v in values])
    np.testing.assert_array_equal(gathered_sums(values, idx), expected)


def test_gathered_sums_by_hand_and_out_of_range() -> None:
    values = np.array([[1.0, 2.0, 4.0], [0.0, 10.0, 100.0]])
    np.testing.assert_array_equal(gathered_sums(values, np.array([[0, 0, 2], [1, 2, 2]])),
                                  [[6.0, 10.0], [100.0, 210.0]])
    with pytest.raises(IndexError):
        gathered_sums(values, np.array([[3]]))


@pytest.mark.parametrize("n_sorted", [0, 1, 50])
def test_sorted_contains_is_numpys_isin(n_sorted: int) -> None:
    rng = np.random.default_rng(n_sorted)
    sorted_keys = np.unique(rng.integers(0, 100, n_sorted))
    keys = rng.integers(-5, 110, size=(7, 9))  # past both ends too
    np.testing.assert_array_equal(sorted_contains(sorted_keys, keys), np.isin(keys, sorted_keys))


@pytest.mark.parametrize("n_cols,a_density,b_density", [
    (40, 0.3, 0.05), (300, 0.9, 0.02), (7, 0.0, 0.5), (60, 0.5, 0.0), (25, 1.0, 1.0)])
def test_sparse_row_dots_are_scipys_gathered_products(
        n_cols: int, a_density: float, b_density: float) -> None:
    rng = np.random.default_rng(n_cols)
    a = sp.random(50, n_cols, density=a_density, format="csr", random_state=rng)  # float64
    b = sp.random(80, n_cols, density=b_density, format="csr", random_state=rng,
                  dtype=np.float32)  # the item attributes' dtype
    rows, cols = rng.integers(0, 50, 4000), rng.integers(0, 80, 4000)
    want = np.asarray(a[rows].multiply(b[cols]).sum(axis=1)).ravel()
    got = sparse_row_dots(a, rows, b, cols)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)  # equal up to addition order
    in_order = [sum(a[r, c] * np.float64(b[k, c]) for c in range(n_cols) if b[k, c])
                for r, k in zip(rows[:200], cols[:200], strict=True)]
    np.testing.assert_array_equal(got[:200], in_order)  # column order, bit for bit


def test_sparse_row_dots_by_hand_with_unsorted_and_duplicate_entries() -> None:
    # a's row 0 lists column 2 twice (3 + 1) and out of order; b's row 1 is empty
    a = sp.csr_matrix((np.array([3.0, 5.0, 1.0]), np.array([2, 0, 2]), np.array([0, 3, 3])),
                      shape=(2, 4))
    b = sp.csr_matrix((np.array([0.5, 0.25]), np.array([2, 0]), np.array([0, 2, 2])),
                      shape=(2, 4))
    np.testing.assert_array_equal(sparse_row_dots(a, [0, 0, 1], b, [0, 1, 0]),
                                  [4 * 0.5 + 5 * 0.25, 0.0, 0.0])


@pytest.mark.parametrize("width", [64, 7, 1, 0])
def test_row_dots_are_numpys_gathered_dot_products(width: int) -> None:
    rng = np.random.default_rng(width)
    left = rng.normal(size=(30, width)).astype(np.float32)
    right = rng.normal(size=(50, width)).astype(np.float32)
    lrows, rrows = rng.integers(0, 30, 2000), rng.integers(0, 50, 2000)
    want = np.einsum("ij,ij->i", left[lrows], right[rrows], dtype=np.float64)
    got = row_dots(left, lrows, right, rrows)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)  # up to addition order
    by_hand = [float(np.dot(left[i].astype(np.float64), right[j].astype(np.float64)))
               for i, j in zip(lrows[:5], rrows[:5], strict=True)]
    np.testing.assert_allclose(got[:5], by_hand, rtol=1e-12, atol=1e-12)


def test_grouped_order_is_numpys_three_key_lexsort() -> None:
    rng = np.random.default_rng(4)
    for _ in range(300):  # ties everywhere, NaN, signed zeros and infinities
        n = int(rng.integers(0, 60))
        groups = rng.integers(0, 6, n)
        scores = rng.choice([0.0, -0.0, 1.0, 2.0, np.nan, -np.inf, np.inf, 0.5], n)
        tiebreak = rng.integers(0, 4, n)
        np.testing.assert_array_equal(grouped_order(groups, scores, tiebreak),
                                      np.lexsort((tiebreak, -scores, groups)))
