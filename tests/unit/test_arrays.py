import numpy as np
import pytest

from models.arrays import sorted_unique


@pytest.mark.parametrize("shape, high", [((0,), 5), ((1,), 5), ((1000,), 7), ((5000,), 10**12),
                                         ((40, 25), 30)])
def test_sorted_unique_is_numpys_unique(shape: tuple[int, ...], high: int) -> None:
    values = np.random.default_rng(0).integers(-high, high, shape)
    got = sorted_unique(values)
    np.testing.assert_array_equal(got, np.unique(values))
    assert got.dtype == values.dtype


def test_sorted_unique_by_hand() -> None:
    np.testing.assert_array_equal(sorted_unique(np.array([3, 1, 3, -2, 1, 3])), [-2, 1, 3])
