"""EASE, a linear item-to-item autoencoder with a closed form (Steck 2019, "Embarrassingly
Shallow Autoencoders for Sparse Data").

With X the binary users x items history and G = X^T X, EASE's weights minimise
||X - X B||^2 + lambda ||B||^2 subject to diag(B) = 0, which gives B = I - P / diag(P)
column by column (B_ij = -P_ij / P_jj, B_jj = 0) with P = (G + lambda I)^-1. A user's
score for j is (x_u B)_j: one sparse-dense product per chunk of users. On public logs
this one model often matches far costlier ones, which is why it is a channel here.

The dense item x item solve is what limits it: G, P and B are n^2 and the solve O(n^3).
So EASE covers only the ``max_items`` items most users fitted on (items nobody fitted on
are never retrieved); the others score -inf, and a user without a fitted item among them
gets nothing. The solve is a Cholesky factor and inverse in place, in float32 (float64
where float32 cannot factor it); B is kept in float32.

With held-out pairs, ``fit`` walks a small ``grid`` of lambdas upward and keeps the best
by held-out NDCG@``eval_k``, stopping at the first one that does no better (the curve
is usually unimodal in lambda); where the best is the grid's first or last, it goes on
past that end, doubling or halving, up to ``extend`` more. ``tuned()`` returns the
choice for the refit.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from features.recall_data import RecallData
from models.base import HeldOut, RecallChannel, TopK, chunked_top_k, held_out_sample
from models.early_stopping import EarlyStopping
from models.metrics import hits_from_keys, ndcg_at_k

log = logging.getLogger(__name__)

EXTEND_FACTOR = 2.0  # each lambda tried past an end of the grid: twice (or half) the last
_BLOCK_CELLS = 1 << 24  # cells of a temporary block while building G or mirroring P


def kept_items(history: sp.csr_matrix, max_items: int) -> np.ndarray:
    """Codes of the items with fitted users, at most ``max_items`` of the most used
    (ties to the lower code), ascending."""
    users_per_item = history.getnnz(axis=0)
    used = np.flatnonzero(users_per_item > 0)
    if len(used) > max_items:
        order = np.argsort(-users_per_item[used], kind="stable")[:max_items]
        log.info("ease: %d items have fitted users; the solve keeps the %d most used "
                 "(max_items), the rest score -inf", len(used), max_items)
        used = np.sort(used[order])
    return used.astype(np.int64)


def gram_matrix(history: sp.csr_matrix, kept: np.ndarray) -> np.ndarray:
    """G = X^T X over the ``kept`` columns of the binary history, dense float32 (counts of
    users, exact below 2^24), built in row blocks so no sparse n x n product is held."""
    x = (history[:, kept] > 0).astype(np.float32).tocsr()
    by_item = x.T.tocsr()
    n = len(kept)
    gram = np.empty((n, n), np.float32)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    for lo in range(0, n, block):
        gram[lo: lo + block] = (by_item[lo: lo + block] @ x).toarray()
    return gram


def _inverted(gram: np.ndarray, lambda_: float, dtype: type) -> tuple[np.ndarray, int]:
    """(G + lambda I)^-1 in the lower triangle of a C-ordered ``dtype`` copy of G, in
    place (LAPACK potrf then potri), and LAPACK's info (0: done)."""
    a = np.array(gram, dtype, order="C")
    a[np.diag_indices_from(a)] += lambda_
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    factor, info = potrf(a.T, lower=False, clean=False, overwrite_a=True)
    if info == 0:
        _, info = potri(factor, lower=False, overwrite_c=True)
    return a, info


def ease_weights(gram: np.ndarray, lambda_: float) -> np.ndarray:
    """B = I - P / diag(P) with P = (G + lambda I)^-1 and diag(B) = 0, float32.

    P is solved in single precision (``_inverted``), mirrored to the upper triangle block
    by block, then scaled column by column into B in place. Single precision takes half
    the time and memory of double. Cholesky is backward stable, so its B is the exact B
    of counts perturbed by float32 rounding, far below what a day more of log moves
    them; measured, B stays within 1e-4 of double's (relative to its largest weight) and
    users' top 10s hold the same items (benchmarks/RESULTS.md, "larger catalogue"). A
    G + lambda I single precision cannot factor (nearly singular: lambda lost against
    G's counts) is solved again in double."""
    a, info = _inverted(gram, lambda_, np.float32)
    if info != 0:
        log.info("ease: G + %g I cannot be factored in single precision; solving in "
                 "double", lambda_)
        del a  # not held beside the double copy
        a, info = _inverted(gram, lambda_, np.float64)
    if info != 0:
        raise np.linalg.LinAlgError(f"ease: G + {lambda_} I is not positive definite")
    n = len(a)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        a[lo:hi, hi:] = a[hi:, lo:hi].T
        diagonal = a[lo:hi, lo:hi]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
    scale = -np.diag(a).copy()
    a /= scale
    np.fill_diagonal(a, 0.0)
    return a.astype(np.float32, copy=False)


