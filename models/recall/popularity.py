"""Popularity: how many users interacted with each item. The fallback for cold users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from models.base import RecallChannel


class PopularityChannel(RecallChannel):
    name = "popularity"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, history: sp.csr_matrix) -> PopularityChannel:
        self.counts = np.asarray((history > 0).sum(axis=0)).ravel().astype(np.float32)
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        assert self.counts is not None, "fit or load first"
        row = np.where(self.counts > 0, self.counts, -np.inf).astype(np.float32)
        return np.broadcast_to(row, (history.shape[0], len(row))).copy()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "counts.npy", self.counts)

    @classmethod
    def load(cls, folder: Path) -> PopularityChannel:
        channel = cls()
        channel.counts = np.load(folder / "counts.npy", allow_pickle=False)
        return channel
