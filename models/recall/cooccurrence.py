"""Item-to-item co-occurrence, seeded from long-term and recent behaviour.

Similarity: s(i, j) = sum over users u who used both of w_u, divided by
sqrt(|U_i| |U_j|), with w_u = 1 / log2(1 + |I_u|) (inverse user frequency: a user who
touched everything says little about any pair); ``iuf=False`` gives plain cosine.
Computed in blocks of items and pruned to each item's ``neighbours`` best, so the item x
item matrix stays sparse (memory ~ items x neighbours).

A user's score for j is long_weight * sum_i decay(i) s(i, j) over their whole history,
where decay(i) = 2^(-age_i / half-life) (``half_life_days``, or ``half_life_share`` of
the log's span, a served user's own: ``models.recall.weights``; 1 when both are 0), plus
recent_weight * sum s(i, j) over their ``recent_items`` latest items: long-term and
real-time behaviour, weighed separately.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.recall_data import RecallData
from models.base import HeldOut, SparseScoreChannel, remembered
from models.recall.weights import half_life, prune_rows, seed_weights

_BLOCK_CELLS = 1 << 24


def item_similarity(history: sp.csr_matrix, neighbours: int, iuf: bool) -> sp.csr_matrix:
    binary = (history > 0).astype(np.float32).tocsr()
    user_weight = np.ones(binary.shape[0], np.float32)
    if iuf:
        user_weight = 1.0 / np.log2(1.0 + np.maximum(np.diff(binary.indptr), 1))
    by_item = (sp.diags(user_weight) @ binary).T.tocsr()
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
        parts.append(prune_rows(part, neighbours))
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, n_items), dtype=np.float32)


class CooccurrenceChannel(SparseScoreChannel):
    name = "cooccurrence"
    state = ("similarity",)

    def __init__(self, neighbours: int = 200, iuf: bool = True,
                 half_life_days: float | None = None, half_life_share: float = 0.0,
                 recent_items: int = 5, recent_weight: float = 1.0,
                 long_weight: float = 1.0) -> None:
        self.params = {"neighbours": neighbours, "iuf": iuf, "half_life_days": half_life_days,
                       "half_life_share": half_life_share,
                       "recent_items": recent_items, "recent_weight": recent_weight,
                       "long_weight": long_weight}
        self.similarity: sp.csr_matrix | None = None

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> CooccurrenceChannel:
        self.similarity = item_similarity(data.history, self.params["neighbours"],
                                          self.params["iuf"])
        return self

    @remembered
    def score_sparse(self, data: RecallData, users: np.ndarray) -> sp.csr_matrix:
        self._require_fitted()
        p = self.params
        seeds = seed_weights(data, users,
                             half_life(data, p["half_life_days"], p["half_life_share"], users),
                             p["recent_items"], p["recent_weight"], p["long_weight"])
        return seeds @ self.similarity
