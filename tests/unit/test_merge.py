"""Merge: quotas in priority order, fill to the budget, evidence kept from every channel."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.base import TopK
from models.recall.merge import ChannelList, merge_candidates, tune_quotas


def lists() -> list[ChannelList]:
    a = TopK(np.array([[5, 3, -1]]), np.array([[0.9, 0.5, -np.inf]], np.float32))
    b = TopK(np.array([[3, 7, 8, 5]]), np.array([[10, 9, 8, 1]], np.float32))
    return [ChannelList("a", a, 2), ChannelList("b", b, 1)]


def test_quota_interleaved_by_relative_rank_then_fill() -> None:
    # a: 5 (1/2), 3 (2/2); b: 3 (1/1). Quota stage by rank/quota: 5 (a, .5), 3 (a, 1.0;
    # ties to the first channel), b's 3 is a duplicate. Fill: b's 7 (2/1), 8 (3/1).
    merged = merge_candidates(lists(), budget=4)
    assert merged["item"].tolist() == [5, 3, 7, 8]
    assert merged["merge_rank"].tolist() == [1, 2, 3, 4]
    assert merged["source"].astype(str).tolist() == ["a", "a", "b", "b"]


def test_larger_quota_places_proportionally_more() -> None:
    a = TopK(np.array([[1, 2, 3, 4]]), np.ones((1, 4), np.float32))
    b = TopK(np.array([[5, 6, 7, 8]]), np.ones((1, 4), np.float32))
    merged = merge_candidates([ChannelList("a", a, 2), ChannelList("b", b, 4)], budget=6)
    # positions: a 1/2, 2/2; b 1/4, 2/4, 3/4, 4/4
    assert merged["item"].tolist() == [5, 1, 6, 7, 2, 8]


def test_evidence_from_every_channel_and_n_channels() -> None:
    merged = merge_candidates(lists(), budget=4).set_index("item")
    assert merged.loc[3, "a_rank"] == 2 and merged.loc[3, "b_rank"] == 1
    assert merged.loc[5, "b_rank"] == 4 and merged.loc[5, "n_channels"] == 2
    assert merged.loc[7, "n_channels"] == 1
    assert pd.isna(merged.loc[7, "a_rank"]) and pd.isna(merged.loc[7, "a_score"])


def test_budget_truncates() -> None:
    assert len(merge_candidates(lists(), budget=2)) == 2


def test_tune_quotas_rewards_new_hits_and_splits_the_rest_by_finds() -> None:
    minus = np.full((1, 30), -1)
    a, b, c = minus.copy(), minus.copy(), minus.copy()
    a[0, :10] = np.arange(10)        # pairs 0-9 at a's top
    b[0, :10] = np.arange(10)        # the same pairs: nothing new once a has them
    b[0, 10:15] = np.arange(10, 15)
    c[0, :10] = np.arange(20, 30)    # pairs nobody else finds
    quotas = tune_quotas({"a": a, "b": b, "c": c}, budget=30, step=10)
    # step 1: a, b, c tie at 10 new -> a (listed first); step 2: only c adds (10);
    # step 3: nobody adds: the last 10 slots split 10:10 between a and c by their finds.
    assert quotas == {"a": 15, "b": 0, "c": 15}


def test_tune_quotas_fills_the_budget_exactly_when_one_channel_keeps_finding() -> None:
    hits = {"a": np.arange(40)[None, :], "b": np.full((1, 40), -1)}
    assert tune_quotas(hits, budget=40, step=10) == {"a": 40, "b": 0}
