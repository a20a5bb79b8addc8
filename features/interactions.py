"""Raw ids to contiguous indices, and interaction logs to sparse user x item matrices.

The index is built from the fitting data (plus the catalogue) only; ids it has not seen
encode to -1 so a caller can treat them as cold instead of silently colliding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


class IdIndex:
    """A fixed, ordered vocabulary of raw ids (ints or strings)."""

    def __init__(self, ids: pd.Series | np.ndarray) -> None:
        self.ids = pd.Index(pd.unique(pd.Series(ids)))
        if self.ids.hasnans:
            raise ValueError("ids must not be null")

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, values: pd.Series | np.ndarray) -> np.ndarray:
        """Positions of ``values`` in the index; -1 where unknown."""
        return self.ids.get_indexer(pd.Index(values)).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.ids.to_numpy()[codes]


def interaction_matrix(user_codes: np.ndarray, item_codes: np.ndarray, n_users: int,
                       n_items: int, values: np.ndarray | None = None) -> sp.csr_matrix:
    """Sparse users x items matrix; duplicates summed; ``values`` default to 1."""
    if values is None:
        values = np.ones(len(user_codes), np.float32)
    keep = (user_codes >= 0) & (item_codes >= 0)
    m = sp.csr_matrix((values[keep].astype(np.float32), (user_codes[keep], item_codes[keep])),
                      shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def with_row(matrix: sp.csr_matrix, row: int, indices: np.ndarray, values: np.ndarray
             ) -> sp.csr_matrix:
    """``matrix`` with row ``row`` holding ``indices`` and ``values`` instead: the other
    rows' CSR arrays copied around it, not a sparse sum or stack (a served request's
    click changes one user's row of a matrix over every user)."""
    lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
    indptr = matrix.indptr.astype(np.int64)
    indptr[row + 1:] += len(indices) - (hi - lo)
    return sp.csr_matrix(
        (np.concatenate([matrix.data[:lo], np.asarray(values, matrix.dtype), matrix.data[hi:]]),
         np.concatenate([matrix.indices[:lo], np.asarray(indices, matrix.indices.dtype),
                         matrix.indices[hi:]]), indptr), shape=matrix.shape)
