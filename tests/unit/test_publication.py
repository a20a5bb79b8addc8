"""Published lists are filled up to top_k from the most used items a user lacks."""

from __future__ import annotations

import pandas as pd

from pipeline.stages.rank import fill_order, padded


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
