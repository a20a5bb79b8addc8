"""Published lists are filled up to top_k from the most used items a user lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.rank import fill_order, final_lists, padded, rows_of


def test_a_short_list_is_filled_with_popular_unseen_items_below_the_ranked_ones() -> None:
    lists = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 13],
                          "channels": ["a", "a", "b", "a"], "score": [0.9, 0.8, 0.7, 0.5],
                          "rank": [1, 2, 3, 1]})
    # popularity: 14 (3 users) > 15 (2) > 10 (1); 16, 17 never used (catalogue order)
    fitted = pd.DataFrame({"user_id": [2, 3, 4, 3, 4, 5], "item_id": [14, 14, 14, 15, 15, 10]})
    items = pd.DataFrame({"item_id": [10, 11, 12, 13, 14, 15, 16, 17]})
    out = padded(lists, fitted, fill_order(fitted, items), 3)
    user2 = out[out["user_id"] == 2]
    # user 2 has 14 and was given 13: the fill is 15 then 10, ranked 2 and 3
    assert user2["item_id"].tolist() == [13, 15, 10]
    assert user2["rank"].tolist() == [1, 2, 3]
    assert user2["channels"].tolist() == ["a", "popularity-fill", "popularity-fill"]
    assert (user2["score"].iloc[1:] < lists["score"].min()).all()
    assert out[out["user_id"] == 1].equals(lists[lists["user_id"] == 1])


def test_a_list_stays_short_only_where_the_catalogue_runs_out() -> None:
    lists = pd.DataFrame({"user_id": [1], "item_id": [10], "channels": ["a"], "score": [1.0],
                          "rank": [1]})
    fitted = pd.DataFrame({"user_id": [1, 1], "item_id": [11, 12]})
    items = pd.DataFrame({"item_id": [10, 11, 12, 13]})
    out = padded(lists, fitted, fill_order(fitted, items), 5)
    assert out["item_id"].tolist() == [10, 13] and out["rank"].tolist() == [1, 2]


def test_a_user_served_alone_is_filled_as_in_the_batch() -> None:
    lists = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 13],
                          "channels": ["a", "a", "a"], "score": [0.9, 0.8, 0.5],
                          "rank": [1, 2, 1]})
    fitted = pd.DataFrame({"user_id": [2, 3, 4, 3], "item_id": [14, 14, 14, 15]})
    order = fill_order(fitted, pd.DataFrame({"item_id": range(10, 18)}))
    batch = padded(lists, fitted, order, 4)
    for user in (1, 2):
        alone = padded(lists[lists["user_id"] == user], fitted[fitted["user_id"] == user],
                       order, 4)
        assert alone.equals(batch[batch["user_id"] == user].reset_index(drop=True))
    first = batch[batch["user_id"] == 1]
    assert (first["score"].iloc[2:] < 0.8).all()  # below the user's own ranked items


def _lists(rng: np.random.Generator, users: np.ndarray, items: int) -> pd.DataFrame:
    """Up to 3 ranked items per user, some users short."""
    rows = []
    for u in users:
        got = rng.choice(items, size=int(rng.integers(1, 4)), replace=False)
        rows += [(u, int(i), "a", 1.0 - r / 10, r + 1) for r, i in enumerate(got)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "channels", "score", "rank"])


def test_final_lists_part_by_part_equal_the_phase_padded_whole(tmp_path: Path) -> None:
    """Each part (whole users) is padded and checked with its own users' history alone:
    the same rows as padding the phase at once, and a fitted item in any part fails."""
    rng = np.random.default_rng(3)
    users = rng.permutation(np.arange(100, 160))
    fitted = pd.DataFrame({"user_id": rng.choice(users, 300), "item_id": rng.integers(0, 30, 300)})
    parts, frames = [], []
    for n, chunk in enumerate(np.array_split(users, 4)):
        lists = _lists(rng, chunk, 30)
        lists = lists.merge(fitted.drop_duplicates().assign(had=True), how="left")
        lists = lists[lists["had"].isna()].drop(columns="had")
        lists["rank"] = (lists.groupby("user_id").cumcount() + 1).astype(np.int32)
        frames.append(lists)
        parts.append(tmp_path / f"part-{n:05d}.parquet")
        lists.to_parquet(parts[-1], index=False)
    order = fill_order(fitted, pd.DataFrame({"item_id": range(30)}))
    whole = padded(pd.concat(frames, ignore_index=True), fitted, order, 5)
    by_part = pd.concat(final_lists(parts, fitted, order, 5), ignore_index=True)
    key = ["user_id", "rank"]
    pd.testing.assert_frame_equal(by_part.sort_values(key, ignore_index=True),
                                  whole.sort_values(key, ignore_index=True))
    assert (by_part.groupby("user_id").size() == 5).all()
    assert pd.concat(final_lists(parts, fitted, None, 5)).shape[0] == sum(map(len, frames))
    seen = fitted.iloc[[7]].assign(channels="a", score=0.0, rank=np.int32(9))
    pd.concat([frames[2], seen]).to_parquet(parts[2], index=False)
    with pytest.raises(AssertionError, match="1 recommendations are items the user already"):
        list(final_lists(parts, fitted, order, 5))


def test_rows_of_finds_every_row_of_the_keys() -> None:
    keys = np.array([1, 1, 2, 4, 4, 4, 7])
    assert rows_of(keys, np.array([4, 9, 1])).tolist() == [3, 4, 5, 0, 1]
    assert rows_of(keys, np.array([], dtype=int)).tolist() == []
