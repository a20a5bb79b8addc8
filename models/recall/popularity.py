"""Popularity: all-time (users per item) or trending (exponentially decayed recent counts).

The fallback for cold users: it needs no history, so every user gets candidates.
"""

from __future__ import annotations

import numpy as np

from features.recall_data import RecallData
from models.base import HeldOut, RecallChannel, TopK, top_k_shared
from models.recall.weights import decay, half_life


class PopularityChannel(RecallChannel):
    """All-time counts, or each event weighed 2^(-age / half-life) with a half-life of
    ``half_life_days``, or else ``half_life_share`` of the log's span (0: all-time)."""

    name = "popularity"
    state = ("counts",)

    def __init__(self, half_life_days: float | None = None, half_life_share: float = 0.0
                 ) -> None:
        self.params = {"half_life_days": half_life_days, "half_life_share": half_life_share}
        self.counts: np.ndarray | None = None

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> PopularityChannel:
        log = data.log
        p = self.params
        weight = decay(data.now, log["ts"].to_numpy(),
                       half_life(data, p["half_life_days"], p["half_life_share"]))
        self.counts = np.bincount(log["item"].to_numpy(), weights=weight,
                                  minlength=data.n_items).astype(np.float32)
        return self

    def _row(self) -> np.ndarray:
        self._require_fitted()
        return np.where(self.counts > 0, self.counts, -np.inf).astype(np.float32)

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        row = self._row()
        return np.broadcast_to(row, (len(users), len(row))).copy()

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        """Everyone shares one ranking: rank it once, then drop each user's own items."""
        return top_k_shared(self._row()[None, :], np.zeros(len(users), np.int64), data, users,
                            k, exclude_seen)


class TrendingChannel(PopularityChannel):
    """Recent popularity: the same counts with a half-life of 10% of the log's span by
    default (six days of a two-month log)."""

    name = "trending"

    def __init__(self, half_life_days: float | None = None, half_life_share: float = 0.1
                 ) -> None:
        super().__init__(half_life_days, half_life_share)
