"""A rank blend of rankers and recall channels: reciprocal-rank fusion, checked on held-out
requests.

Scores of different models live on different scales, so each component is turned into a
reciprocal rank within its request, ``1 / (RRF_OFFSET + rank)``, and the blend is their
sum, every component weighted alike: weights searched on held-out requests fitted their
noise, and lost to equal weights on the requests they were not chosen on
(benchmarks/RESULTS.md, "ranking ablation"). One component alone is the blend instead
where it beats the fusion clearly (``clear_lift``), as a search ranker does the text
channels it would be fused with.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import pandas as pd

from models.arrays import grouped_order
from models.metrics import ndcg_at_k

log = logging.getLogger(__name__)
RRF_OFFSET = 10.0
MIN_GAIN = 1e-4
# A component alone replaces the fusion only with a mean per-request lift over it of at
# least MIN_Z standard errors (and MIN_GAIN). Scored on valid halves not chosen on, this
# guard beat taking the component wherever it scored higher at all, and taking the fusion
# only where it cleared MIN_Z over the component (benchmarks/RESULTS.md).
MIN_Z = 1.0


def request_rank(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each row's score within its group, ties in row order (pandas'
    ``rank(method="first")``); NaN scores rank last."""
    codes = pd.factorize(groups)[0]
    filled = np.where(np.isnan(scores), -np.inf, scores)
    order = grouped_order(codes, filled)
    sorted_codes = codes[order]
    ranks = np.empty(len(codes))
    ranks[order] = np.arange(len(order)) - np.searchsorted(sorted_codes, sorted_codes) + 1
    return ranks


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    """The blend's per-component value; a missing rank (NaN) contributes nothing."""
    return np.where(np.isnan(ranks), 0.0, 1.0 / (RRF_OFFSET + np.nan_to_num(ranks, nan=0.0)))


def candidate_ndcg(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   k: int = 10) -> float:
    """Mean of ``group_ndcg``; 0 when no group has a positive label."""
    return _mean(group_ndcg(groups, scores, labels, k))


def group_ndcg(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray,
               k: int = 10) -> np.ndarray:
    """``models.metrics.ndcg_at_k`` of each group with a positive label, in group id
    order (a group without one has nothing to find and is left out), each group's rows
    ranked by score (ties in row order). A NaN score is a row the system did not rank
    (a channel that did not retrieve the candidate): it goes last and is never a hit, so
    a channel that ranks nothing is not credited with the merge order its rows came in.
    Gain is binary (a positive label is relevant) and the ideal ranking is that of the
    group's own rows: only the candidates can be ranked.

    Only the positives' places are needed, so each is counted (the rows of its group
    that rank above it) instead of sorting every row: 166 -> 23 ms a call over
    synthetic-10k's 567k valid rows."""
    codes, ids = pd.factorize(np.asarray(groups), sort=False)
    relevant = np.asarray(labels) > 0
    n_relevant = np.bincount(codes, weights=relevant, minlength=len(ids)).astype(np.int64)
    evaluated = np.flatnonzero(n_relevant > 0)
    if evaluated.size == 0:
        return np.zeros(0)
    scores = np.asarray(scores, np.float64)
    rows = np.argsort(codes, kind="stable")  # each group's rows together, in row order
    starts = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(ids)))]
    hits = _positive_places(rows, starts, np.nan_to_num(scores, nan=-np.inf),
                            relevant & ~np.isnan(scores), k)
    evaluated = evaluated[np.argsort(ids[evaluated], kind="stable")]  # groups by id
    return ndcg_at_k(hits[evaluated], n_relevant[evaluated], k)


@numba.njit(cache=True, nogil=True)
def _positive_places(rows: np.ndarray, starts: np.ndarray, filled: np.ndarray,
                     hit: np.ndarray, k: int) -> np.ndarray:
    """(groups x k) hits; group g's rows are ``rows[starts[g]:starts[g + 1]]``, ascending.
    A ``hit`` row's place in its group is the rows scoring above it plus the rows tied
    with it earlier in row order, the order a stable sort gives."""
    hits = np.zeros((len(starts) - 1, k), np.bool_)
    for g in range(len(starts) - 1):
        for a in range(starts[g], starts[g + 1]):
            p = rows[a]
            if not hit[p]:
                continue
            place = 0
            for b in range(starts[g], starts[g + 1]):
                r = rows[b]
                if filled[r] > filled[p] or (filled[r] == filled[p] and r < p):
                    place += 1
                    if place >= k:
                        break
            if place < k:
                hits[g, place] = True
    return hits


def blend_scores(components: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of the components' reciprocal ranks (``components``: ranks per row)."""
    n = len(next(iter(components.values())))
    total = np.zeros(n)
    for name, weight in weights.items():
        total += weight * reciprocal_rank(components[name])
    return total


def fit_blend(components: dict[str, np.ndarray], groups: np.ndarray, labels: np.ndarray,
              k: int = 10) -> tuple[dict[str, float], dict[str, float]]:
    """Every component weighted 1, unless the best one alone lifts NDCG@k over that
    fusion clearly (``clear_lift``), then it alone; returns the weights and each
    component's NDCG@k alone (plus ``blend``, of the weights returned), all on the rows
    given. The best one and the fusion are compared as ``blend_scores`` serves them (a
    row a channel did not rank keeps its merge order), not as ``alone`` scores them."""
    alone = {name: group_ndcg(groups, -ranks, labels, k) for name, ranks in components.items()}
    best = max(alone, key=lambda n: (_mean(alone[n]), n))
    weights = {name: 1.0 for name in components}
    fused = group_ndcg(groups, blend_scores(components, weights), labels, k)
    if len(weights) > 1:
        single = group_ndcg(groups, blend_scores(components, {best: 1.0}), labels, k)
        if clear_lift(lift := single - fused):
            log.info("%s alone lifts the fusion of %s by %+.4f out of fold, %.2f standard "
                     "errors: it alone is the blend", best, ", ".join(components),
                     lift.mean(), lift.mean() / max(_standard_error(lift), 1e-12))
            weights, fused = {best: 1.0}, single
    return weights, {**{n: _mean(v) for n, v in alone.items()}, "blend": _mean(fused)}


def clear_lift(lift: np.ndarray) -> bool:
    """Whether per-request lifts (one a request, paired) average at least ``MIN_GAIN``
    and ``MIN_Z`` standard errors of their mean (never with fewer than two requests)."""
    if len(lift) < 2:
        return False
    mean = lift.mean()
    return bool(mean >= MIN_GAIN and mean >= MIN_Z * _standard_error(lift))


def _standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else np.inf


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0
