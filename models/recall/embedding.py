"""Matrix-factorisation embeddings (the ``implicit`` package) retrieved through a faiss index.

Model: implicit-feedback ALS (Hu, Koren, Volinsky 2008) by default, or BPR. ALS fits
user and item vectors to preference 1 with confidence alpha * w(u, i) on the fitted
(user, item) pairs and preference 0 with confidence 1 elsewhere, where w is ``weighting``:
``binary`` (1 per pair), ``bm25`` (BM25 over the item x user matrix: items used by
many users and users with long histories count less) or ``weight`` (the log's summed
weights, e.g. ratings). BPR ignores the confidences. A user's score for item i is the
inner product u . v_i.

``score`` is exact (u @ V.T) for features. ``retrieve`` asks the faiss index (exact
``IndexFlatIP`` below ``exact_below`` items, IVF or HNSW above; see ``models/ann.py``) in
batches for k plus the batch's largest history, drops fitted items and re-scores the
rest exactly, so no users x items block is built. Users without fitted items get
nothing (-1 / -inf); items nobody fitted on are never retrieved.

With held-out pairs, ``fit`` picks the iteration count by early stopping on held-out
recall@``tune_k`` (fitted items excluded), and optionally the best combination of a
``grid`` of other settings; ``tuned()`` returns the choice as constructor keywords.
Deterministic for a seed with ALS (per-user solves are independent) and with BPR on one
thread (its SGD is lock-free across threads).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import bm25_weight
from threadpoolctl import threadpool_limits

from features.recall_data import RecallData
from models.ann import EXACT_BELOW, AnnIndex, thread_count
from models.arrays import row_dots
from models.base import HeldOut, RecallChannel, TopK, held_out_sample, user_chunks
from models.early_stopping import EarlyStopping
from models.recall.item_index import ItemVectorIndex

log = logging.getLogger(__name__)

MODELS = ("als", "bpr")
WEIGHTINGS = ("binary", "bm25", "weight")
GRID_KEYS = ("factors", "regularization", "alpha", "learning_rate", "weighting", "bm25_k1",
             "bm25_b")


class _Stop(Exception):
    """Raised from the per-iteration callback to end a fit early."""


def confidence(data: RecallData, weighting: str, bm25_k1: float, bm25_b: float) -> sp.csr_matrix:
    """users x items matrix of w(u, i) over the fitted pairs (see the module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; known: {list(WEIGHTINGS)}")
    if weighting == "weight":
        log_ = data.log
        m = sp.csr_matrix((log_["weight"].to_numpy(np.float32),
                           (log_["user"].to_numpy(), log_["item"].to_numpy())),
                          shape=(data.n_users, data.n_items))
        m.sum_duplicates()
        return m
    binary = (data.history > 0).astype(np.float32).tocsr()
    if weighting == "bm25":
        return bm25_weight(binary.T, K1=bm25_k1, B=bm25_b).T.tocsr().astype(np.float32)
    return binary


def heldout_recall(user_vecs: np.ndarray, item_vecs: np.ndarray, history: sp.csr_matrix,
                   users: np.ndarray, relevant: sp.csr_matrix, k: int) -> float:
    """Mean over ``users`` of |top-k & relevant| / |relevant|, exact scores in chunks.

    The top k leaves out each user's fitted items and items nobody fitted on; ``relevant``
    is len(users) x items. A user without fitted items gets no list but still counts (0).
    Only how many relevant items make each top k matters, so no list is built: each row's
    k-th best score is found by partition and the relevant items are tested against it
    (``_relevant_in_top_k``, ties going to lower item codes as in ``top_k``). Building the
    lists took 80 of the large profile's 110 s of ALS tuning at 20k users.
    """
    known = history.getnnz(axis=0) > 0
    n_items = item_vecs.shape[0]
    total = 0.0
    for rows in user_chunks(len(users), n_items):
        block = users[rows]
        scores = user_vecs[block] @ item_vecs.T
        scores[:, ~known] = -np.inf
        seen = history[block]
        r, c = seen.nonzero()
        scores[r, c] = -np.inf
        scores[seen.getnnz(axis=1) == 0] = -np.inf
        rel = sp.csr_matrix(relevant[rows])
        rel.sum_duplicates()
        hits = np.zeros(len(block), np.int64)
        _relevant_in_top_k(scores, rel.indptr, rel.indices.astype(np.int64), k, hits)
        total += float((hits / np.maximum(np.diff(rel.indptr), 1)).sum())
    return total / max(len(users), 1)


@numba.njit(cache=True, nogil=True)
def _relevant_in_top_k(scores: np.ndarray, rel_indptr: np.ndarray, rel_items: np.ndarray,
                       k: int, hits: np.ndarray) -> None:
    """Per row, how many of its relevant items ``top_k(scores, k)`` would list: those
    scoring above the row's k-th best, and of those tied with it the ones whose lower-coded
    ties leave room; -inf is never listed and NaN ranks as +inf."""
    n = scores.shape[1]
    heap = np.empty(max(k, 1), np.float64)
    for r in range(scores.shape[0] if k > 0 else 0):
        row = scores[r]
        kth = _kth_best(row, k, heap) if k < n else -np.inf
        above = 0
        for j in range(n):
            above += _ranked(row[j]) > kth
        for q in range(rel_indptr[r], rel_indptr[r + 1]):
            i = rel_items[q]
            v = _ranked(row[i])
            if v == -np.inf or v < kth:
                continue
            before = 0  # ties with lower codes, only counted for a relevant tie
            for j in range(i if v == kth else 0):
                before += _ranked(row[j]) == kth
            hits[r] += v > kth or before < k - above


@numba.njit(cache=True, nogil=True, inline="always")
def _ranked(v: float) -> float:
    return np.inf if np.isnan(v) else v


@numba.njit(cache=True, nogil=True)
def _kth_best(row: np.ndarray, k: int, heap: np.ndarray) -> float:
    """The k-th largest of ``row`` (k < its length) by a k-entry min-heap: most scores
    fail its first comparison, several times faster than partitioning a copy."""
    for j in range(k):
        heap[j] = _ranked(row[j])
    for start in range(k // 2 - 1, -1, -1):
        _sift_down(heap, start, k)
    for j in range(k, len(row)):
        v = _ranked(row[j])
        if v > heap[0]:
            heap[0] = v
            _sift_down(heap, 0, k)
    return heap[0]


@numba.njit(cache=True, nogil=True, inline="always")
def _sift_down(heap: np.ndarray, at: int, size: int) -> None:
    """Restore the min-heap below ``at``."""
    while True:
        smallest, left = at, 2 * at + 1
        if left < size and heap[left] < heap[smallest]:
            smallest = left
        if left + 1 < size and heap[left + 1] < heap[smallest]:
            smallest = left + 1
        if smallest == at:
            return
        heap[at], heap[smallest] = heap[smallest], heap[at]
        at = smallest


class EmbeddingChannel(ItemVectorIndex, RecallChannel):
    """Implicit-feedback MF user/item vectors, inner-product retrieval through faiss.

    model: ``als`` or ``bpr``. factors, regularization, iterations: the usual; alpha:
    ALS confidence scale; learning_rate: BPR; weighting, bm25_k1, bm25_b: the confidence
    w(u, i). Tuning (only when ``fit`` gets held-out pairs): ``max_iterations``,
    evaluated every ``eval_every`` iterations, stop after ``patience`` evaluations without
    gain, on recall@``tune_k`` of at most ``tune_users`` sampled held-out users, fewer
    where users x items passes ``tune_cells`` (each evaluation ranks the whole catalogue
    for them: 20k users of a 200k-item catalogue took 20 s an iteration); ``grid``
    maps some of GRID_KEYS to candidate lists tried in every combination. seed: implicit's
    random_state and the faiss k-means seed. threads: implicit and faiss threads (0:
    OMP_NUM_THREADS, else all cores). exact_below, ann, nlist, nprobe, hnsw_m, ef_search:
    the index (``models.ann.build_index``). batch: users per index query.

    The ALS defaults (64 factors, alpha 3, regularization 30, binary confidences) were
    chosen on ML-100K's valid part (recall@300 0.851; test after the refit 0.821).
    implicit does not scale regularization with history length, so re-tune it through
    ``grid`` on other data; BPR wants a far smaller one (about 0.01).
    """

    name = "embedding"
    state = ("user_vecs", "item_vecs", "active", "known", "choice", "trace")

    def __init__(self, model: str = "als", factors: int = 64, regularization: float = 30.0,
                 alpha: float = 3.0, iterations: int = 15, learning_rate: float = 0.01,
                 weighting: str = "binary", bm25_k1: float = 100.0, bm25_b: float = 0.8,
                 max_iterations: int = 40, eval_every: int = 1, patience: int = 5,
                 tune_k: int = 300, tune_users: int = 20_000, tune_cells: int = 10**9,
                 grid: dict[str, list] | None = None, seed: int = 42, threads: int = 0,
                 exact_below: int = EXACT_BELOW, ann: str = "ivf", nlist: int = 0,
                 nprobe: int = 0, hnsw_m: int = 32, ef_search: int = 128,
                 batch: int = 1024) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {list(MODELS)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; known: {list(WEIGHTINGS)}")
        unknown = set(grid or {}) - set(GRID_KEYS)
        if unknown:
            raise ValueError(f"grid keys {sorted(unknown)} not tunable; known: {list(GRID_KEYS)}")
        self.params: dict[str, Any] = {
            "model": model, "factors": factors, "regularization": regularization,
            "alpha": alpha, "iterations": iterations, "learning_rate": learning_rate,
            "weighting": weighting, "bm25_k1": bm25_k1, "bm25_b": bm25_b,
            "max_iterations": max_iterations, "eval_every": eval_every, "patience": patience,
            "tune_k": tune_k, "tune_users": tune_users, "tune_cells": tune_cells,
            "grid": grid, "seed": seed,
            "threads": threads, "exact_below": exact_below, "ann": ann, "nlist": nlist,
            "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search, "batch": batch}
        self.user_vecs: np.ndarray | None = None
        self.item_vecs: np.ndarray | None = None
        self.active: np.ndarray | None = None  # users with fitted items
        self.known: np.ndarray | None = None  # items with fitted users
        self.index: AnnIndex | None = None
        self.choice: dict[str, Any] = {}
        self.trace: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ fitting
    def _model(self, settings: dict[str, Any], iterations: int):
        threads = thread_count(self.params["threads"])
        if self.params["model"] == "als":
            return AlternatingLeastSquares(
                factors=settings["factors"], regularization=settings["regularization"],
                alpha=settings["alpha"], iterations=iterations, num_threads=threads,
                random_state=self.params["seed"])
        return BayesianPersonalizedRanking(
            factors=settings["factors"], learning_rate=settings["learning_rate"],
            regularization=settings["regularization"], iterations=iterations,
            num_threads=threads, random_state=self.params["seed"])

    def _fit_one(self, data: RecallData, settings: dict[str, Any], iterations: int,
                 watch: tuple[np.ndarray, sp.csr_matrix] | None) -> tuple[int, float, Any]:
        """One implicit fit; with ``watch`` (users, relevant) keep the best iteration."""
        matrix = confidence(data, settings["weighting"], settings["bm25_k1"],
                            settings["bm25_b"])
        with threadpool_limits(1, user_api="blas"):  # implicit warns about BLAS threads
            model = self._model(settings, iterations)
        p = self.params
        stopper = EarlyStopping(p["patience"])  # strict gain; stop after patience evaluations
        history = data.history

        def watch_iteration(iteration: int, elapsed: float, *_: object) -> None:
            done = iteration + 1
            if done % p["eval_every"] and done != iterations:
                return
            recall = heldout_recall(model.user_factors, model.item_factors, history,
                                    watch[0], watch[1], p["tune_k"])
            self.trace.append({**{key: settings[key] for key in GRID_KEYS},
                               "iteration": done, f"recall@{p['tune_k']}": round(recall, 6)})
            log.info("embedding iteration=%d recall@%d=%.4f seconds=%.2f", done,
                     p["tune_k"], recall, elapsed)
            improved = stopper.update(
                done, recall, lambda: (model.user_factors.copy(), model.item_factors.copy()))
            if not improved and stopper.should_stop:
                raise _Stop

        with threadpool_limits(1, user_api="blas"):
            try:
                model.fit(matrix, show_progress=False,
                          callback=watch_iteration if watch is not None else None)
            except _Stop:
                pass
        if stopper.best_step is None:  # nothing watched: the model as trained
            return iterations, float("nan"), (model.user_factors, model.item_factors)
        return stopper.best_step, stopper.best_value, stopper.best_state

    def _watch(self, data: RecallData, held_out: HeldOut) -> tuple[np.ndarray, sp.csr_matrix]:
        p = self.params
        users, pairs = held_out_sample(held_out, data.n_items, p["tune_users"], p["seed"],
                                       p["tune_cells"])
        relevant = sp.csr_matrix((np.ones(len(pairs), np.float32),
                                  (np.searchsorted(users, pairs // data.n_items),
                                   pairs % data.n_items)), shape=(len(users), data.n_items))
        return users, relevant

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> EmbeddingChannel:
        p = self.params
        base = {key: p[key] for key in GRID_KEYS}
        self.trace, self.choice = [], {}
        if held_out is None:
            _, _, (user_vecs, item_vecs) = self._fit_one(data, base, p["iterations"], None)
        else:
            watch = self._watch(data, held_out)
            grid = p["grid"] or {}
            best_recall, best = -1.0, None
            for values in itertools.product(*grid.values()):
                settings = {**base, **dict(zip(grid, values, strict=True))}
                iteration, recall, vecs = self._fit_one(data, settings, p["max_iterations"],
                                                        watch)
                if recall > best_recall:
                    best_recall = recall
                    best = ({**{key: settings[key] for key in grid}, "iterations": iteration},
                            vecs)
            self.choice, (user_vecs, item_vecs) = best
            log.info("embedding tuned %s recall@%d=%.4f", self.choice, p["tune_k"],
                     best_recall)
        self.user_vecs = np.ascontiguousarray(user_vecs, dtype=np.float32)
        self.item_vecs = np.ascontiguousarray(item_vecs, dtype=np.float32)
        self.active = np.asarray(data.history.getnnz(axis=1) > 0)
        self.known = np.asarray(data.history.getnnz(axis=0) > 0)
        self._index_items(np.flatnonzero(self.known))
        return self

    def tuned(self) -> dict[str, Any]:
        return dict(self.choice)

    # ------------------------------------------------------------------ scoring
    def _active_rows(self, users: np.ndarray) -> np.ndarray:
        self._require_fitted()
        inside = (users >= 0) & (users < len(self.active))
        ok = np.zeros(len(users), bool)
        ok[inside] = self.active[users[inside]]
        return ok

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        ok = self._active_rows(users)
        scores = np.full((len(users), len(self.known)), -np.inf, np.float32)
        scores[ok] = self.user_vecs[users[ok]] @ self.item_vecs.T
        scores[:, ~self.known] = -np.inf
        return scores

    def score_pairs(self, data: RecallData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``score`` at the given pairs only: one dot product per pair (pairs x factors
        work) instead of a users x catalogue block per chunk; NaN where ``score`` is
        -inf (an inactive user, an item without fitted users)."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        ok = self._active_rows(users) & self.known[items]
        values = np.full(len(users), np.nan)
        values[ok] = row_dots(self.user_vecs, users[ok], self.item_vecs, items[ok])
        return values

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        rows = np.flatnonzero(self._active_rows(users))
        exclude = data.history[users[rows]] if exclude_seen else None
        return self._search_items(self.user_vecs[users[rows]], rows, len(users), k, exclude,
                                  chunk)
