"""Merge: quotas in priority order, fill to the budget, evidence kept from every channel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import InvalidTopKError, TopK
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
    assert merged["source"].tolist() == ["a", "a", "b", "b"]
    assert merged["source"].dtype == pd.StringDtype("pyarrow")  # as the stage writes it


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


def test_tune_quotas_buys_new_hits_per_slot_and_skips_duplicates_for_free() -> None:
    none = np.full((1, 30), -1)
    a, b, c = none.copy(), none.copy(), none.copy()
    a[0, :10] = np.arange(10)          # items 0-9, all hits
    b[0, :15] = np.arange(15)          # the same 0-9 (free once a placed them), then 10-14
    c[0, :10] = np.arange(20, 30)      # items nobody else has, all hits
    lists = {"a": a, "b": b, "c": c}
    hits = {name: items.copy() for name, items in lists.items()}  # pair id = item code
    quotas = tune_quotas(lists, hits, budget=30, step=10)
    # a (tie, listed first), then c, then b skips ranks 1-10 for free and buys 10-14;
    # 25 slots are used and nothing is left to find, so 5 slots are spread by finds.
    assert quotas["b"] >= 20 and quotas["a"] >= 10 and quotas["c"] >= 10
    assert quotas == {"a": 10 + 2, "b": 20 + 1, "c": 10 + 2}


def test_tune_quotas_prefers_hits_per_slot_over_raw_hits() -> None:
    none = np.full((2, 10), -1)
    a, b = none.copy(), none.copy()
    a[:, :10] = np.arange(10)[None, :] + np.array([[0], [100]])  # 10 slots per row
    b[:, :4] = np.arange(50, 54)[None, :] + np.array([[0], [100]])  # 4 slots per row
    hits_a = np.where(np.arange(10) < 3, a, -1)  # 3 hits per row in a's 10
    hits_b = np.where(np.arange(10) < 2, b, -1)  # 2 hits per row in b's 4
    # a: 3 new hits for 10 slots; b: 2 for 4. With room for one purchase, b wins.
    quotas = tune_quotas({"a": a, "b": b}, {"a": hits_a, "b": hits_b}, budget=4, step=10)
    assert quotas == {"a": 0, "b": 10}


def naive_merge(lists: list[ChannelList], budget: int) -> dict[int, list[tuple[int, str]]]:
    """The merge rule written as a plain loop per row: (item, source) in placement order."""
    out: dict[int, list[tuple[int, str]]] = {}
    for row in range(lists[0].top.items.shape[0]):
        entries = []
        for pos, cl in enumerate(lists):
            for r, item in enumerate(cl.top.items[row], start=1):
                if item >= 0:
                    entries.append((r > cl.quota, r / max(cl.quota, 1), pos, item, cl.name))
        placed: list[tuple[int, str]] = []
        for *_, item, name in sorted(entries):
            if item not in {p[0] for p in placed} and len(placed) < budget:
                placed.append((item, name))
        out[row] = placed
    return out


def test_merge_matches_the_rule_written_as_a_loop() -> None:
    rng = np.random.default_rng(7)
    lists = []
    for name, quota in (("a", 5), ("b", 3), ("c", 0), ("d", 8)):
        items = np.stack([rng.choice(30, size=12, replace=False) for _ in range(6)])
        scores = rng.random(items.shape).astype(np.float32)
        gaps = rng.random(items.shape) < 0.15  # short lists
        items[gaps], scores[gaps] = -1, -np.inf
        lists.append(ChannelList(name, TopK(items, scores), quota))
    merged = merge_candidates(lists, budget=15)
    expected = naive_merge(lists, 15)
    for row, group in merged.groupby("row"):
        assert list(zip(group["item"], group["source"].astype(str), strict=True)) == \
            [(int(i), n) for i, n in expected[row]]
        assert group["merge_rank"].tolist() == list(range(1, len(group) + 1))
    # evidence: every channel's rank and score wherever it retrieved the item
    for cl in lists:
        for row, item, r, sc in merged[["row", "item", f"{cl.name}_rank",
                                        f"{cl.name}_score"]].itertuples(index=False):
            where = np.flatnonzero(cl.top.items[row] == item)
            if len(where):
                assert r == where[0] + 1 and sc == pytest.approx(cl.top.scores[row, where[0]])
            else:
                assert pd.isna(r) and np.isnan(sc)
    n = sum(merged[f"{cl.name}_rank"].notna().astype(int) for cl in lists)
    assert (merged["n_channels"] == n).all()


@pytest.mark.parametrize(("items", "scores", "fault"), [
    ([[5, -2, 7]], [[3, 2, 1]], "an item code outside the catalogue"),
    ([[5, -1, 7]], [[3, 2, 1]], "-1 .nothing retrieved. with a score other than -inf"),
    ([[0, 5, 7]], [[np.nan, 2, 1]], r"a NaN or infinite score \(e.g. row 1: item 0, score nan"),
    ([[5, 7, 5]], [[3, 2, 1]], "the same item twice"),
])
def test_an_invalid_channel_row_is_rejected_with_the_channel_named(items, scores,
                                                                     fault) -> None:
    good = TopK(np.array([[1, 2, 3], [1, 2, 3]]), np.ones((2, 3), np.float32))
    bad = TopK(np.array([[1, 2, 3], *items]), np.array([[3, 2, 1], *scores], np.float32))
    with pytest.raises(InvalidTopKError, match=f"^bad channel returned invalid top-k lists: "
                                               f"1 of 2 rows hold {fault}"):
        merge_candidates([ChannelList("good", good, 2), ChannelList("bad", bad, 2)], budget=4)
