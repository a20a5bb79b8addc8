"""Popularity: all-time (users per item) or trending (exponentially decayed recent counts).

The fallback for cold users: it needs no history, so every user gets candidates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from features.recall_data import RecallData
from models.base import HeldOut, RecallChannel

_DAY = 86_400


class PopularityChannel(RecallChannel):
    """``half_life_days`` = 0: all-time counts; > 0: each event weighs 2^(-age / half-life)."""

    name = "popularity"

    def __init__(self, half_life_days: float = 0.0) -> None:
        self.half_life_days = half_life_days
        self.counts: np.ndarray | None = None

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> PopularityChannel:
        log = data.log
        if self.half_life_days > 0:
            age_days = (data.now - log["ts"].to_numpy()) / _DAY
            weight = np.exp2(-age_days / self.half_life_days)
        else:
            weight = np.ones(len(log))
        self.counts = np.bincount(log["item"].to_numpy(), weights=weight,
                                  minlength=data.n_items).astype(np.float32)
        return self

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        assert self.counts is not None, "fit or load first"
        row = np.where(self.counts > 0, self.counts, -np.inf).astype(np.float32)
        return np.broadcast_to(row, (len(users), len(row))).copy()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "counts.npy", self.counts)
        (folder / "params.json").write_text(json.dumps({"half_life_days": self.half_life_days}))

    @classmethod
    def load(cls, folder: Path) -> PopularityChannel:
        channel = cls(**json.loads((folder / "params.json").read_text()))
        channel.counts = np.load(folder / "counts.npy", allow_pickle=False)
        return channel


class TrendingChannel(PopularityChannel):
    """Recent popularity: the same counts with a one-week half-life by default."""

    name = "trending"

    def __init__(self, half_life_days: float = 7.0) -> None:
        super().__init__(half_life_days)
