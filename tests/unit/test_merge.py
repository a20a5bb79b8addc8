"""Merge: quotas in priority order, fill to the budget, evidence kept from every channel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import TopK
from models.recall.merge import ChannelList, merge_candidates


def lists() -> list[ChannelList]:
    a = TopK(np.array([[5, 3, -1]]), np.array([[0.9, 0.5, -np.inf]], np.float32))
    b = TopK(np.array([[3, 7, 8, 5]]), np.array([[10, 9, 8, 1]], np.float32))
    return [ChannelList("a", a, 2), ChannelList("b", b, 1)]


def test_quota_then_fill_in_priority_order() -> None:
    merged = merge_candidates(lists(), fill="b", budget=4)
    assert merged["item"].tolist() == [5, 3, 7, 8]
    assert merged["merge_rank"].tolist() == [1, 2, 3, 4]
    assert merged["source"].astype(str).tolist() == ["a", "a", "b", "b"]


def test_evidence_from_every_channel_and_n_channels() -> None:
    merged = merge_candidates(lists(), fill="b", budget=4).set_index("item")
    assert merged.loc[3, "a_rank"] == 2 and merged.loc[3, "b_rank"] == 1
    assert merged.loc[5, "b_rank"] == 4 and merged.loc[5, "n_channels"] == 2
    assert merged.loc[7, "n_channels"] == 1
    assert pd.isna(merged.loc[7, "a_rank"]) and pd.isna(merged.loc[7, "a_score"])


def test_budget_truncates() -> None:
    assert len(merge_candidates(lists(), fill="b", budget=2)) == 2


def test_fill_must_be_a_channel() -> None:
    with pytest.raises(ValueError, match="fill"):
        merge_candidates(lists(), fill="zzz", budget=4)
