"""A served request's newer events join one user's history, log and clock, nobody else's."""

from __future__ import annotations

import numpy as np

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
