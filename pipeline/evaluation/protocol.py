"""From ranked lists and held-out interactions to metric tables.

Full ranking: recommenders rank the whole catalogue with the user's fitted items
removed, so a list here is compared against every held-out item of the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.interactions import IdIndex
from models.arrays import sorted_unique
from models.metrics import METRICS, coverage_at_k, hits_from_keys
from pipeline import schema as S


def ranked_matrix(lists: pd.DataFrame, users: IdIndex, items: IdIndex, depth: int,
                  rank_col: str = S.RANK) -> np.ndarray:
    """Item codes per evaluated user and rank position (-1 where no item), up to depth."""
    out = np.full((len(users), depth), -1, np.int64)
    rows = users.encode(lists[S.USER])
    ranks = lists[rank_col].to_numpy(np.int64)
    if (ranks < 1).any():
        raise ValueError(f"ranks in column '{rank_col}' start at 1; found {ranks.min()}")
    ok = (rows >= 0) & (ranks <= depth)
    cells = rows[ok] * depth + ranks[ok] - 1
    filled = np.zeros(out.size, bool)
    filled[cells] = True
    if np.count_nonzero(filled) < cells.size:  # two rows landed in one cell
        raise ValueError(f"duplicate ranks per user in column '{rank_col}'")
    out.ravel()[cells] = items.encode(lists[S.ITEM].to_numpy()[ok])  # only the rows kept
    return out


def hit_matrix(ranked: np.ndarray, relevant: pd.DataFrame, users: IdIndex,
               items: IdIndex) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hits per user and rank, and each user's number of relevant items."""
    rel_users = users.encode(relevant[S.USER])
    rel_items = items.encode(relevant[S.ITEM])
    n_relevant = np.bincount(rel_users, minlength=len(users))
    known = rel_items >= 0  # an item outside the catalogue counts as relevant, never as a hit
    rel_keys = sorted_unique(rel_users[known] * len(items) + rel_items[known])
    return hits_from_keys(ranked, rel_keys, len(items)), n_relevant


@dataclass(frozen=True)
class UserHits:
    """One system's top lists against the relevant items: the evaluated users (those with
    relevant items, sorted), their ranked item codes and hits per rank, and each one's
    number of relevant items. Every metric, mean or per user, comes from this one value,
    so per-user values and their means cannot drift apart."""

    users: IdIndex
    ranked: np.ndarray
    hits: np.ndarray
    n_relevant: np.ndarray


def user_hits(lists: pd.DataFrame, relevant: pd.DataFrame, items: IdIndex, depth: int,
              rank_col: str = S.RANK) -> UserHits:
    relevant = relevant.drop_duplicates([S.USER, S.ITEM])
    users = IdIndex(np.sort(relevant[S.USER].unique()))
    ranked = ranked_matrix(lists, users, items, depth, rank_col)
    hits, n_relevant = hit_matrix(ranked, relevant, users, items)
    return UserHits(users, ranked, hits, n_relevant)


def mean_metrics(found: UserHits, ks: list[int], n_items: int) -> dict[str, float]:
    """Every metric at every k, averaged over the evaluated users, and coverage."""
    result: dict[str, float] = {"users": len(found.users)}
    for k in ks:
        for name, metric in METRICS.items():
            result[f"{name}@{k}"] = float(metric.fn(found.hits, found.n_relevant, k).mean())
        result[f"coverage@{k}"] = coverage_at_k(found.ranked, k, n_items)
    return result


def evaluate_lists(lists: pd.DataFrame, relevant: pd.DataFrame, items: IdIndex,
                   ks: list[int], rank_col: str = S.RANK) -> dict[str, float]:
    """Every metric at every k, averaged over the users that have relevant items."""
    return mean_metrics(user_hits(lists, relevant, items, max(ks), rank_col), ks, len(items))


def per_user_metrics(found: UserHits, k: int) -> pd.DataFrame:
    """Every metric at ``k`` per evaluated user (index: the users, named S.USER): the
    values whose means ``mean_metrics`` reports, kept so that intervals and paired
    comparisons (``bootstrap.py``) can resample users and any slice is a ``groupby``."""
    return pd.DataFrame({f"{name}@{k}": metric.fn(found.hits, found.n_relevant, k)
                         for name, metric in METRICS.items()},
                        index=pd.Index(found.users.ids, name=S.USER))


def per_user_metric(lists: pd.DataFrame, relevant: pd.DataFrame, items: IdIndex, metric: str,
                    k: int, rank_col: str = S.RANK) -> pd.Series:
    """One metric's value per evaluated user (see ``per_user_metrics``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    found = user_hits(lists, relevant, items, k, rank_col)
    return per_user_metrics(found, k)[f"{metric}@{k}"]
