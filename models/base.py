"""Contracts shared by every recall channel.

A channel is fitted on a ``RecallData`` (the encoded fitting interactions with item and
user tables), optionally watching held-out pairs to choose epochs or other settings,
then scores batches of users against the whole catalogue. ``retrieve`` is shared: it
scores users in memory-bounded chunks, removes what each user already has, and keeps
only the top-k per user, so no users x items matrix is ever held whole. The recall
stage checks every channel's lists against the ``TopK`` contract (``check_top_k``), on
the one path they all take, whatever way a channel retrieves.

Saving is written once, here: a channel keeps its constructor keywords in ``params`` and
names its fitted attributes in ``state``; ``save`` writes ``params.json``, one file per
array (``.npy``, or scipy's ``.npz`` for a sparse matrix) and the JSON-able rest in
``state.json``; ``load`` rebuilds the channel from ``params`` and sets the state back,
never unpickling anything. A piece that is neither (a faiss index, torch weights) is
written and read by the channel's ``_save_extra`` / ``_load_extra``.
"""

from __future__ import annotations

import contextlib
import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numba
import numpy as np
import scipy.sparse as sp

from features.recall_data import RecallData
from models.arrays import (
    descending_key,
    descending_keys,
    sorted_contains,
    sorted_positions,
    sorted_unique,
    sparse_values,
)

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


