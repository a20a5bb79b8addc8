"""Array helpers measured faster than numpy's own on this pipeline's workloads."""

from __future__ import annotations

import numpy as np


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for integer keys, by one sort.

    numpy 2.3+ answers a plain ``np.unique`` with a hash table, which on millions of
    distinct int64 keys (the (user, item) pair keys every stage builds) took 5.4 s here
    against 0.42 s for sorting (5M keys, numpy 2.4.6; numpy PR #30496 measures the same
    kind of integer cases). Not for floats: NaNs are not collapsed.
    """
    ordered = np.sort(values, axis=None)
    keep = np.ones(ordered.size, bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
