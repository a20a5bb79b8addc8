"""``check_top_k``: every fault a channel's lists can carry is named with its channel, a
count and an example, where the recall stage retrieves (dense, chunked, search and
sparse channels alike); valid lists pass untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.recall_data import RecallData
from models import base
from models.base import (
    HeldOut,
    InvalidTopKError,
    RecallChannel,
    SearchChannel,
    SparseScoreChannel,
    TopK,
    check_top_k,
    seen_mask,
    stored_rows,
    top_k,
    top_k_shared,
    top_k_sparse,
)
from pipeline.stages.recall import Requests, retrieve
from tests.conftest import recall_data_from_matrix

# user 0 has items 0 and 1, user 1 has item 2, user 2 has nothing
DENSE = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def data() -> RecallData:
    return recall_data_from_matrix(DENSE)


def lists(items: list[list[int]], scores: list[list[float]]) -> TopK:
    return TopK(np.array(items), np.array(scores, np.float32))


GOOD = ([[2, 3, -1], [0, 4, 1], [-1, -1, -1]], [[5, 5, -np.inf], [3, 2, 1], [-np.inf] * 3])


def test_valid_lists_pass(data: RecallData) -> None:
    check_top_k(lists(*GOOD), data, np.arange(3), True, "fine")
    check_top_k(lists(*GOOD), None, None, False, "fine", ordered=False)


@pytest.mark.parametrize(("row", "scores", "fault"), [
    ([4, 5, -1], [3, 2, -np.inf], r"an item code outside the catalogue \(e\.g\. user code 2: "
                                  r"item 5, score 2\.0\)"),
    ([4, -2, -1], [3, 2, -np.inf], "an item code outside the catalogue"),
    ([4, -1, -1], [3, 2, -np.inf], "-1 .nothing retrieved. with a score other than -inf"),
    ([4, 3, -1], [np.nan, 2, -np.inf], r"a NaN or infinite score \(e\.g\. user code 2: item 4, "
                                       r"score nan\)"),
    ([4, 3, -1], [np.inf, 2, -np.inf], "a NaN or infinite score"),
    ([3, 4, 3], [3, 2, 1], r"the same item twice \(e\.g\. user code 2: item 3, score 3\.0\)"),
    ([4, -1, 3], [3, -np.inf, 2], "a real item after -1 padding"),
    ([4, 3, -1], [1, 2, -np.inf], r"scores not sorted best first \(e\.g\. user code 2: item 3"),
])
def test_each_fault_is_named_with_a_count_and_an_example(data: RecallData, row, scores,
                                                         fault: str) -> None:
    items, values = GOOD
    bad = lists([*items[:2], row], [*values[:2], scores])
    with pytest.raises(InvalidTopKError, match=f"^bad channel returned invalid top-k lists: "
                                               f"1 of 3 rows hold {fault}"):
        check_top_k(bad, data, np.arange(3), True, "bad")


def test_a_seen_item_is_named_only_when_seen_items_are_excluded(data: RecallData) -> None:
    top = lists([[1, 3], [2, 0], [0, 1]], [[2, 1], [2, 1], [2, 1]])
    with pytest.raises(InvalidTopKError, match=r"2 of 3 rows hold an item from the user's "
                                               r"fitted history \(e\.g\. user code 0: item 1"):
        check_top_k(top, data, np.arange(3), True, "bad")
    check_top_k(top, data, np.arange(3), False, "fine")


def test_every_fault_of_a_list_is_reported_at_once(data: RecallData) -> None:
    top = lists([[0, 3], [2, 2], [1, 4]], [[np.nan, 1], [2, 1], [2, 1]])
    with pytest.raises(InvalidTopKError) as caught:
        check_top_k(top, data, np.arange(3), True, "bad")
    message = str(caught.value)
    assert "NaN or infinite score" in message and "the same item twice" in message
    assert "2 of 3 rows hold an item from the user's fitted history" in message


def test_lists_of_the_wrong_shape_are_refused(data: RecallData) -> None:
    with pytest.raises(InvalidTopKError, match=r"items \(3, 3\) and scores \(3, 2\) for 3"):
        check_top_k(TopK(np.full((3, 3), -1), np.full((3, 2), -np.inf, np.float32)), data,
                    np.arange(3), True, "bad")
    with pytest.raises(InvalidTopKError, match="for 2 rows"):
        check_top_k(lists(*GOOD), data, np.arange(2), True, "bad")


@pytest.mark.parametrize("k", [2, 6])
@pytest.mark.parametrize("nan", [np.nan, -np.nan])  # x86 makes 0 * inf a negative NaN
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_ranks_a_nan_first_and_keeps_it_for_the_check_to_see(k: int, nan: float,
                                                                    dtype: type) -> None:
    scores = np.array([[1.0, nan, 3.0, -np.inf, 2.0]], dtype)
    stored = sp.csr_matrix((np.array([1.0, nan, 3.0, 2.0], dtype), [0, 1, 2, 4], [0, 4]),
                           shape=(1, 5))
    for top in (top_k(scores, k), top_k_sparse(stored, k)):
        assert top.items[0].tolist() == [1, 2, 4, 0, -1, -1][:k]
        np.testing.assert_array_equal(top.scores[0], [np.nan, 3, 2, 1, -np.inf, -np.inf][:k])


def test_seen_mask_gives_an_unknown_user_no_history() -> None:
    data = recall_data_from_matrix(np.array([[0, 0, 1], [1, 1, 0]]))  # code -1 is not 1
    items = np.array([[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(seen_mask(data, np.array([-1, 1]), items),
                                  [[False, False, False], [True, True, False]])


def test_seen_mask_binary_search_equals_the_lookup_table(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    data = recall_data_from_matrix((rng.random((30, 50)) < 0.2).astype(float))
    users = np.r_[rng.integers(0, 30, 40), -1]
    items = np.where(rng.random((41, 12)) < 0.1, -1, rng.integers(0, 50, (41, 12)))
    table = seen_mask(data, users, items)  # 41 x 50 cells fit the table
    monkeypatch.setattr(base, "CHUNK_CELLS", 10)
    np.testing.assert_array_equal(seen_mask(data, users, items), table)
    assert table.any() and not table[-1].any()


def test_top_k_shared_ranks_each_users_group_and_gives_the_groupless_nothing(
        data: RecallData) -> None:
    scores = np.array([[5.0, 4, 3, 2, 1], [1, 2, 3, 4, 5]], np.float32)  # two groups
    users = np.array([0, 1, 2])
    got = top_k_shared(scores, np.array([1, 0, -1]), data, users, 2, exclude_seen=True)
    np.testing.assert_array_equal(got.items, [[4, 3], [0, 1], [-1, -1]])  # seen left out
    np.testing.assert_array_equal(got.scores, [[5, 4], [5, 4], [-np.inf, -np.inf]])
    nobody = top_k_shared(scores, np.array([-1, -1, -1]), data, users, 2, exclude_seen=True)
    np.testing.assert_array_equal(nobody.items, np.full((3, 2), -1))
    assert np.isneginf(nobody.scores).all()


def test_stored_rows_read_the_entries_row_indexing_gives() -> None:
    rng = np.random.default_rng(6)
    matrix = sp.random(40, 30, density=0.2, format="csr", rng=rng)
    matrix.data[::7] = 0  # explicit zeros stay stored, as indexing keeps them
    for rows in (rng.integers(0, 40, 25), np.array([3]), np.zeros(0, np.int64),
                 np.array([5, 5, 0])):
        owner, at = stored_rows(matrix, rows)
        picked = matrix[rows]
        np.testing.assert_array_equal(owner, np.repeat(np.arange(len(rows)),
                                                       np.diff(picked.indptr)))
        np.testing.assert_array_equal(matrix.indices[at], picked.indices)
        np.testing.assert_array_equal(matrix.data[at], picked.data)


class NanScores(RecallChannel, SearchChannel):
    """Dense scores with a NaN for item 3, for users and queries alike."""

    name = "nan_dense"

    def __init__(self) -> None:
        self.params = {}

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> NanScores:
        return self

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        scores = np.tile(np.arange(data.n_items, dtype=np.float32), (len(users), 1))
        scores[:, 3] = np.nan
        return scores

    def score_queries(self, data: RecallData, queries: list[str]) -> np.ndarray:
        return self.score(data, np.arange(len(queries)))


class NanOnSeen(SparseScoreChannel):
    """Sparse scores NaN on the user's own items: the preference channel's old fault
    (a seen item, score NaN, ranked first)."""

    name = "nan_sparse"

    def __init__(self) -> None:
        self.params = {}

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> NanOnSeen:
        return self

    def score_sparse(self, data: RecallData, users: np.ndarray) -> sp.csr_matrix:
        scores = sp.csr_matrix(np.ones((len(users), data.n_items), np.float32))
        return scores + data.history[users] * np.float32(np.nan)


def requests(queries: list[str] | None = None) -> Requests:
    return Requests(pd.DataFrame({"user_id": range(3)}), np.arange(3),
                    None if queries is None else np.array(queries, dtype=object))


@pytest.mark.parametrize(("queries", "k"), [(None, 4), (None, 2), (["a", "b", "c"], 4)])
def test_the_stage_stops_a_dense_channel_on_a_nan_score(data: RecallData,
                                                        queries: list[str] | None,
                                                        k: int) -> None:
    with pytest.raises(InvalidTopKError, match=r"^nan_dense channel returned invalid top-k "
                                               r"lists: .*rows hold a NaN or infinite score"):
        retrieve(NanScores(), data, requests(queries), k)


def test_the_stage_stops_a_sparse_channel_on_a_nan_score_for_a_seen_item(
        data: RecallData) -> None:
    with pytest.raises(InvalidTopKError, match=r"^nan_sparse channel returned invalid top-k "
                       r"lists: 2 of 3 rows hold a NaN or infinite score \(e\.g\. user code 0: "
                       r"item 0, score nan\).*2 of 3 rows hold an item from the user's fitted"):
        retrieve(NanOnSeen(), data, requests(), 4)
