"""Contracts shared by every recall channel.

A channel is fitted on a ``RecallData`` (the encoded fitting interactions with item and
user tables), optionally watching held-out pairs to choose epochs or other settings,
then scores batches of users against the whole catalogue. ``retrieve`` is shared: it
scores users in memory-bounded chunks, removes what each user already has, and keeps
only the top-k per user, so no users x items matrix is ever held whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.recall_data import RecallData

CHUNK_CELLS = 1 << 24  # scores held at once: 16M float32 = 64 MB


@dataclass
class TopK:
    """Per-user top-k: item codes (-1 = nothing retrieved) and scores, best first."""

    items: np.ndarray
    scores: np.ndarray


@dataclass
class HeldOut:
    """Held-out (user code, item code) pairs a channel may tune or early-stop on."""

    users: np.ndarray
    items: np.ndarray


def top_k(scores: np.ndarray, k: int) -> TopK:
    """Best ``k`` entries of each row, sorted by score then item index; -inf is dropped."""
    n_rows, n_cols = scores.shape
    k_eff = min(k, n_cols)
    if k_eff < n_cols:
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    else:
        part = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    idx = np.where(np.isneginf(vals), -1, idx)
    if k_eff < k:
        pad = ((0, 0), (0, k - k_eff))
        idx = np.pad(idx, pad, constant_values=-1)
        vals = np.pad(vals, pad, constant_values=-np.inf)
    return TopK(idx, vals.astype(np.float32))


def user_chunks(n_users: int, n_items: int, chunk: int = 0) -> Iterator[slice]:
    """Row slices sized so a chunk's dense scores stay within CHUNK_CELLS."""
    size = chunk or max(1, CHUNK_CELLS // max(n_items, 1))
    for lo in range(0, n_users, size):
        yield slice(lo, min(lo + size, n_users))


class RecallChannel(ABC):
    """Fit on history, score users against all items, save and load without pickle.

    ``tuned()`` returns the settings chosen while watching held-out pairs (e.g. the
    epoch count); passed back as constructor keywords, they let a refit on more data
    reuse them without peeking at its own future.
    """

    name: str

    @abstractmethod
    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> RecallChannel:
        """Learn from the fitting data; ``held_out`` may guide early stopping."""

    @abstractmethod
    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        """Dense scores (len(users) x n_items, float32); -inf where nothing is retrieved."""

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> RecallChannel: ...

    def tuned(self) -> dict[str, Any]:
        return {}

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        """Top-k item codes for each user code; the user's fitted items removed when asked."""
        return chunked_top_k(lambda rows: self.score(data, users[rows]), data, users, k,
                             exclude_seen, chunk)


def chunked_top_k(score_rows: Callable[[slice], np.ndarray], data: RecallData,
                  users: np.ndarray, k: int, exclude_seen: bool, chunk: int = 0) -> TopK:
    """Score ``users`` (one row each) in memory-bounded chunks and keep each row's top k."""
    parts = []
    for rows in user_chunks(len(users), data.n_items, chunk):
        scores = np.array(score_rows(rows), dtype=np.float32)
        if exclude_seen:
            r, c = data.history[users[rows]].nonzero()
            scores[r, c] = -np.inf
        parts.append(top_k(scores, k))
    if not parts:
        return TopK(np.empty((0, k), np.int64), np.empty((0, k), np.float32))
    return TopK(np.vstack([p.items for p in parts]), np.vstack([p.scores for p in parts]))


class SearchChannel(ABC):
    """A channel that can also answer a text query (the search use case)."""

    @abstractmethod
    def score_queries(self, data: RecallData, queries: list[str]) -> np.ndarray:
        """Dense scores (len(queries) x n_items, float32); -inf where nothing matches."""

    def retrieve_queries(self, data: RecallData, queries: list[str], users: np.ndarray,
                         k: int, exclude_seen: bool = True, chunk: int = 0) -> TopK:
        """Top-k per (query, user) case; the asking user's fitted items removed when asked."""
        return chunked_top_k(lambda rows: self.score_queries(data, queries[rows]), data, users,
                             k, exclude_seen, chunk)
