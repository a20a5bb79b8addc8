"""A served request's newer events join one user's history, log and clock, nobody else's."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.interactions import IdIndex, tie_order
from features.recall_data import build_recall_data
from tests.conftest import recall_data_from_matrix


def test_events_join_one_users_history_in_time_order() -> None:
    data = recall_data_from_matrix([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    now = data.now
    newer = data.with_events(1, np.array([4, 3]), np.array([now + 20, now + 10]))
    assert sorted(newer.history[1].indices) == [1, 3, 4]
    assert (newer.history[[0, 2]] != data.history[[0, 2]]).nnz == 0
    log = newer.log
    assert log[log["user"] == 1]["item"].tolist() == [1, 3, 4]  # by time, newest last
    assert log[["user", "ts", "item"]].equals(
        log.sort_values(["user", "ts", "item"])[["user", "ts", "item"]])
    assert len(log) == len(data.log) + 2 and newer.now == now + 20
    assert data.history[1].nnz == 1 and len(data.log) == 5  # the original is untouched
    again = newer.with_events(1, np.array([1]), np.array([now + 30]))
    assert again.history[1].nnz == 3 and again.history.max() == 1  # stays binary


def test_events_give_the_data_a_rebuild_on_the_longer_log_gives() -> None:
    """Spliced into the log and history, the events leave what ``build_recall_data``
    makes of the fitting log with them appended: a query column missing for them, ties
    in time in the same order (``tie_order``), then old events before new."""
    rng = np.random.default_rng(3)
    n = 60
    fit = pd.DataFrame({"user_id": rng.integers(0, 6, n), "item_id": rng.integers(0, 9, n),
                        "weight": np.float32(1.0),
                        "ts": pd.to_datetime(rng.integers(0, 50, n), unit="s"),
                        "query": pd.Series(rng.choice(["red", "blue", None], n), dtype="str")})
    fit = fit.drop_duplicates(["user_id", "item_id"])
    items, users = pd.DataFrame({"item_id": range(9)}), pd.DataFrame({"user_id": range(7)})
    data = build_recall_data(fit, items, users, np.arange(7))
    for user, new_items, new_ts in ((2, [4, 8, 4], [10, 60, 10]), (6, [1], [70]),
                                    (0, [3, 5], [0, 49])):
        events = pd.DataFrame({"user_id": user, "item_id": new_items, "weight": np.float32(1.0),
                               "ts": pd.to_datetime(new_ts, unit="s")})
        rebuilt = build_recall_data(pd.concat([fit, events], ignore_index=True), items, users,
                                    np.arange(7))
        code = data.user_index.encode(np.array([user]))[0]
        got = data.with_events(code, data.item_index.encode(np.array(new_items)),
                               np.array(new_ts))
        pd.testing.assert_frame_equal(got.log, rebuilt.log)
        np.testing.assert_array_equal(got.history.toarray(), rebuilt.history.toarray())
        assert (got.now, got.span) == (rebuilt.now, rebuilt.span)
    # several users' events at once (served requests answered together): one splice
    events = pd.DataFrame({"user_id": [6, 2, 0, 2], "item_id": [1, 4, 3, 8], "ts": [70, 10, 0, 60]})
    rebuilt = build_recall_data(pd.concat([fit, events.assign(
        weight=np.float32(1.0), ts=pd.to_datetime(events["ts"], unit="s"))], ignore_index=True),
        items, users, np.arange(7))
    got = data.with_events(data.user_index.encode(events["user_id"]),
                           data.item_index.encode(events["item_id"]), events["ts"].to_numpy())
    pd.testing.assert_frame_equal(got.log, rebuilt.log)
    np.testing.assert_array_equal(got.history.toarray(), rebuilt.history.toarray())
    assert got.now == rebuilt.now
    # ... and each user's clock and span are those of a rebuild with their events alone
    for user in (6, 2, 0, 1):
        mine = events[events["user_id"] == user].assign(
            weight=np.float32(1.0), ts=lambda e: pd.to_datetime(e["ts"], unit="s"))
        alone = build_recall_data(pd.concat([fit, mine], ignore_index=True), items, users,
                                  np.arange(7))
        code = data.user_index.encode(np.array([user]))
        assert (got.now_of(code)[0], got.span_of(code)[0]) == (alone.now, alone.span), user
    assert got.now_of(code)[0] == data.now != got.now  # user 1 had no events


def test_a_groups_data_holds_its_users_rows_as_the_whole_data_would() -> None:
    """``for_users`` keeps the asked users' rows of the log and history (with their
    events after ``with_events``, as the whole data would have them), leaves every
    other user's empty, and keeps the whole log's clock and span."""
    rng = np.random.default_rng(5)
    n = 80
    fit = pd.DataFrame({"user_id": rng.integers(0, 8, n), "item_id": rng.integers(0, 9, n),
                        "weight": np.float32(1.0),
                        "ts": pd.to_datetime(rng.integers(100, 150, n), unit="s"),
                        "query": pd.Series(rng.choice(["red", None], n), dtype="str")})
    fit = fit.drop_duplicates(["user_id", "item_id"])
    data = build_recall_data(fit, pd.DataFrame({"item_id": range(9)}),
                             pd.DataFrame({"user_id": range(9)}), np.arange(9))
    group = data.user_index.encode(np.array([6, 2, 8]))  # 8 has no fitted events
    users, items, ts = group[[0, 0, 2]], np.array([1, 7, 3]), np.array([160, 90, 170])
    whole = data.with_events(users, items, ts)
    got = data.for_users(group).with_events(users, items, ts)
    log, want = got.log, whole.log[whole.log["user"].isin(group)].reset_index(drop=True)
    pd.testing.assert_frame_equal(log, want)
    kept = np.isin(np.arange(data.n_users), group)
    np.testing.assert_array_equal(got.history.toarray()[kept], whole.history.toarray()[kept])
    assert got.history[~kept].nnz == 0 and got.history.shape == whole.history.shape
    assert (got.now, got.span, got.first) == (whole.now, whole.span, whole.first) == (
        170, 170 - 90, 90)
    # each user on their own clock: 6 clicked at 160 and 90, 2 not at all, 8 at 170
    np.testing.assert_array_equal(got.now_of(group), [160, data.now, 170])
    np.testing.assert_array_equal(got.span_of(group), [160 - 90, data.span, 170 - data.first])
    np.testing.assert_array_equal(whole.span_of(group), got.span_of(group))
    alone = data.for_users(group)
    assert (alone.span, alone.now) == (data.span, data.now) and len(alone.log) < len(data.log)
    empty = build_recall_data(fit.iloc[:0], pd.DataFrame({"item_id": range(9)}),
                              pd.DataFrame({"user_id": range(9)}), np.arange(9))
    assert empty.span == 0
    clicked = empty.with_events(0, np.array([2, 4]), np.array([200, 230]))
    assert (clicked.now, clicked.span) == (230, 30)  # the first event is the first click
    assert clicked.span_of(np.array([0, 1])).tolist() == [30, 0]  # 1 still has no events


def test_codes_decode_to_the_ids_in_their_own_type() -> None:
    strings, numbers = IdIndex(pd.Series(["b", "a", "c", "a"], dtype="str")), IdIndex(
        np.array([30, 10, 20]))
    codes = np.array([2, 0, 0, -1])  # -1 reads the last id, as numpy indexing does
    decoded = strings.decode(codes)
    assert list(decoded) == ["c", "b", "b", "c"] and decoded.dtype == "str"
    assert pd.DataFrame({"item_id": decoded})["item_id"].dtype == "str"
    assert isinstance(numbers.decode(codes), np.ndarray)
    assert numbers.decode(codes).tolist() == [20, 30, 30, 20]


def test_events_at_one_time_are_in_an_order_of_each_users_own() -> None:
    """A day-stamped log: a user's events of one day came in item id order, so "the
    latest items" (the sequence channel's input and target) were the highest ids. Now
    each user's own fixed order (``tie_order``): not the ids', not the file's, not the
    same for every user, and the same on every build."""
    rng = np.random.default_rng(0)
    fit = pd.DataFrame({"user_id": np.repeat(np.arange(40), 12),
                        "item_id": np.concatenate([rng.choice(30, 12, replace=False)
                                                   for _ in range(40)]),
                        "weight": np.float32(1.0), "ts": pd.Timestamp("2024-01-05")})
    items, users = pd.DataFrame({"item_id": range(30)}), pd.DataFrame({"user_id": range(40)})
    def orders(frame: pd.DataFrame) -> list[tuple[int, ...]]:
        """Each user's items in the log's order, users by raw id (codes follow the fit)."""
        data = build_recall_data(frame, items, users)
        ids = data.user_index.decode(data.log["user"].to_numpy())
        by_user = data.log.assign(user_id=ids).groupby("user_id", sort=True)["item"]
        return [tuple(group) for _, group in by_user]

    log = orders(fit)
    assert sum(order == tuple(sorted(order)) for order in log) <= 1
    first = [order.index(min(order)) for order in log]
    assert len(set(first)) > 5  # where the lowest id falls differs from user to user
    assert orders(fit.sample(frac=1, random_state=2)) == log
    keys = tie_order(np.array([1, 1, 2], np.uint64), np.array([5, 6, 5], np.uint64))
    assert len(set(keys.tolist())) == 3 and keys.dtype == np.uint64