class EaseChannel(RecallChannel):
    """EASE item-to-item weights solved in closed form (see the module docstring).

    lambda_: the L2 weight (Steck used 200-1000 on logs of 100k+ users; smaller logs
    want less). max_items: items in the solve; fitting holds about 8 x max_items^2 bytes
    (12 when tuning) and the fitted B 4 x max_items^2, and the solve takes about
    max_items^3 flops: the default 5000 is 0.2 GB and about 1.8 s a solve on one core
    here (10k items: 0.8 GB and 11 s, which a tuning grid, up to ``extend`` more lambdas
    and three phases multiply).
    Tuning (only when ``fit`` gets held-out pairs): lambdas from ``grid`` in ascending
    order, on NDCG@``eval_k`` of at most ``tune_users`` held-out users sampled with
    ``seed``, until the first that does not improve; an empty grid keeps ``lambda_``.
    Where the best is an end of a grid of two or more, up to ``extend`` more past it, each
    ``EXTEND_FACTOR`` further, until one does not improve: logs unlike the ones the grid
    was set on want lambdas outside it (a sparse reviews log still gained at 1000, a
    60k-item one had its best at 50). On ML-100K (each user's last 10% by time
    held out, the 10% before it as valid) the grid stopped at 100 (valid NDCG@10 0.140;
    0.131 on the held-out part after the refit, level with the ALS embedding channel's
    0.132).
    """

    name = "ease"
    state = ("weights", "kept", "choice", "trace")

    def __init__(self, lambda_: float = 500.0, max_items: int = 5_000,
                 grid: list[float] | tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0),
                 eval_k: int = 10, tune_users: int = 20_000, seed: int = 42,
                 extend: int = 4) -> None:
        if lambda_ <= 0 or any(value <= 0 for value in grid):
            raise ValueError(f"ease: lambda_ and the grid must be positive, got {lambda_}, "
                             f"{list(grid)}")
        if max_items < 1:
            raise ValueError(f"ease: max_items must be at least 1, got {max_items}")
        if extend < 0:
            raise ValueError(f"ease: extend must be at least 0, got {extend}")
        self.params: dict[str, Any] = {
            "lambda_": lambda_, "max_items": max_items, "grid": sorted(grid),
            "eval_k": eval_k, "tune_users": tune_users, "seed": seed, "extend": extend}
        self.weights: np.ndarray | None = None  # kept x kept, float32
        self.kept: np.ndarray | None = None  # item codes in the solve, ascending
        self.choice: dict[str, Any] = {}
        self.trace: list[dict[str, Any]] = []

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> EaseChannel:
        p = self.params
        self.kept = kept_items(data.history, p["max_items"])
        gram = gram_matrix(data.history, self.kept)
        self.choice, self.trace = {}, []
        watch = self._watch(data, held_out) if held_out is not None and p["grid"] else None
        if watch is None:
            self.weights = ease_weights(gram, p["lambda_"])
            return self
        stopper = EarlyStopping(patience=1)

        def improves(lambda_: float) -> bool:
            self.weights = None  # let the previous B go before solving the next
            self.weights = ease_weights(gram, lambda_)
            ndcg = self._held_out_ndcg(data, *watch)
            self.trace.append({"lambda_": lambda_, f"ndcg@{p['eval_k']}": round(ndcg, 6)})
            log.info("ease lambda=%g ndcg@%d=%.4f", lambda_, p["eval_k"], ndcg)
            return stopper.update(lambda_, ndcg, lambda: self.weights)

        grid = p["grid"]
        for lambda_ in grid:
            improves(lambda_)
            if stopper.should_stop:
                break
        ends = {grid[-1]: EXTEND_FACTOR, grid[0]: 1 / EXTEND_FACTOR} if len(grid) > 1 else {}
        if stopper.best_step in ends:  # past the end the best sits at
            lambda_, factor = stopper.best_step, ends[stopper.best_step]
            for _ in range(p["extend"]):
                lambda_ *= factor
                if not improves(lambda_):
                    break
        self.weights, self.choice = stopper.best_state, {"lambda_": stopper.best_step}
        log.info("ease tuned %s ndcg@%d=%.4f", self.choice, p["eval_k"], stopper.best_value)
        return self

    def _watch(self, data: RecallData, held_out: HeldOut
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Sampled held-out users, their relevant (row * n_items + item) keys sorted, and
        their relevant counts; None when no pair is usable."""
        users, pairs = held_out_sample(held_out, data.n_items, self.params["tune_users"],
                                       self.params["seed"])
        if not len(users):
            return None
        rows = np.searchsorted(users, pairs // data.n_items)
        return users, rows * data.n_items + pairs % data.n_items, np.bincount(
            rows, minlength=len(users))

    def _held_out_ndcg(self, data: RecallData, users: np.ndarray, keys: np.ndarray,
                       n_relevant: np.ndarray) -> float:
        """Mean NDCG@eval_k of the current weights over ``users`` (fitted items removed;
        a user without a list counts 0)."""
        k = self.params["eval_k"]
        hits = hits_from_keys(self.retrieve(data, users, k).items, keys, data.n_items)
        return float(ndcg_at_k(hits, n_relevant, k).mean())

    def tuned(self) -> dict[str, Any]:
        return dict(self.choice)

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        self._require_fitted()
        scores = np.full((len(users), data.n_items), -np.inf, np.float32)
        scores[:, self.kept] = self._kept_scores(data, users)
        return scores

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        """``score``'s top k, taken among the kept items alone: every other item scores
        -inf, and numpy's partition of rows made mostly of equal -inf took about 5x as
        long as of distinct scores (60k items, 5k kept: 37-47 s a phase for about 5k users;
        its lambda tuning retrieves so too)."""
        self._require_fitted()
        return chunked_top_k(lambda rows: self._kept_scores(data, users[rows]), data, users,
                             k, exclude_seen, chunk, columns=self.kept)

    def _kept_scores(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        """Scores of the kept items (users x kept); -inf for a user with none fitted."""
        x = (data.history[users][:, self.kept] > 0).astype(np.float32)
        scores = np.asarray(x @ self.weights, np.float32)
        scores[x.getnnz(axis=1) == 0] = -np.inf
        return scores
