import numpy as np
import pytest
import scipy.sparse as sp

from models.arrays import gathered_sums, sorted_contains, sorted_unique, sparse_values


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
