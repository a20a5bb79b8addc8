"""``eval/per_user.parquet``: every system's metrics per request, written for any id type.

Recommendation rows are keyed by user id and search rows by case id (integers). A log
with text user ids and searches put both in one ``request`` column, which Parquet could
not hold: evaluate stopped at its last write, after every model had been trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.interactions import IdIndex
from pipeline import schema as S
from pipeline.evaluation.protocol import UserHits, user_hits
from pipeline.io import read_table, write_table
from pipeline.stages.evaluate import per_user_frame, stored

ITEMS = IdIndex(np.array([10, 11, 12]))


def hits(requests: list, first_hit: list[bool]) -> UserHits:
    """Each request's list 10, 11, 12 with item 10 (a hit at rank 1) or 12 (rank 3)
    relevant."""
    lists = pd.DataFrame({S.USER: np.repeat(requests, 3), S.ITEM: [10, 11, 12] * len(requests),
                          S.RANK: [1, 2, 3] * len(requests)})
    relevant = pd.DataFrame({S.USER: requests,
                             S.ITEM: [10 if h else 12 for h in first_hit]})
    return user_hits(lists, relevant, ITEMS, 10)


@pytest.mark.parametrize(("users", "expected"), [
    (pd.array(["u1", "u2"], dtype="string"), ["u1", "u2", "0", "1"]),
    (np.array([7, 8]), [7, 8, 0, 1]),
])
def test_per_user_table_round_trips_with_search_cases(tmp_path: Path, users,
                                                     expected: list) -> None:
    found = {"final": hits(list(users), [True, False]),
             "search:final": hits([0, 1], [False, True])}
    fitting = pd.DataFrame({S.USER: pd.Series(users).repeat([2, 5]).to_numpy()})
    table = per_user_frame(found, 10, fitting)
    write_table(stored(table), tmp_path / "per_user.parquet")
    back = read_table(tmp_path / "per_user.parquet")
    assert back["request"].tolist() == expected
    assert back["system"].tolist() == ["final", "final", "search:final", "search:final"]
    third = 1 / np.log2(4)  # a single relevant item at rank 3
    assert back["ndcg@10"].tolist() == pytest.approx([1.0, third, third, 1.0])
    assert back["fitted_events"].tolist()[:2] == [2.0, 5.0]
    assert back["fitted_events"].iloc[2:].isna().all()


def test_text_user_ids_beside_case_ids_need_the_stored_form(tmp_path: Path) -> None:
    """What evaluate wrote before ``stored``: the mixed column is refused."""
    found = {"final": hits(["u1"], [True]), "search:final": hits([0], [True])}
    table = per_user_frame(found, 10, pd.DataFrame({S.USER: ["u1"]}))
    with pytest.raises((pa.ArrowTypeError, pa.ArrowInvalid)):
        write_table(table, tmp_path / "per_user.parquet")
