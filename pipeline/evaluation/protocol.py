"""From ranked lists and held-out interactions to metric tables.

Full ranking: recommenders rank the whole catalogue with the user's fitted items
removed, so a list here is compared against every held-out item of the user.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.interactions import IdIndex
from pipeline import schema as S
from pipeline.evaluation.metrics import METRICS, coverage_at_k


def ranked_matrix(lists: pd.DataFrame, users: IdIndex, items: IdIndex, depth: int,
                  rank_col: str = S.RANK) -> np.ndarray:
    """Item codes per evaluated user and rank position (-1 where no item), up to depth."""
    out = np.full((len(users), depth), -1, np.int64)
    rows = users.encode(lists[S.USER])
    ranks = lists[rank_col].to_numpy(np.int64)
    if (ranks < 1).any():
        raise ValueError(f"ranks in column '{rank_col}' start at 1; found {ranks.min()}")
    ok = (rows >= 0) & (ranks <= depth)
    codes = items.encode(lists[S.ITEM])
    cells = rows[ok] * depth + ranks[ok] - 1
    if np.unique(cells).size != cells.size:
        raise ValueError(f"duplicate ranks per user in column '{rank_col}'")
    out[rows[ok], ranks[ok] - 1] = codes[ok]
    return out


def hit_matrix(ranked: np.ndarray, relevant: pd.DataFrame, users: IdIndex,
               items: IdIndex) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hits per user and rank, and each user's number of relevant items."""
    rel_users = users.encode(relevant[S.USER])
    rel_items = items.encode(relevant[S.ITEM])
    n_relevant = np.bincount(rel_users, minlength=len(users))
    known = rel_items >= 0  # an item outside the catalogue counts as relevant, never as a hit
    rel_keys = np.unique(rel_users[known] * len(items) + rel_items[known])
    keys = np.arange(len(users))[:, None] * len(items) + ranked
    hits = np.isin(keys, rel_keys) & (ranked >= 0)
    return hits, n_relevant


def evaluate_lists(lists: pd.DataFrame, relevant: pd.DataFrame, items: IdIndex,
                   ks: list[int], rank_col: str = S.RANK) -> dict[str, float]:
    """Every metric at every k, averaged over the users that have relevant items."""
    relevant = relevant.drop_duplicates([S.USER, S.ITEM])
    users = IdIndex(np.sort(relevant[S.USER].unique()))
    ranked = ranked_matrix(lists, users, items, max(ks), rank_col)
    hits, n_relevant = hit_matrix(ranked, relevant, users, items)
    result: dict[str, float] = {"users": len(users)}
    for k in ks:
        for name, metric in METRICS.items():
            result[f"{name}@{k}"] = float(metric.fn(hits, n_relevant, k).mean())
        result[f"coverage@{k}"] = coverage_at_k(ranked, k, len(items))
    return result
