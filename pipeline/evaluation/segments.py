"""Where a ranking wins and loses: the same hits split by who the user is and what the
items are, each figure with a 95% bootstrap interval over users.

- Users by the length of their fitted history: ``cold`` (at most
  ``evaluate.cold_max_events`` events), ``heavy`` (at least ``evaluate.heavy_min_events``)
  and ``middle``; NDCG@k per segment, and the paired lift of the final ranking over its
  best single component within each segment.
- Items by popularity decile of the fitting data (decile 1: the 10% of the catalogue with
  the most fitting interactions; 10: the least, never-seen items included): recall@k of
  the relevant items in each decile (pooled over users: hits / relevant items), and the
  share of each decile's items that appear in anyone's top k (coverage).
- Items new in the evaluated window (no fitting interaction): their recall@k.
Everything is computed from ``protocol.UserHits``, the same hits the means come from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.interactions import IdIndex
from models.metrics import ndcg_at_k
from pipeline import schema as S
from pipeline.evaluation.bootstrap import bootstrap_cis, ratio_cis
from pipeline.evaluation.protocol import UserHits

COLD, MIDDLE, HEAVY = "cold", "middle", "heavy"
DECILES = 10


def user_segments(users: np.ndarray, fitting: pd.DataFrame, cold_max: int, heavy_min: int
                  ) -> np.ndarray:
    """``cold``, ``middle`` or ``heavy`` per user id, by fitted events."""
    events = fitting[S.USER].value_counts().reindex(users).fillna(0).to_numpy()
    return np.where(events <= cold_max, COLD, np.where(events >= heavy_min, HEAVY, MIDDLE))


def popularity_deciles(fitting: pd.DataFrame, items: IdIndex) -> np.ndarray:
    """Decile 1-10 per item code by fitting interactions, most popular first (ties by
    code, so the split is deterministic)."""
    codes = items.encode(fitting[S.ITEM])
    counts = np.bincount(codes[codes >= 0], minlength=len(items))
    order = np.lexsort((np.arange(len(items)), -counts))
    decile = np.empty(len(items), np.int64)
    decile[order] = np.arange(len(items)) * DECILES // max(len(items), 1) + 1
    return decile


def _interval(ci: dict[str, float]) -> list[float]:
    return [ci["mean"], ci["low"], ci["high"]]


def _pooled_recall(found: list[UserHits], codes: np.ndarray, users: np.ndarray, k: int,
                   wanted: np.ndarray, resamples: int, seed: int) -> list[list[float] | None]:
    """Per system (each scored on the same users): hits in the top k among the relevant
    items (item ``codes`` of ``users``) with ``wanted[code]``, pooled over users, with its
    interval (one draw of users for all); None when no relevant item is wanted."""
    rows = found[0].users.encode(users)
    keep = (codes >= 0) & (rows >= 0)
    keep[keep] = wanted[codes[keep]]
    if not keep.any():
        return [None] * len(found)
    denominator = np.bincount(rows[keep], minlength=len(found[0].users)).astype(np.float64)
    numerators = []
    for system in found:
        top = system.ranked[:, :k]
        hit = system.hits[:, :k] & (top >= 0)
        hit[hit] = wanted[top[hit]]
        numerators.append(hit.sum(axis=1).astype(np.float64))
    return [_interval(ci) for ci in ratio_cis(numerators, denominator, resamples, seed)]


def segment_report(found: dict[str, UserHits], relevant: pd.DataFrame, fitting: pd.DataFrame,
                   items: IdIndex, final: str, baseline: str, k: int, cold_max: int,
                   heavy_min: int, resamples: int, seed: int) -> dict:
    """The segments of the module docstring for ``final`` and ``baseline`` (each a key of
    ``found``, the evaluated users' hits of every system)."""
    relevant = relevant.drop_duplicates([S.USER, S.ITEM])
    systems = [final, baseline]
    users = found[final].users.ids
    if not found[baseline].users.ids.equals(users):
        raise ValueError(f"{final!r} and {baseline!r} must be scored on the same users")
    of_user = user_segments(users, fitting, cold_max, heavy_min)
    per_user = {name: pd.Series(ndcg_at_k(found[name].hits, found[name].n_relevant, k),
                                       index=found[name].users.ids)
                for name in systems}
    report: dict = {"systems": systems, "k": k,
                    "users": {"cold_max_events": cold_max, "heavy_min_events": heavy_min,
                              "counts": {}, f"ndcg@{k}": {}, "lift": {}}}
    for segment in (COLD, MIDDLE, HEAVY):
        mine = users[of_user == segment]
        report["users"]["counts"][segment] = len(mine)
        if not len(mine):
            continue
        ours, theirs = (per_user[name].reindex(mine).fillna(0.0).to_numpy() for name in systems)
        # each system's NDCG and the paired lift (paired_lift_ci's interval), one draw
        cis = [_interval(ci) for ci in bootstrap_cis([ours, theirs, ours - theirs], resamples,
                                                     seed)]
        report["users"][f"ndcg@{k}"][segment] = dict(zip(systems, cis[:2], strict=True))
        report["users"]["lift"][segment] = cis[2]
    decile = popularity_deciles(fitting, items)
    codes, users_of = items.encode(relevant[S.ITEM]), relevant[S.USER].to_numpy()
    report["item_popularity"] = {
        "relevant": {str(d): int(((codes >= 0) & (decile[np.maximum(codes, 0)] == d)).sum())
                     for d in range(1, DECILES + 1)},
        f"recall@{k}": {}, f"coverage@{k}": {}}
    scored = [found[name] for name in systems]
    for d in range(1, DECILES + 1):
        wanted = decile == d
        report["item_popularity"][f"recall@{k}"][str(d)] = dict(zip(systems, _pooled_recall(
            scored, codes, users_of, k, wanted, resamples, seed), strict=True))
        report["item_popularity"][f"coverage@{k}"][str(d)] = {
            name: _decile_coverage(found[name], k, wanted) for name in systems}
    fitted = np.zeros(len(items), bool)
    known = items.encode(fitting[S.ITEM])
    fitted[known[known >= 0]] = True
    new = ~fitted
    report["new_items"] = {
        "relevant": int(((codes >= 0) & new[np.maximum(codes, 0)]).sum()),
        f"recall@{k}": dict(zip(systems, _pooled_recall(scored, codes, users_of, k, new,
                                                        resamples, seed), strict=True))}
    return report


def _decile_coverage(found: UserHits, k: int, wanted: np.ndarray) -> float:
    """Share of the wanted items shown in anyone's top k."""
    top = found.ranked[:, :k]
    shown = np.unique(top[top >= 0])
    return float(wanted[shown].sum() / max(wanted.sum(), 1))
