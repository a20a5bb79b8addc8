"""Sparse helpers several channels share: per-row pruning and per-user seed weights.

``prune_rows`` keeps each row's best entries (co-occurrence neighbours, preference's
attributes and items, the inverted index's profile terms). ``seed_weights`` says how much
each of a user's fitted items counts as a seed: every item ``long_weight``, decayed by
2^(-age / half-life) when there is one, plus ``recent_weight`` for the latest
``recent_items`` (co-occurrence, preference, text embedding, the inverted index's decayed
profiles).

Half-lives are set per channel in days or, by default, as a share of the fitting log's
own span (``half_life``): a fixed 30 days means nothing on a log of two decades (every
old user's weights underflow to zero) or of two hours (no decay at all). With a share,
the oldest event weighs 2^(-1 / share) at least, whatever the log's time scale. A
served user whose clicks were added (``RecallData.with_events``) is aged on their own
clock and span (``now_of``, ``span_of``), as a refit with their clicks alone would be.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.recall_data import SECONDS_PER_DAY, RecallData
from models.base import sparse_row_ranks
from models.bm25 import kth_bound, segment_offsets

_CROWDED = 512  # mean entries per row from which the histogram bound pays off (measured)


def prune_rows(m: sp.spmatrix, keep: int) -> sp.csr_matrix:
    """Keep the ``keep`` largest entries of each row (ties: lower column first).

    Two exact algorithms give the same matrix; the faster one for the shape is used. Rows
    holding many more positive entries than ``keep`` (user profiles over thousands of
    terms) first drop, by a histogram bound, the entries that cannot reach their row's
    top ``keep``, and sort only the rest (2-5x faster there); otherwise every entry is
    ranked, which is faster for short rows and handles zero or negative values.
    """
    m = m.tocsr()
    m.sum_duplicates()
    n_rows = m.shape[0]
    crowded = keep > 0 and m.nnz >= n_rows * max(_CROWDED, 8 * keep)
    if crowded and np.all(np.isfinite(m.data) & (m.data > 0)):
        return _prune_near_bound(m, keep)
    return _prune_ranked(m, keep)


def _prune_ranked(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """``prune_rows`` by ranking every stored entry of every row."""
    rows, order, rank = sparse_row_ranks(m)
    chosen = order[rank < keep]
    return sp.csr_matrix((m.data[chosen], (rows[chosen], m.indices[chosen])), shape=m.shape)


def _prune_near_bound(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """``prune_rows`` for positive finite values: each row's histogram bin holding its
    k-th largest value bounds it from below (bins are monotone in the value), so the
    entries of that bin and above contain the top ``keep``, ties included; only they
    are sorted, in the same (row, value descending, column) order."""
    counts = np.diff(m.indptr)
    _, near = kth_bound(counts, m.data, keep, mask=True)
    rows = np.repeat(np.arange(m.shape[0]), counts)[near]
    cols, vals = m.indices[near], m.data[near]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    chosen = segment_offsets(np.bincount(rows, minlength=m.shape[0])) < keep
    return sp.csr_matrix((vals[chosen], (rows[chosen], cols[chosen])), shape=m.shape)


def half_life(data: RecallData, days: float | None, share: float,
              users: np.ndarray | None = None) -> float | np.ndarray:
    """The half-life in seconds: ``days`` when set, else ``share`` of the log's span
    (0: no decay); with ``users``, each one's, ``share`` of their own span
    (``RecallData.span_of``: served users with events each on their own clock)."""
    if users is None:
        return days * SECONDS_PER_DAY if days is not None else share * data.span
    if days is not None:
        return np.full(len(users), days * SECONDS_PER_DAY, np.float64)
    return share * data.span_of(users)


def decay(now: int | np.ndarray, ts: np.ndarray, seconds: float | np.ndarray) -> np.ndarray:
    """2^(-age / half-life) of events at ``ts``, aged from ``now`` (float64; one where the
    half-life is 0: the age over an infinite one). ``now`` and ``seconds``: scalars, or
    arrays aligned with ``ts``."""
    return np.exp2(-(now - ts) / np.where(np.asarray(seconds) > 0, seconds, np.inf))


def seed_weights(data: RecallData, users: np.ndarray, half_life_seconds: float | np.ndarray,
                 recent_items: int, recent_weight: float, long_weight: float,
                 from_latest: bool = False) -> sp.csr_matrix:
    """Per user, the weight each of their fitted events gives its item (users x items;
    repeated events of one item add up), aged from the user's clock (``now_of``) with
    their half-life (one for all, or one per user). ``from_latest`` measures ages from
    each user's own latest event instead: a per-user scale, exact where the weights are
    normalised per user, and never all zero for a user whose events are all old."""
    log = data.log
    starts = np.searchsorted(log["user"].to_numpy(), users, side="left")
    ends = np.searchsorted(log["user"].to_numpy(), users, side="right")
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    offsets = np.cumsum(lengths) - lengths
    pos = np.arange(lengths.sum()) - np.repeat(offsets - starts, lengths)
    ts = log["ts"].to_numpy()[pos]
    now = np.repeat(data.now_of(users), lengths)
    if from_latest and len(pos):
        ts = ts + (now - np.repeat(log["ts"].to_numpy()[np.maximum(ends - 1, 0)], lengths))
    seconds = np.repeat(np.broadcast_to(half_life_seconds, (len(users),)), lengths)
    weight = (long_weight * decay(now, ts, seconds)).astype(np.float32)
    if recent_items > 0 and recent_weight > 0:
        from_end = np.repeat(ends, lengths) - 1 - pos  # log is sorted by (user, ts)
        weight += np.where(from_end < recent_items, recent_weight, 0.0).astype(np.float32)
    return sp.csr_matrix((weight, (rows, log["item"].to_numpy()[pos])),
                         shape=(len(users), data.n_items))
