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
    """Mean NDCG@k over groups with a positive, ranking each group's rows by score
    (ties: row order), with the ideal ordering taken within the group's rows."""
    frame = pd.DataFrame({"g": groups, "s": np.nan_to_num(scores, nan=-np.inf),
                          "y": labels.astype(np.float64), "row": np.arange(len(groups))})
    frame = frame[frame.groupby("g")["y"].transform("max") > 0]
    if frame.empty:
        return 0.0
    ordered = frame.sort_values(["g", "s", "row"], ascending=[True, False, True])
    position = ordered.groupby("g", sort=False).cumcount().to_numpy()
    gain = np.where(position < k, ordered["y"].to_numpy() / np.log2(position + 2.0), 0.0)
    dcg = pd.Series(gain).groupby(ordered["g"].to_numpy(), sort=False).sum()
    ideal = frame.sort_values(["g", "y"], ascending=[True, False])
    ipos = ideal.groupby("g", sort=False).cumcount().to_numpy()
    igain = np.where(ipos < k, ideal["y"].to_numpy() / np.log2(ipos + 2.0), 0.0)
    idcg = pd.Series(igain).groupby(ideal["g"].to_numpy(), sort=False).sum()
    return float((dcg / idcg.reindex(dcg.index)).mean())


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