def held_out_sample(held_out: HeldOut, n_items: int, limit: int | None, seed: int,
                    cells: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The users of the usable held-out pairs (no padding code), sorted, and the pairs
    as sorted distinct keys ``user * n_items + item``; at most ``limit`` users (None: no
    cap) and, with ``cells``, at most ``cells // n_items``, a seeded sample where there
    are more. Channels tune on a full ranking of the catalogue for each, so the sample
    bounds what tuning costs (users x items)."""
    ok = (held_out.users >= 0) & (held_out.items >= 0)
    pairs = sorted_unique(held_out.users[ok].astype(np.int64) * n_items + held_out.items[ok])
    users = sorted_unique(pairs // n_items)
    if cells is not None:
        cap = max(cells // max(n_items, 1), 1)
        limit = cap if limit is None else min(limit, cap)
    if limit is not None and len(users) > limit:
        users = np.sort(np.random.default_rng(seed).choice(users, limit, replace=False))
        pairs = pairs[np.isin(pairs // n_items, users)]
    return users, pairs


def top_k(scores: np.ndarray, k: int) -> TopK:
    """Best ``k`` entries of each row, by score then lower item index; -inf is dropped.

    Scores are ranked as the float32 values they are returned as. Ties go to the lower
    item indices, at the cut-off too, so results do not depend on how users were
    chunked. A NaN ranks first, as +inf would (``top_k_sparse`` does the same), and stays
    NaN: the partition would otherwise drop it unseen, and ``check_top_k`` is to find it.
    Each entry is ranked by one distinct ``descending_key``, so the partition meets no
    ties: numpy's argpartition of rows that are mostly -inf (a region's or EASE's unscored
    items) took 1.2 ms a row of 10k items, against 0.1 ms, and dense rows take 10-50% less
    time than partitioning the scores and mending their ties (benchmarks/RESULTS.md,
    "top k").
    """
    scores = np.ascontiguousarray(scores, np.float32)
    n_cols = scores.shape[1]
    k_eff = min(k, n_cols)
    keys = descending_keys(scores)  # a fresh array: partitioned and sorted in place
    if k_eff < n_cols:
        keys.partition(k_eff - 1, axis=1)
        keys = keys[:, :k_eff]
    keys.sort(axis=1)
    idx = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    vals = np.take_along_axis(scores, idx, axis=1)
    idx[np.isneginf(vals)] = -1
    if k_eff < k:
        pad = ((0, 0), (0, k - k_eff))
        idx = np.pad(idx, pad, constant_values=-1)
        vals = np.pad(vals, pad, constant_values=-np.inf)
    return TopK(idx, vals)


def user_chunks(n_users: int, n_items: int, chunk: int = 0) -> Iterator[slice]:
    """Row slices sized so a chunk's dense scores stay within CHUNK_CELLS."""
    size = chunk or max(1, CHUNK_CELLS // max(n_items, 1))
    for lo in range(0, n_users, size):
        yield slice(lo, min(lo + size, n_users))


def stored_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the stored entries of ``matrix[rows]`` lie: each one's position in ``rows``
    and in ``matrix.indices`` / ``matrix.data``, in ``matrix[rows]``'s order. Read from the
    CSR arrays: scipy's row indexing cost ~0.1 ms a call, and every channel of a served
    request made one or two for its user's history."""
    starts = matrix.indptr[rows]
    lengths = matrix.indptr[rows + 1] - starts
    owner = np.repeat(np.arange(len(rows)), lengths)
    return owner, np.arange(len(owner)) + np.repeat(starts - np.cumsum(lengths) + lengths,
                                                    lengths)


def seen_mask(data: RecallData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True where ``items[r, c]`` is in the fitted history of ``users[r]`` (a user code
    below 0, unknown, has none). A lookup table over the (row, item) keys while it fits
    in CHUNK_CELLS bytes (5-10x faster than the sort numpy may otherwise choose); past
    that, a binary search of each key among the few seen keys, sorted (5.4x faster than
    ``np.isin``'s sort of all keys: 25k users x 649 items, 20 seen each, measured)."""
    users = np.asarray(users)
    owner, at = stored_rows(data.history, np.maximum(users, 0))
    seen = owner * data.n_items + data.history.indices[at]
    keys = np.arange(len(users))[:, None] * data.n_items + items
    valid = (items >= 0) & (users >= 0)[:, None]
    if not seen.size:
        return np.zeros(keys.shape, bool)
    if len(users) * data.n_items <= CHUNK_CELLS:
        # filled by hand: ``np.isin``'s own table cost 0.2 ms for a served request's row
        table = np.zeros(len(users) * data.n_items, bool)
        table[seen] = True
        inside = valid & (items < data.n_items)  # a code past the catalogue is seen nowhere
        return table[np.where(inside, keys, 0)] & inside
    return sorted_contains(np.sort(seen), keys) & valid


_NO_HISTORY = sp.csr_matrix((1, 1))  # passed where seen items stay in, never read: built once


def top_k_shared(group_scores: np.ndarray, groups: np.ndarray, data: RecallData,
                 users: np.ndarray, k: int, exclude_seen: bool) -> TopK:
    """Top-k when every user of a group gets the same scores (popularity, region).

    Each group's list is ranked once, k + (most items any user has) deep, and each user
    keeps the first k of their group's list that they do not have: O(users x that depth)
    instead of O(users x catalogue). ``groups[r] = -1`` gives nothing. Only the groups
    some user belongs to are ranked (``top_k`` ranks each row alone): a served request's
    one region, not all of them (ML-100K's 19: 4.6 ms -> 0.5 ms).
    """
    depth = k + (int(np.diff(data.history.indptr).max()) if exclude_seen and data.n_users else 0)
    present = np.unique(groups[groups >= 0])
    if not present.size:  # nobody is in a group (no user has a region): nothing to rank
        return TopK(np.full((len(users), k), -1, np.int64),
                    np.full((len(users), k), -np.inf, np.float32))
    ranked = top_k(group_scores[present], min(depth, data.n_items))
    groups = np.where(groups >= 0, np.searchsorted(present, groups), -1)
    items = np.full((len(users), k), -1, np.int64)
    scores = np.full((len(users), k), -np.inf, np.float32)
    history = data.history if exclude_seen else _NO_HISTORY
    _first_unseen(ranked.items, ranked.scores.astype(np.float32), groups,
                  np.asarray(users, np.int64), history.indptr, history.indices, exclude_seen,
                  items, scores)
    return TopK(items, scores)


@numba.njit(cache=True, nogil=True)
def _first_unseen(ranked: np.ndarray, ranked_scores: np.ndarray, groups: np.ndarray,
                  users: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                  exclude_seen: bool, items: np.ndarray, scores: np.ndarray) -> None:
    """Per user, the first ``items.shape[1]`` of their group's ranked list that are not
    among their fitted items (a stamp per item): O(k + history) a user, where masking
    the whole (users x depth) block cost O(depth)."""
    fitted = np.full(max(ranked.max() + 1 if ranked.size else 0, 1), -1, np.int64)
    for r in range(len(users)):
        if groups[r] < 0:
            continue
        if exclude_seen and users[r] >= 0:
            for q in range(indptr[users[r]], indptr[users[r] + 1]):
                if indices[q] < len(fitted):
                    fitted[indices[q]] = r
        n = 0
        for c in range(ranked.shape[1]):
            if n == items.shape[1]:
                break
            item = ranked[groups[r], c]
            if item >= 0 and fitted[item] != r:
                items[r, n], scores[r, n] = item, ranked_scores[groups[r], c]
                n += 1


def sparse_row_ranks(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored entries ordered by (row, value descending, column): returns each entry's
    row, the ordering, and the rank within its row of each ordered entry. Values are
    compared as float32, the precision scores are kept in (``TopK``, dense ``score``):
    one uint64 key sorts 4x faster than a lexsort (measured, 8M entries)."""
    m.sort_indices()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    key = rows.astype(np.uint64) << np.uint64(32) | _descending_bits(m.data)
    order = np.argsort(key, kind="stable")  # stable: sorted columns break ties
    return rows, order, np.arange(len(order)) - m.indptr[rows[order]]


def _descending_bits(values: np.ndarray) -> np.ndarray:
    """Float32 values as unsigned integers whose ascending order is the values' descending
    order: ``descending_key``'s upper half (-0.0 counted as 0.0, NaN as +inf)."""
    values = np.ascontiguousarray(values, np.float32)
    return _key_high_halves(values, values.view(np.uint32))


@numba.njit(cache=True, nogil=True)
def _key_high_halves(values: np.ndarray, bits: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), np.uint64)
    for i in range(len(values)):
        out[i] = descending_key(values[i], bits[i], 0) >> np.uint64(32)
    return out


def top_k_sparse(scores: sp.csr_matrix, k: int, exclude: sp.csr_matrix | None = None,
                 positive: bool = False) -> TopK:
    """Top-k of each row of a sparse score matrix (entries absent = not retrieved),
    ordered like ``top_k``: by score, then item index, a NaN first whatever its sign bit
    and dtype. ``exclude``: a matrix of the same shape whose stored entries are not
    listed (the users' fitted items) unless their score is NaN or infinite (listed as
    NaN, for ``check_top_k`` to find); ``positive``: entries at or below 0 are not listed.
    Linear in the stored entries: each row's keys are partitioned and its k best sorted
    in place (``_sparse_top_k``), with the exclusions applied on the way, where one sort
    of every entry of a chunk, after subtracting the fitted items and dropping zeros as
    whole matrices, was 34 of the large profile's 420 s recall at 20k users."""
    scores = scores.tocsr()
    if _has_repeats(scores.indptr, scores.indices, scores.shape[1]):
        scores.sum_duplicates()
    if exclude is None:
        exclude = sp.csr_matrix(scores.shape, dtype=np.float32)
    exclude = exclude.tocsr()
    items = np.full((scores.shape[0], k), -1, np.int64)
    values = np.full((scores.shape[0], k), -np.inf, np.float32)
    data = scores.data.astype(np.float32)
    _sparse_top_k(scores.indptr, scores.indices, data, data.view(np.uint32), exclude.indptr,
                  exclude.indices, scores.shape[1], positive, items, values)
    return TopK(items, values)


@numba.njit(cache=True, nogil=True)
def _has_repeats(indptr: np.ndarray, indices: np.ndarray, n_cols: int) -> bool:
    """Whether some row stores a column twice (a stamp per column, no sort)."""
    stamp = np.full(n_cols, -1, np.int64)
    for r in range(len(indptr) - 1):
        for q in range(indptr[r], indptr[r + 1]):
            if stamp[indices[q]] == r:
                return True
            stamp[indices[q]] = r
    return False


@numba.njit(cache=True, nogil=True)
def _sparse_top_k(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
                  raw: np.ndarray, ex_indptr: np.ndarray, ex_indices: np.ndarray,
                  n_cols: int, positive: bool, items: np.ndarray, values: np.ndarray
                  ) -> None:
    """Per row, one ``descending_key`` per listable entry (``raw``: the scores' float32
    bits), partitioned and sorted. An excluded entry whose score is NaN or infinite is
    listed as NaN, as subtracting it from itself would leave it, so that ``check_top_k``
    stops the channel whose numerics broke."""
    k = items.shape[1]
    seen = np.full(n_cols, -1, np.int64)  # the row that excludes each column
    at = np.empty(n_cols, np.int64)  # where each listed column's entry is stored
    longest = 0
    for r in range(len(indptr) - 1):
        longest = max(longest, indptr[r + 1] - indptr[r])
    keys = np.empty(longest, np.uint64)
    for r in range(len(indptr) - 1 if k else 0):
        for q in range(ex_indptr[r], ex_indptr[r + 1]):
            seen[ex_indices[q]] = r
        n = 0
        for q in range(indptr[r], indptr[r + 1]):
            broken = seen[indices[q]] == r and not np.isfinite(data[q])
            if (seen[indices[q]] == r and not broken) or (positive and data[q] <= 0):
                continue
            keys[n] = descending_key(np.nan if broken else data[q], raw[q], indices[q])
            at[indices[q]] = -1 if broken else q
            n += 1
        if not n:
            continue
        best = keys[:n]
        if n > k:
            best = np.partition(best, k - 1)[:k]
        best = np.sort(best)
        for j in range(len(best)):
            col = np.int64(best[j] & np.uint64(0xFFFFFFFF))
            items[r, j] = col
            values[r, j] = np.nan if at[col] < 0 else data[at[col]]


def _stack(parts: list[TopK], k: int) -> TopK:
    if not parts:
        return TopK(np.empty((0, k), np.int64), np.empty((0, k), np.float32))
    return TopK(np.vstack([p.items for p in parts]), np.vstack([p.scores for p in parts]))


class InvalidTopKError(ValueError):
    """A channel produced a top-k list that breaks the ``TopK`` contract."""


def _bad_cells(top: TopK, data: RecallData | None, users: np.ndarray | None,
               exclude_seen: bool, ordered: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per kind of fault, a rows x k mask of the cells that show it and the item codes
    the mask is laid over: the lists as given, or each row's codes sorted for repeats (a
    sort costs half an argsort, and the example's place is found once it is needed)."""
    items, scores = top.items, top.scores
    real = items >= 0
    outside = (items < -1) | (items >= data.n_items if data is not None else False)
    ranked = np.sort(items, axis=1)
    repeat = np.pad((ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0), ((0, 0), (1, 0)))
    bad = {"an item code outside the catalogue": (outside, items),
           "-1 (nothing retrieved) with a score other than -inf": (
               (items == -1) & ~np.isneginf(scores), items),
           "a NaN or infinite score": (real & ~np.isfinite(scores), items),
           "the same item twice": (repeat, ranked)}
    if ordered:
        after_pad = real & ~np.logical_and.accumulate(real, axis=1)
        rises = real[:, 1:] & real[:, :-1] & (scores[:, 1:] > scores[:, :-1])
        bad["a real item after -1 padding"] = (after_pad, items)
        bad["scores not sorted best first"] = (np.pad(rises, ((0, 0), (1, 0))), items)
    if exclude_seen and data is not None and users is not None:
        bad["an item from the user's fitted history"] = (seen_mask(data, users, items), items)
    return bad


def check_top_k(top: TopK, data: RecallData | None, users: np.ndarray | None,
                exclude_seen: bool, name: str, *, ordered: bool = True) -> None:
    """Raise ``InvalidTopKError`` naming channel ``name`` unless every row of ``top``
    holds distinct catalogue items with finite scores (best first and before any -1
    padding when ``ordered``), -1 only with -inf, and none of its user's fitted items
    when ``exclude_seen``. Vectorised, as it runs on every list the recall stage
    retrieves: a bad channel then fails that stage at once, not a later one after hours.
    """
    n_rows = top.items.shape[0] if users is None else len(users)
    if top.items.shape != top.scores.shape or top.items.shape[0] != n_rows:
        raise InvalidTopKError(f"{name} channel returned items {top.items.shape} and scores "
                               f"{top.scores.shape} for {n_rows} rows")
    checked = exclude_seen and data is not None and users is not None
    history = data.history if checked else _NO_HISTORY
    if _lists_valid(top.items, top.scores, data.n_items if data is not None else -1, ordered,
                    np.asarray(users if checked else np.zeros(0), np.int64),
                    history.indptr, history.indices, checked):
        return  # the usual case, in one pass: the masks below only name what is wrong
    faults = []
    for what, (cells, codes) in _bad_cells(top, data, users, exclude_seen, ordered).items():
        rows = np.flatnonzero(cells.any(axis=1))
        if len(rows):
            r, c = rows[0], int(np.argmax(cells[rows[0]]))
            item = codes[r, c]
            if codes is not top.items:  # a sorted row: where the item is in the list
                c = int(np.argmax(top.items[r] == item))
            who = f"row {r}" if users is None else f"user code {users[r]}"
            faults.append(f"{len(rows)} of {n_rows} rows hold {what} (e.g. {who}: "
                          f"item {item}, score {top.scores[r, c]})")
    if faults:
        raise InvalidTopKError(f"{name} channel returned invalid top-k lists: "
                               + "; ".join(faults))


@numba.njit(cache=True, nogil=True)
def _lists_valid(items: np.ndarray, scores: np.ndarray, n_items: int, ordered: bool,
                 users: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                 exclude_seen: bool) -> bool:
    """Whether no cell shows any fault ``_bad_cells`` looks for (``n_items`` -1: no
    catalogue bound), with a stamp per item for repeats and for the user's fitted items:
    the masks and row sorts cost 9 of the large profile's 287 s recall at 20k users."""
    width = max(n_items, items.max() + 1 if items.size else 0, 1)
    stamp = np.full(width, -1, np.int64)
    fitted = np.full(width, -1, np.int64)
    for r in range(items.shape[0]):
        if exclude_seen and users[r] >= 0:
            for q in range(indptr[users[r]], indptr[users[r] + 1]):
                if indices[q] < width:
                    fitted[indices[q]] = r
        padded = False
        for c in range(items.shape[1]):
            item, score = items[r, c], scores[r, c]
            if item < -1 or (n_items >= 0 and item >= n_items):
                return False
            if item == -1:
                if score != -np.inf:
                    return False
                padded = True
                continue
            if not np.isfinite(score) or stamp[item] == r or fitted[item] == r:
                return False
            if ordered and (padded or (c and items[r, c - 1] >= 0
                                       and score > scores[r, c - 1])):
                return False
            stamp[item] = r
    return True


Scores = TypeVar("Scores", np.ndarray, sp.csr_matrix)
_REMEMBERED: ContextVar[dict[tuple, Any] | None] = ContextVar("remembered_scores",
                                                               default=None)


@contextlib.contextmanager
def scores_remembered() -> Iterator[None]:
    """Within it, a ``@remembered`` method gives each (channel, data, users) its result
    once. A served request retrieves with a channel and then scores the same users again
    for the ``*_model_score`` features (5-7% of a served click's CPU); the batch stages
    do the two in different processes, and never hold the scores."""
    token = _REMEMBERED.set({})
    try:
        yield
    finally:
        _REMEMBERED.reset(token)


def remembered(method: Callable[[Any, RecallData, np.ndarray], Scores]
               ) -> Callable[[Any, RecallData, np.ndarray], Scores]:
    """``method(self, data, users)``, one row per user, computed once per set of users
    inside ``scores_remembered`` (in any order: rows are put in the order asked), a copy
    each time (callers change what they get); computed every time outside it."""

    @functools.wraps(method)
    def kept(self: Any, data: RecallData, users: np.ndarray) -> Scores:
        memo = _REMEMBERED.get()
        if memo is None:
            return method(self, data, users)
        users = np.asarray(users)
        order = np.argsort(users, kind="stable")
        ordered = users[order]
        key = (id(self), method.__name__, id(data), ordered.dtype.str, ordered.tobytes())
        if key not in memo:  # data and self held, so their ids stay theirs
            memo[key] = (self, data, method(self, data, ordered))
        rows = np.empty_like(order)
        rows[order] = np.arange(len(order))
        return memo[key][2][rows]

    return kept


class NotFittedError(RuntimeError):
    """A channel was asked to score, retrieve or save before ``fit`` or ``load``."""


class RecallChannel(ABC):
    """Fit on history, score users against all items, save and load without pickle.

    ``params`` holds the constructor keywords (``cls(**params)`` rebuilds the channel
    unfitted); ``state`` names the attributes ``fit`` sets and ``save`` writes: numpy
    arrays, scipy sparse matrices or JSON-able values, None until fitted (or the channel
    overrides ``is_fitted``). ``tuned()`` returns the settings
    chosen while watching held-out pairs (e.g. the epoch count); passed back as
    constructor keywords, they let a refit on more data reuse them without peeking at its
    own future.
    """

    name: ClassVar[str]
    state: ClassVar[tuple[str, ...]] = ()
    params: dict[str, Any]

    @abstractmethod
    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> RecallChannel:
        """Learn from the fitting data; ``held_out`` may guide early stopping."""

    @abstractmethod
    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        """Dense scores (len(users) x n_items, float32); -inf where nothing is retrieved."""

    def tuned(self) -> dict[str, Any]:
        return {}

    def is_fitted(self) -> bool:
        """Whether ``fit`` or ``load`` has run: by default, no ``state`` attribute is None."""
        return all(getattr(self, attr, None) is not None for attr in self.state)

    def _require_fitted(self) -> None:
        """The one check before scoring, retrieving or saving."""
        if not self.is_fitted():
            raise NotFittedError(f"{self.name} channel is not fitted: call fit() or load() first")

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        """Top-k item codes for each user code; the user's fitted items removed when asked."""
        return chunked_top_k(lambda rows: self.score(data, users[rows]), data, users, k,
                             exclude_seen, chunk)

    def score_pairs(self, data: RecallData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The score of each (user, item) pair, float64, NaN where the channel gives none
        (a ranker feature even where the channel did not retrieve the pair); each distinct
        user is scored once."""
        unique, rows = np.unique(users, return_inverse=True)
        values = self.score(data, unique)[rows, items].astype(np.float64)
        values[~np.isfinite(values)] = np.nan
        return values

    # ------------------------------------------------------------------ storage
    def save(self, folder: Path) -> None:
        """``params.json``, one file per ``state`` array, ``state.json`` for the rest."""
        self._require_fitted()
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "params.json", self.params)
        plain = {}
        for attr in self.state:
            value = getattr(self, attr)
            if sp.issparse(value):
                sp.save_npz(folder / f"{attr}.npz", value)
            elif isinstance(value, np.ndarray):
                np.save(folder / f"{attr}.npy", value, allow_pickle=False)
            else:
                plain[attr] = value
        if plain:
            _write_json(folder / "state.json", plain)
        self._save_extra(folder)

    @classmethod
    def load(cls, folder: Path) -> Self:
        """The channel ``save`` wrote to ``folder``, ready to score."""
        channel = cls(**_read_json(folder / "params.json"))
        plain = _read_json(folder / "state.json") if (folder / "state.json").is_file() else {}
        for attr in cls.state:
            if (folder / f"{attr}.npy").is_file():
                value = np.load(folder / f"{attr}.npy", allow_pickle=False)
            elif (folder / f"{attr}.npz").is_file():
                value = sp.load_npz(folder / f"{attr}.npz")
            elif attr in plain:
                value = plain[attr]
            else:
                raise FileNotFoundError(f"{folder}: no saved {cls.name} state {attr!r}")
            setattr(channel, attr, value)
        channel._load_extra(folder)
        return channel

    def _save_extra(self, folder: Path) -> None:
        """Write what ``state`` cannot hold (an index, model weights); none by default."""
        return

    def _load_extra(self, folder: Path) -> None:
        """Read back what ``_save_extra`` wrote, after ``params`` and ``state`` are set."""
        return


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", "utf-8")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def chunked_top_k(score_rows: Callable[[slice], np.ndarray], data: RecallData,
                  users: np.ndarray, k: int, exclude_seen: bool, chunk: int = 0,
                  columns: np.ndarray | None = None) -> TopK:
    """Score ``users`` (one row each) in memory-bounded chunks and keep each row's top k.
    ``columns``: the distinct, ascending item codes the scores' columns stand for, where
    a channel scores part of the catalogue and the rest would be -inf (the top k are the
    same: ties still go to the lower code)."""
    if columns is not None and np.any(np.diff(columns) <= 0):
        raise ValueError("chunked_top_k: columns must be distinct item codes, ascending")
    parts = []
    for rows in user_chunks(len(users), data.n_items if columns is None else len(columns),
                            chunk):
        scores = np.array(score_rows(rows), dtype=np.float32)
        if exclude_seen:
            owner, at = stored_rows(data.history, users[rows])
            held = data.history.data[at] != 0  # as ``nonzero`` reads the rows
            owner, seen = owner[held], data.history.indices[at[held]]
            if columns is not None:  # seen items among the columns, by position
                seen, scored = sorted_positions(columns, seen)
                owner, seen = owner[scored], seen[scored]
            scores[owner, seen] = -np.inf
        top = top_k(scores, k)
        if columns is not None:
            real = top.items >= 0
            top.items[real] = columns[top.items[real]]
        parts.append(top)
    return _stack(parts, k)


class SparseScoreChannel(RecallChannel):
    """A channel whose scores are mostly absent (item-to-item, attribute affinities):
    it retrieves from sparse score rows without ever filling a dense users x items block."""

    sparse_chunk = 4096

    @abstractmethod
    def score_sparse(self, data: RecallData, users: np.ndarray) -> sp.csr_matrix:
        """Scores as a sparse len(users) x n_items matrix; only stored entries > 0 count."""

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        scores = self.score_sparse(data, users).toarray().astype(np.float32)
        scores[scores <= 0] = -np.inf
        return scores

    def score_pairs(self, data: RecallData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """As ``RecallChannel.score_pairs``, gathered from the sparse scores (only stored
        entries > 0 are evidence) without a dense users x items block."""
        unique, rows = np.unique(users, return_inverse=True)
        scores = self.score_sparse(data, unique).tocsr()
        values = sparse_values(scores, rows, items).astype(np.float64)
        values[values <= 0] = np.nan
        return values

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        parts = []
        for lo in range(0, len(users), chunk or self.sparse_chunk):
            block = users[lo: lo + (chunk or self.sparse_chunk)]
            parts.append(top_k_sparse(self.score_sparse(data, block), k,
                                      data.history[block] > 0 if exclude_seen else None,
                                      positive=True))
        return _stack(parts, k)


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
