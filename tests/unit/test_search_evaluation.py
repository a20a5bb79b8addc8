import numpy as np
import pandas as pd
import pytest

from pipeline import schema as S
from pipeline.evaluation.search import query_segments, search_report, zero_result_rate


@pytest.fixture
def cases() -> pd.DataFrame:  # keyed by user_id as the metric code expects (case ids)
    return pd.DataFrame({S.USER: [0, 1, 2, 3], S.QUERY: ["Red  Shoes", "blue", "red shoes",
                                                         "green"],
                         S.ITEM: [10, 11, 12, 13]})


def fitting() -> pd.DataFrame:
    queries = ["red shoes"] * 3 + ["RED SHOES", "blue", None, None]
    return pd.DataFrame({S.USER: range(7), S.ITEM: range(7),
                         S.EVENT: ["search"] * 5 + ["click"] * 2,
                         S.QUERY: pd.Series(queries, dtype="string")})


def test_a_query_is_head_when_typed_often_enough_before(cases) -> None:
    got = query_segments(cases, fitting(), head_min_searches=4)  # "red shoes": 4 times
    assert got.tolist() == ["head", "tail", "head", "tail"]
    assert got.index.tolist() == [0, 1, 2, 3]
    assert query_segments(cases, fitting(), 1).tolist() == ["head", "head", "head", "tail"]


def test_zero_result_rate_counts_cases_without_any_item(cases) -> None:
    lists = pd.DataFrame({S.USER: [0, 0, 2], S.ITEM: [10, 5, 7], S.RANK: [1, 2, 1]})
    assert zero_result_rate(lists, cases) == 0.5


def test_search_report_splits_each_systems_ndcg_by_segment(cases) -> None:
    lists = {"a": pd.DataFrame({S.USER: [0, 1, 2], S.ITEM: [10, 11, 99], S.RANK: [1, 1, 1]})}
    per_case = {"a": pd.Series([1.0, 1.0, 0.0, 0.0], index=pd.Index([0, 1, 2, 3]))}
    got = search_report(lists, per_case, cases, fitting(), 4, k=10, resamples=50, seed=0)
    assert got["cases"] == {"head": 2, "tail": 2}
    assert got["zero_result_rate"] == {"a": 0.25}
    head, tail = got["ndcg@10"]["head"]["a"], got["ndcg@10"]["tail"]["a"]
    assert head[0] == pytest.approx(0.5) and tail[0] == pytest.approx(0.5)
    assert head[1] <= 0.5 <= head[2] and np.isfinite(tail).all()
