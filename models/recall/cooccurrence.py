"""Item-to-item co-occurrence: items that share users with the user's history.

Similarity is cosine over binary user sets, s(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|),
computed in blocks of items and pruned to each item's ``neighbours`` best, so the
item x item matrix stays sparse (memory ~ items x neighbours). A user's score for j is
the sum of s(i, j) over the items i in their history.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import RecallChannel

_BLOCK_CELLS = 1 << 24


def prune_rows(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Keep the ``keep`` largest entries of each row (ties: lower column first)."""
    m = m.tocsr()
    m.sum_duplicates()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data, rows))
    rank = np.arange(len(order)) - m.indptr[rows[order]]
    chosen = order[rank < keep]
    return sp.csr_matrix((m.data[chosen], (rows[chosen], m.indices[chosen])), shape=m.shape)


class CooccurrenceChannel(RecallChannel):
    name = "cooccurrence"

    def __init__(self, neighbours: int = 200) -> None:
        self.neighbours = neighbours
        self.similarity: sp.csr_matrix | None = None

    def fit(self, history: sp.csr_matrix) -> CooccurrenceChannel:
        binary = (history > 0).astype(np.float32).tocsr()
        by_item = binary.T.tocsr()
        norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        n_items = binary.shape[1]
        block = max(1, _BLOCK_CELLS // max(n_items, 1))
        parts = []
        for lo in range(0, n_items, block):
            hi = min(lo + block, n_items)
            co = (by_item[lo:hi] @ binary).tocoo()
            keep = co.row + lo != co.col
            data = co.data[keep] * inv[co.row[keep] + lo] * inv[co.col[keep]]
            part = sp.csr_matrix((data, (co.row[keep], co.col[keep])), shape=(hi - lo, n_items))
            parts.append(prune_rows(part, self.neighbours))
        self.similarity = sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, 0))
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        assert self.similarity is not None, "fit or load first"
        scores = ((history > 0).astype(np.float32) @ self.similarity).toarray()
        scores[scores <= 0] = -np.inf
        return scores

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        sp.save_npz(folder / "similarity.npz", self.similarity)
        (folder / "params.json").write_text(json.dumps({"neighbours": self.neighbours}))

    @classmethod
    def load(cls, folder: Path) -> CooccurrenceChannel:
        params = json.loads((folder / "params.json").read_text())
        channel = cls(**params)
        channel.similarity = sp.load_npz(folder / "similarity.npz").tocsr()
        return channel
