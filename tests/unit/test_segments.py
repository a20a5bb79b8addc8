"""Report segments (``pipeline.evaluation.segments``) against values worked out by hand,
and the pooled-rate bootstrap they use."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.interactions import IdIndex
from pipeline.evaluation.bootstrap import ratio_ci
from pipeline.evaluation.protocol import user_hits
from pipeline.evaluation.segments import popularity_deciles, segment_report

ITEMS = IdIndex(np.arange(10))


def fitting() -> pd.DataFrame:
    """Item i has 9 - i fitted events (item 9 none: new); users 1, 2, 3 have 2, 5 and 10
    events, user 99 the rest."""
    items = [i for i in range(10) for _ in range(9 - i)]
    users = [1] * 2 + [2] * 5 + [3] * 10 + [99] * (len(items) - 17)
    return pd.DataFrame({"user_id": users, "item_id": items})


def lists(ranked: dict[int, list[int]]) -> pd.DataFrame:
    rows = [(u, item, r + 1) for u, items in ranked.items() for r, item in enumerate(items)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


RELEVANT = pd.DataFrame({"user_id": [1, 2, 2, 3], "item_id": [0, 1, 9, 5]})


def test_segments_by_hand() -> None:
    found = {name: user_hits(lists(ranked), RELEVANT, ITEMS, 10) for name, ranked in {
        "final": {1: [0, 4], 2: [9, 3], 3: [2, 3]},
        "base": {1: [1, 0], 2: [1]}}.items()}
    got = segment_report(found, RELEVANT, fitting(), ITEMS, "final", "base", 10,
                         cold_max=2, heavy_min=10, resamples=50, seed=0)
    users = got["users"]
    assert users["counts"] == {"cold": 1, "middle": 1, "heavy": 1}
    middle = 1 / (1 + 1 / math.log2(3))  # one hit at rank 1 of two relevant items
    assert users["ndcg@10"]["cold"]["final"] == pytest.approx([1, 1, 1])
    assert users["ndcg@10"]["cold"]["base"] == pytest.approx([1 / math.log2(3)] * 3)
    assert users["ndcg@10"]["middle"]["final"] == pytest.approx([middle] * 3)
    assert users["lift"]["middle"] == pytest.approx([0, 0, 0])
    assert users["ndcg@10"]["heavy"]["final"] == pytest.approx([0, 0, 0])
    pop = got["item_popularity"]
    assert pop["relevant"] == {"1": 1, "2": 1, "3": 0, "4": 0, "5": 0, "6": 1, "7": 0,
                               "8": 0, "9": 0, "10": 1}
    recall = pop["recall@10"]
    assert recall["1"] == {"final": [1, 1, 1], "base": [1, 1, 1]}
    assert recall["2"] == {"final": [0, 0, 0], "base": [1, 1, 1]}
    assert recall["10"] == {"final": [1, 1, 1], "base": [0, 0, 0]}
    assert recall["3"] == {"final": None, "base": None}
    coverage = {d: v["final"] for d, v in pop["coverage@10"].items()}
    assert coverage == {"1": 1, "2": 0, "3": 1, "4": 1, "5": 1, "6": 0, "7": 0, "8": 0,
                        "9": 0, "10": 1}
    assert got["new_items"]["relevant"] == 1
    assert got["new_items"]["recall@10"] == {"final": [1, 1, 1], "base": [0, 0, 0]}


def test_deciles_put_the_most_popular_tenth_first_and_break_ties_by_code() -> None:
    items = IdIndex(np.arange(20))
    log = pd.DataFrame({"user_id": 0, "item_id": [5, 5, 5, 7, 7, 3]})
    decile = popularity_deciles(log, items)
    assert decile[5] == 1 and decile[7] == 1 and decile[3] == 2 and decile[0] == 2
    assert np.bincount(decile)[1:].tolist() == [2] * 10


def test_ratio_interval_pools_over_users_and_resamples_them() -> None:
    hits, relevant = np.array([1.0, 0.0, 3.0, 0.0]), np.array([1.0, 2.0, 4.0, 1.0])
    got = ratio_ci(hits, relevant, resamples=2000, seed=1)
    assert got["mean"] == pytest.approx(4 / 8)
    assert 0.0 <= got["low"] < 0.5 < got["high"] <= 1.0  # within the users' own rates
    with pytest.raises(ValueError, match="positive total"):
        ratio_ci(np.zeros(2), np.zeros(2))
