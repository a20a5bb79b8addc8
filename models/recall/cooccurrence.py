"""Item-to-item co-occurrence, seeded from long-term and recent behaviour.

Similarity: s(i, j) = sum over users u who used both of w_u, divided by
sqrt(|U_i| |U_j|), with w_u = 1 / log2(1 + |I_u|) (inverse user frequency: a user who
touched everything says little about any pair); ``iuf=False`` gives plain cosine.
Computed in blocks of items and pruned to each item's ``neighbours`` best, so the item x
item matrix stays sparse (memory ~ items x neighbours).

A user's score for j is long_weight * sum_i decay(i) s(i, j) over their whole history,
where decay(i) = 2^(-age_i / half_life_days) (1 when half_life_days is 0), plus
recent_weight * sum s(i, j) over their ``recent_items`` latest items: long-term and
real-time behaviour, weighed separately.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from features.recall_data import RecallData
from models.base import HeldOut, SparseScoreChannel, sparse_row_ranks

_BLOCK_CELLS = 1 << 24
_DAY = 86_400


def prune_rows(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Keep the ``keep`` largest entries of each row (ties: lower column first)."""
    m = m.tocsr()
    m.sum_duplicates()
    rows, order, rank = sparse_row_ranks(m)
    chosen = order[rank < keep]
    return sp.csr_matrix((m.data[chosen], (rows[chosen], m.indices[chosen])), shape=m.shape)


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


def seed_weights(data: RecallData, users: np.ndarray, half_life_days: float,
                 recent_items: int, recent_weight: float, long_weight: float) -> sp.csr_matrix:
    """Per user, the weight each of their fitted items gets as a seed (users x items)."""
    log = data.log
    starts = np.searchsorted(log["user"].to_numpy(), users, side="left")
    ends = np.searchsorted(log["user"].to_numpy(), users, side="right")
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    offsets = np.cumsum(lengths) - lengths
    pos = np.arange(lengths.sum()) - np.repeat(offsets - starts, lengths)
    ts = log["ts"].to_numpy()[pos]
    weight = np.full(len(pos), long_weight, np.float32)
    if half_life_days > 0:
        weight *= np.exp2(-(data.now - ts) / (half_life_days * _DAY)).astype(np.float32)
    if recent_items > 0 and recent_weight > 0:
        from_end = np.repeat(ends, lengths) - 1 - pos  # log is sorted by (user, ts)
        weight += np.where(from_end < recent_items, recent_weight, 0.0).astype(np.float32)
    return sp.csr_matrix((weight, (rows, log["item"].to_numpy()[pos])),
                         shape=(len(users), data.n_items))


class CooccurrenceChannel(SparseScoreChannel):
    name = "cooccurrence"

    def __init__(self, neighbours: int = 200, iuf: bool = True, half_life_days: float = 0.0,
                 recent_items: int = 5, recent_weight: float = 1.0,
                 long_weight: float = 1.0) -> None:
        self.params = {"neighbours": neighbours, "iuf": iuf, "half_life_days": half_life_days,
                       "recent_items": recent_items, "recent_weight": recent_weight,
                       "long_weight": long_weight}
        self.similarity: sp.csr_matrix | None = None

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> CooccurrenceChannel:
        self.similarity = item_similarity(data.history, self.params["neighbours"],
                                          self.params["iuf"])
        return self

    def score_sparse(self, data: RecallData, users: np.ndarray) -> sp.csr_matrix:
        assert self.similarity is not None, "fit or load first"
        p = self.params
        seeds = seed_weights(data, users, p["half_life_days"], p["recent_items"],
                             p["recent_weight"], p["long_weight"])
        return seeds @ self.similarity

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        sp.save_npz(folder / "similarity.npz", self.similarity)
        (folder / "params.json").write_text(json.dumps(self.params))

    @classmethod
    def load(cls, folder: Path) -> CooccurrenceChannel:
        channel = cls(**json.loads((folder / "params.json").read_text()))
        channel.similarity = sp.load_npz(folder / "similarity.npz").tocsr()
        return channel
