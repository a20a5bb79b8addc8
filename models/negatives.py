"""Negative sampling for click models trained on positives only."""

from __future__ import annotations

import numpy as np

from models.arrays import sorted_unique


def sample_negatives(pos_users: np.ndarray, pos_items: np.ndarray, n_items: int, ratio: int,
                     rng: np.random.Generator, *, popularity: np.ndarray | None = None,
                     alpha: float = 1.0, hard_users: np.ndarray | None = None,
                     hard_items: np.ndarray | None = None, hard_share: float = 0.5,
                     max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``ratio`` negative (user, item) codes per positive, positives' users repeated.

    Each negative is, with probability ``hard_share`` when the user has any, one of the
    user's hard negatives (e.g. unclicked recall candidates, drawn uniformly), otherwise
    an item drawn with probability proportional to ``popularity ** alpha`` (default: the
    items' counts among the positives, plus one so every item can be drawn). Draws that
    hit one of the user's positives are redrawn up to ``max_rounds`` times; codes are
    0-based. Vectorised: no loop over users or samples.
    """
    pos_users = np.asarray(pos_users, np.int64)
    pos_items = np.asarray(pos_items, np.int64)
    users = np.repeat(pos_users, ratio)
    n = len(users)
    if popularity is None:
        popularity = np.bincount(pos_items, minlength=n_items).astype(np.float64) + 1.0
    p = np.asarray(popularity, np.float64)[:n_items] ** alpha
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    pos_keys = sorted_unique(pos_users * n_items + pos_items)

    def is_pos(u: np.ndarray, i: np.ndarray) -> np.ndarray:
        keys = u * n_items + i
        at = np.minimum(np.searchsorted(pos_keys, keys), len(pos_keys) - 1)
        return pos_keys[at] == keys

    def popular(m: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(m), side="right"), n_items - 1)

    items = popular(n)
    hard = np.zeros(n, bool)
    if hard_users is not None and hard_items is not None and len(hard_users) and hard_share > 0:
        hu = np.asarray(hard_users, np.int64)
        hi = np.asarray(hard_items, np.int64)
        keep = ~is_pos(hu, hi)
        hu, hi = hu[keep], hi[keep]
        order = np.argsort(hu, kind="stable")
        hu, hi = hu[order], hi[order]
        n_users = int(max(users.max(initial=0), hu.max(initial=0))) + 1
        counts = np.bincount(hu, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        hard = (rng.random(n) < hard_share) & (counts[users] > 0)
        hu_sel = users[hard]
        pick = starts[hu_sel] + np.floor(rng.random(len(hu_sel)) * counts[hu_sel]).astype(
            np.int64)
        items[hard] = hi[pick]
    for _ in range(max_rounds):
        clash = ~hard & is_pos(users, items)
        if not clash.any():
            break
        items[clash] = popular(int(clash.sum()))
    return users, items
