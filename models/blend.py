"""A rank blend of rankers and recall channels, weighted on held-out requests.

Scores of different models live on different scales, so each component is turned into a
reciprocal rank within its request, ``1 / (RRF_OFFSET + rank)``, and the blend is their
weighted sum. Weights come from a greedy forward search on held-out requests: start from
the best component alone and keep adding the (component, weight) that lifts held-out
NDCG@10 the most, so the blend is never worse there than its best component.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.metrics import ndcg_at_k

RRF_OFFSET = 10.0
WEIGHTS = (0.25, 0.5, 1.0)
MIN_GAIN = 1e-4


def request_rank(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each row's score within its group; NaN scores rank last."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    return pd.Series(filled).groupby(groups, sort=False).rank(
        ascending=False, method="first").to_numpy()


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    """The blend's per-component value; a missing rank (NaN) contributes nothing."""
    return np.where(np.isnan(ranks), 0.0, 1.0 / (RRF_OFFSET + np.nan_to_num(ranks, nan=0.0)))


def candidate_ndcg(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   k: int = 10) -> float:
    """Mean ``models.metrics.ndcg_at_k`` over the groups with a positive label (a group
    without one has nothing to find and is left out), each group's rows ranked by score
    (ties in row order). A NaN score is a row the system did not rank (a channel that did
    not retrieve the candidate): it goes last and is never a hit, so a channel that ranks
    nothing is not credited with the merge order its rows came in. Gain is binary (a
    positive label is relevant) and the ideal ranking is that of the group's own rows:
    only the candidates can be ranked."""
    relevant = labels > 0
    _, group = np.unique(groups, return_inverse=True)
    group = group.ravel()
    n_relevant = np.bincount(group, weights=relevant)
    rows = np.flatnonzero(n_relevant[group] > 0)
    if rows.size == 0:
        return 0.0
    filled = np.nan_to_num(scores, nan=-np.inf)
    rows = rows[np.lexsort((rows, -filled[rows], group[rows]))]  # group, score desc, row
    sorted_group = group[rows]
    position = np.arange(len(rows)) - np.searchsorted(sorted_group, sorted_group)
    evaluated, row_of = np.unique(sorted_group, return_inverse=True)
    top = position < k
    hits = np.zeros((len(evaluated), k), bool)
    hits[row_of[top], position[top]] = relevant[rows[top]] & ~np.isnan(scores[rows[top]])
    return float(ndcg_at_k(hits, n_relevant[evaluated].astype(np.int64), k).mean())


def blend_scores(components: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of the components' reciprocal ranks (``components``: ranks per row)."""
    n = len(next(iter(components.values())))
    total = np.zeros(n)
    for name, weight in weights.items():
        total += weight * reciprocal_rank(components[name])
    return total


def fit_blend(components: dict[str, np.ndarray], groups: np.ndarray, labels: np.ndarray,
              k: int = 10) -> tuple[dict[str, float], dict[str, float]]:
    """Weights by greedy forward search; returns them and each component's NDCG@k alone
    (plus ``blend``), all on the rows given."""
    alone = {name: candidate_ndcg(groups, -ranks, labels, k)
             for name, ranks in components.items()}
    best_name = max(alone, key=lambda n: (alone[n], n))
    weights = {best_name: 1.0}
    best = alone[best_name]
    while True:
        trials = {}
        for name in components:
            for w in WEIGHTS:
                trial = {**weights, name: weights.get(name, 0.0) + w}
                trials[(name, w)] = candidate_ndcg(
                    groups, blend_scores(components, trial), labels, k)
        (name, w), score = max(trials.items(), key=lambda kv: kv[1])
        if score < best + MIN_GAIN:
            break
        weights[name] = weights.get(name, 0.0) + w
        best = score
    return weights, {**alone, "blend": best}
