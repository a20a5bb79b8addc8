"""Top-k metrics and the evaluation protocol.

Hand-computed cases (expected values written as visible log2 expressions), degenerate
cases, and parity with independent implementations: ``sklearn.metrics.ndcg_score`` for
NDCG and naive Python loops over raw ids for every metric.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from features.interactions import IdIndex
from models.metrics import (
    METRICS,
    coverage_at_k,
    get_metric,
    hit_rate_at_k,
    hits_from_keys,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)
from pipeline import schema as S
from pipeline.evaluation.protocol import evaluate_lists, ranked_matrix

T, F = True, False
log2 = np.log2


def lists_frame(lists: dict[object, list[object]], rank_col: str = S.RANK) -> pd.DataFrame:
    """One row per (user, item) with 1-based ranks in list order."""
    rows = [(u, i, r) for u, items in lists.items() for r, i in enumerate(items, start=1)]
    return pd.DataFrame(rows, columns=[S.USER, S.ITEM, rank_col])


def relevant_frame(relevant: dict[object, list[object]]) -> pd.DataFrame:
    rows = [(u, i) for u, items in relevant.items() for i in items]
    return pd.DataFrame(rows, columns=[S.USER, S.ITEM])


# ---------------------------------------------------------------- hand-computed cases
# user A: hits at ranks 1 and 3 of 5, three relevant items
# user B: hits at ranks 2 and 5 of 5, two relevant items
HITS = np.array([[T, F, T, F, F],
                 [F, T, F, F, T]])
N_REL = np.array([3, 2])

HAND = {
    ("ndcg", 5): [
        (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4)),
        (1 / log2(3) + 1 / log2(6)) / (1 / log2(2) + 1 / log2(3)),
    ],
    ("ndcg", 3): [
        (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4)),
        (1 / log2(3)) / (1 / log2(2) + 1 / log2(3)),
    ],
    ("ndcg", 1): [(1 / log2(2)) / (1 / log2(2)), 0.0],
    ("recall", 5): [2 / 3, 2 / 2],
    ("recall", 3): [2 / 3, 1 / 2],
    ("recall", 1): [1 / 3, 0 / 2],
    ("hit_rate", 5): [1.0, 1.0],
    ("hit_rate", 1): [1.0, 0.0],
    ("precision", 5): [2 / 5, 2 / 5],
    ("precision", 3): [2 / 3, 1 / 3],
    ("precision", 1): [1 / 1, 0 / 1],
    ("mrr", 5): [1 / 1, 1 / 2],
    ("mrr", 1): [1 / 1, 0.0],
    # sum of precision@i at each hit, over min(n_relevant, k)
    ("map", 5): [(1 / 1 + 2 / 3) / 3, (1 / 2 + 2 / 5) / 2],
    ("map", 3): [(1 / 1 + 2 / 3) / 3, (1 / 2) / 2],
    ("map", 1): [(1 / 1) / 1, 0.0],
}


@pytest.mark.parametrize(("name", "k"), sorted(HAND))
def test_hand_computed(name: str, k: int) -> None:
    got = get_metric(name).fn(HITS, N_REL, k)
    np.testing.assert_allclose(got, HAND[(name, k)], rtol=0, atol=1e-12)


def test_every_metric_has_a_hand_computed_case() -> None:
    assert {name for name, _ in HAND} == set(METRICS)


def test_hand_computed_through_evaluate_lists() -> None:
    """The same two users given as ranked ids: the protocol reproduces the matrix cases."""
    items = IdIndex(np.arange(100, 120))
    lists = lists_frame({"a": [100, 101, 102, 103, 104], "b": [110, 111, 112, 113, 114]})
    relevant = relevant_frame({"a": [100, 102, 119], "b": [111, 114]})
    got = evaluate_lists(lists, relevant, items, [1, 3, 5])
    assert got["users"] == 2
    for (name, k), expected in HAND.items():
        assert got[f"{name}@{k}"] == pytest.approx(np.mean(expected), abs=1e-12), (name, k)


def test_idcg_truncated_at_min_of_relevant_and_k() -> None:
    """10 relevant items, 3 hits at the top of a top-3 list: a perfect top-3."""
    hits = np.array([[T, T, T]])
    n_rel = np.array([10])
    assert ndcg_at_k(hits, n_rel, 3)[0] == pytest.approx(1.0, abs=1e-12)
    assert map_at_k(hits, n_rel, 3)[0] == pytest.approx(1.0, abs=1e-12)
    assert recall_at_k(hits, n_rel, 3)[0] == pytest.approx(3 / 10)
    # one relevant item found at rank 2: IDCG is one hit at rank 1, not more
    hits = np.array([[F, T, F]])
    n_rel = np.array([1])
    assert ndcg_at_k(hits, n_rel, 3)[0] == pytest.approx((1 / log2(3)) / (1 / log2(2)))
    # five relevant, k=2: IDCG is two hits
    hits = np.array([[F, T, F]])
    n_rel = np.array([5])
    assert ndcg_at_k(hits, n_rel, 2)[0] == pytest.approx(
        (1 / log2(3)) / (1 / log2(2) + 1 / log2(3)))


def test_lists_shorter_than_k() -> None:
    """Two ranks only, k=5: no hits past the end; precision still divides by k."""
    hits = np.array([[T, T], [F, T]])
    n_rel = np.array([2, 4])
    k = 5
    np.testing.assert_allclose(ndcg_at_k(hits, n_rel, k), [
        1.0,
        (1 / log2(3)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4) + 1 / log2(5)),
    ])
    np.testing.assert_allclose(recall_at_k(hits, n_rel, k), [2 / 2, 1 / 4])
    np.testing.assert_allclose(precision_at_k(hits, n_rel, k), [2 / 5, 1 / 5])
    np.testing.assert_allclose(hit_rate_at_k(hits, n_rel, k), [1.0, 1.0])
    np.testing.assert_allclose(mrr_at_k(hits, n_rel, k), [1.0, 1 / 2])
    np.testing.assert_allclose(map_at_k(hits, n_rel, k), [(1 + 1) / 2, (1 / 2) / 4])


def test_precision_divides_by_k_not_list_length() -> None:
    items = IdIndex(np.arange(10))
    got = evaluate_lists(lists_frame({1: [0]}), relevant_frame({1: [0]}), items, [1, 10])
    assert got["precision@1"] == pytest.approx(1 / 1)
    assert got["precision@10"] == pytest.approx(1 / 10)


# ---------------------------------------------------------------- degenerate cases
@pytest.mark.parametrize("k", [1, 3, 5])
def test_perfect_ranking_scores_one(k: int) -> None:
    """Relevant items first, n_relevant <= k: ndcg, recall, mrr, map, hit rate are 1."""
    n_rel = np.minimum([1, 2, 3, 5], k)  # n_relevant <= k, where recall can reach 1
    hits = np.arange(5)[None, :] < n_rel[:, None]
    for name in ("ndcg", "recall", "mrr", "map", "hit_rate"):
        np.testing.assert_allclose(get_metric(name).fn(hits, n_rel, k), 1.0, err_msg=name)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_no_hit_scores_zero(name: str) -> None:
    hits = np.zeros((3, 5), bool)
    n_rel = np.array([1, 4, 9])
    np.testing.assert_array_equal(get_metric(name).fn(hits, n_rel, 5), 0.0)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_no_recommendations_scores_zero(name: str) -> None:
    """A zero-width hit matrix (nobody got a list) is all zeros, not an error."""
    hits = np.zeros((2, 0), bool)
    n_rel = np.array([1, 3])
    np.testing.assert_array_equal(get_metric(name).fn(hits, n_rel, 5), 0.0)


def test_user_without_recommendations_counts_zero_in_the_mean() -> None:
    """User 2 has relevant items but no list: averaged in as 0, not dropped."""
    items = IdIndex(np.arange(10))
    lists = lists_frame({1: [3, 4], 9: [0, 1]})  # user 9 has no relevant items: not evaluated
    relevant = relevant_frame({1: [3], 2: [5, 6]})
    got = evaluate_lists(lists, relevant, items, [2])
    assert got["users"] == 2
    for name in ("ndcg", "recall", "hit_rate", "mrr", "map"):
        assert got[f"{name}@2"] == pytest.approx((1.0 + 0.0) / 2), name
    assert got["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    # the unevaluated user's items do not count towards coverage
    assert got["coverage@2"] == pytest.approx(2 / 10)


def test_users_evaluated_are_those_with_relevant_items() -> None:
    items = IdIndex(np.arange(10))
    lists = lists_frame({1: [3], 2: [4]})
    got = evaluate_lists(lists, relevant_frame({1: [3]}), items, [1])
    assert got["users"] == 1
    assert got["ndcg@1"] == 1.0


def test_duplicate_relevant_rows_count_once() -> None:
    items = IdIndex(np.arange(10))
    got = evaluate_lists(lists_frame({1: [3, 0]}), relevant_frame({1: [3, 3, 4]}), items, [2])
    assert got["recall@2"] == pytest.approx(1 / 2)


# ---------------------------------------------------------------- protocol details
def test_relevant_item_outside_catalogue_is_relevant_but_never_hit() -> None:
    items = IdIndex(np.arange(5))
    lists = lists_frame({1: [2, 99, 3]})  # 99 is not in the catalogue either
    relevant = relevant_frame({1: [2, 99]})
    got = evaluate_lists(lists, relevant, items, [3])
    assert got["recall@3"] == pytest.approx(1 / 2)
    assert got["ndcg@3"] == pytest.approx((1 / log2(2)) / (1 / log2(2) + 1 / log2(3)))
    assert got["precision@3"] == pytest.approx(1 / 3)
    assert got["map@3"] == pytest.approx((1 / 1) / 2)
    assert got["coverage@3"] == pytest.approx(2 / 5)  # items 2 and 3; 99 is not counted


def test_string_ids() -> None:
    items = IdIndex(pd.Series(["x", "y", "z"], dtype="string[pyarrow]"))
    lists = lists_frame({"u": ["z", "x"]})
    relevant = relevant_frame({"u": ["x"]})
    got = evaluate_lists(lists, relevant, items, [2])
    assert got["ndcg@2"] == pytest.approx((1 / log2(3)) / (1 / log2(2)))


def test_duplicate_ranks_per_user_raise() -> None:
    items = IdIndex(np.arange(10))
    lists = pd.DataFrame({S.USER: [1, 1, 1], S.ITEM: [2, 3, 4], S.RANK: [1, 2, 2]})
    with pytest.raises(ValueError, match="duplicate ranks"):
        evaluate_lists(lists, relevant_frame({1: [3]}), items, [3])


def test_duplicate_ranks_raise_even_for_unknown_items() -> None:
    items = IdIndex(np.arange(10))
    lists = pd.DataFrame({S.USER: [1, 1], S.ITEM: [50, 3], S.RANK: [1, 1]})
    with pytest.raises(ValueError, match="duplicate ranks"):
        evaluate_lists(lists, relevant_frame({1: [3]}), items, [1])


def test_zero_based_ranks_are_refused_not_dropped() -> None:
    items = IdIndex(np.arange(10))
    lists = pd.DataFrame({S.USER: [1, 1], S.ITEM: [3, 4], S.RANK: [0, 1]})
    with pytest.raises(ValueError, match="start at 1"):
        evaluate_lists(lists, relevant_frame({1: [3]}), items, [2])


def test_same_rank_for_different_users_is_fine() -> None:
    items = IdIndex(np.arange(10))
    lists = lists_frame({1: [2, 3], 2: [3, 2]})
    got = evaluate_lists(lists, relevant_frame({1: [2], 2: [2]}), items, [2])
    assert got["mrr@2"] == pytest.approx((1 / 1 + 1 / 2) / 2)


def test_custom_rank_column_and_ranks_beyond_depth_are_ignored() -> None:
    items = IdIndex(np.arange(10))
    lists = lists_frame({1: [5, 6, 7, 2]}, rank_col="merge_rank")
    got = evaluate_lists(lists, relevant_frame({1: [2]}), items, [3], rank_col="merge_rank")
    assert got["hit_rate@3"] == 0.0
    got = evaluate_lists(lists, relevant_frame({1: [2]}), items, [4], rank_col="merge_rank")
    assert got["mrr@4"] == pytest.approx(1 / 4)


def test_ranked_matrix_places_items_by_rank() -> None:
    items = IdIndex(np.array([10, 11, 12]))
    users = IdIndex(np.array([7, 8]))
    lists = pd.DataFrame({S.USER: [8, 7, 7, 8], S.ITEM: [10, 12, 11, 99], S.RANK: [3, 2, 1, 1]})
    np.testing.assert_array_equal(ranked_matrix(lists, users, items, 3),
                                  [[1, 2, -1], [-1, -1, 0]])


# ---------------------------------------------------------------- ties
def test_ranks_are_used_as_given_tie_breaking_belongs_to_the_ranker() -> None:
    """Two items with the same score: the rank column decides, never the score or row order."""
    items = IdIndex(np.arange(5))
    relevant = relevant_frame({1: [4]})
    first = pd.DataFrame({S.USER: [1, 1], S.ITEM: [3, 4], S.SCORE: [0.5, 0.5], S.RANK: [1, 2]})
    swapped = first.assign(**{S.RANK: [2, 1]})
    got_first = evaluate_lists(first, relevant, items, [2])
    got_swapped = evaluate_lists(swapped, relevant, items, [2])
    assert got_first["mrr@2"] == pytest.approx(1 / 2)
    assert got_swapped["mrr@2"] == pytest.approx(1 / 1)
    assert got_first["ndcg@2"] == pytest.approx((1 / log2(3)) / (1 / log2(2)))
    # row order of the table is irrelevant: only the rank column counts
    reordered = first.iloc[::-1].reset_index(drop=True)
    assert evaluate_lists(reordered, relevant, items, [2]) == got_first


# ---------------------------------------------------------------- coverage
def test_coverage_hand_computed() -> None:
    lists = np.array([[0, 1, 2], [1, 3, -1], [-1, -1, -1]])
    assert coverage_at_k(lists, 1, 10) == pytest.approx(len({0, 1}) / 10)
    assert coverage_at_k(lists, 2, 10) == pytest.approx(len({0, 1, 3}) / 10)
    assert coverage_at_k(lists, 3, 10) == pytest.approx(len({0, 1, 2, 3}) / 10)
    assert coverage_at_k(lists, 3, 4) == pytest.approx(1.0)
    assert coverage_at_k(np.full((2, 3), -1), 3, 10) == 0.0
    assert coverage_at_k(np.zeros((0, 3), np.int64), 3, 0) == 0.0


# ---------------------------------------------------------------- hits from keys
def test_hits_from_keys_hand_computed() -> None:
    n_items = 5
    top = np.array([[2, 0, 4], [1, -1, -1], [3, 3, 0]])
    # row 0 likes items 0 and 4, row 1 likes item 1, row 2 likes nothing it was shown
    relevant = np.array([0 * n_items + 0, 0 * n_items + 4, 1 * n_items + 1, 2 * n_items + 1])
    expected = np.array([[F, T, T], [T, F, F], [F, F, F]])
    np.testing.assert_array_equal(hits_from_keys(top, relevant, n_items), expected)


def test_ndcg_through_hits_from_keys_by_hand() -> None:
    # how the sequence channel scores held-out items: row 0 relevant {1, 4}, ranked
    # [4, 0, 1] -> (1 + 1/log2(4)) / (1 + 1/log2(3)); row 1 relevant {2}, nothing ranked -> 0
    top = np.array([[4, 0, 1], [-1, -1, -1]])
    relevant = np.array([0 * 5 + 1, 0 * 5 + 4, 1 * 5 + 2])
    got = ndcg_at_k(hits_from_keys(top, relevant, 5), np.array([2, 1]), 3)
    np.testing.assert_allclose(got, [(1 + 1 / log2(4)) / (1 + 1 / log2(3)), 0.0])


def test_hits_from_keys_never_hits_an_empty_cell() -> None:
    # -1 in row 1 encodes to 1 * 5 - 1 = 4, the key of (row 0, item 4): still no hit
    top = np.array([[0, 1], [-1, -1]])
    hits = hits_from_keys(top, np.array([4], np.int64), 5)
    assert not hits.any()
    assert hits_from_keys(np.zeros((0, 3), np.int64), np.array([], np.int64), 5).shape == (0, 3)


def test_hits_from_keys_is_numpys_isin() -> None:
    # the binary search finds exactly the cells np.isin finds, keys past either end included
    rng = np.random.default_rng(0)
    top = rng.integers(-1, 50, size=(40, 30))
    relevant = np.unique(rng.integers(0, 40 * 50, size=300))
    keys = np.arange(40)[:, None] * 50 + top
    np.testing.assert_array_equal(hits_from_keys(top, relevant, 50),
                                  np.isin(keys, relevant) & (top >= 0))
    assert not hits_from_keys(top, np.array([], np.int64), 50).any()


def test_get_metric_fails_loudly_and_declares_direction() -> None:
    with pytest.raises(KeyError, match="unknown metric 'ndgc'"):
        get_metric("ndgc")
    assert all(metric.higher_is_better for metric in METRICS.values())


# ---------------------------------------------------------------- parity
def random_lists(seed: int, n_users: int = 300, n_items: int = 40, depth: int = 25,
                 ) -> tuple[pd.DataFrame, pd.DataFrame, IdIndex, np.ndarray, np.ndarray]:
    """Continuous scores (no ties), each user's list the top of their scores; binary
    relevance with at least one relevant item per user and some users without a list."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n_users, n_items))
    relevance = rng.random((n_users, n_items)) < rng.uniform(0.02, 0.4, size=(n_users, 1))
    relevance[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    order = np.argsort(-scores, axis=1)[:, :depth]
    lengths = rng.integers(0, depth + 1, n_users)  # some lists shorter than depth, some empty
    user_ids = np.arange(n_users) * 7 + 1000  # raw ids unlike codes
    item_ids = np.arange(n_items) * 3 + 500
    lists = pd.DataFrame([(user_ids[u], item_ids[order[u, r]], r + 1)
                          for u in range(n_users) for r in range(lengths[u])],
                         columns=[S.USER, S.ITEM, S.RANK])
    lists = lists.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    rel_u, rel_i = np.nonzero(relevance)
    relevant = pd.DataFrame({S.USER: user_ids[rel_u], S.ITEM: item_ids[rel_i]})
    return lists, relevant, IdIndex(item_ids), scores, relevance


def naive_metrics(lists: pd.DataFrame, relevant: pd.DataFrame, k: int) -> dict[str, float]:
    """Plain Python loops over raw ids, an independent reading of each definition."""
    rel_sets: dict[object, set[object]] = {}
    for u, i in zip(relevant[S.USER], relevant[S.ITEM], strict=True):
        rel_sets.setdefault(u, set()).add(i)
    ranked: dict[object, list[tuple[int, object]]] = {}
    for u, i, r in zip(lists[S.USER], lists[S.ITEM], lists[S.RANK], strict=True):
        ranked.setdefault(u, []).append((r, i))
    sums = dict.fromkeys(("ndcg", "recall", "hit_rate", "precision", "mrr", "map"), 0.0)
    for u, rel in rel_sets.items():
        top = [i for _, i in sorted(ranked.get(u, []))][:k]
        found = [i in rel for i in top]
        n_hits = sum(found)
        dcg = sum(1 / np.log2(pos + 2) for pos, hit in enumerate(found) if hit)
        idcg = sum(1 / np.log2(pos + 2) for pos in range(min(len(rel), k)))
        sums["ndcg"] += dcg / idcg
        sums["recall"] += n_hits / len(rel)
        sums["hit_rate"] += float(n_hits > 0)
        sums["precision"] += n_hits / k
        rr = 0.0
        for pos, hit in enumerate(found):
            if hit:
                rr = 1 / (pos + 1)
                break
        sums["mrr"] += rr
        ap, seen = 0.0, 0
        for pos, hit in enumerate(found):
            if hit:
                seen += 1
                ap += seen / (pos + 1)
        sums["map"] += ap / min(len(rel), k)
    return {name: total / len(rel_sets) for name, total in sums.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_naive_loops(seed: int) -> None:
    lists, relevant, items, _, _ = random_lists(seed)
    ks = [1, 2, 5, 10, 25]
    got = evaluate_lists(lists, relevant, items, ks)
    for k in ks:
        for name, expected in naive_metrics(lists, relevant, k).items():
            assert got[f"{name}@{k}"] == pytest.approx(expected, rel=1e-12, abs=1e-12), (name, k)


@pytest.mark.parametrize("k", [1, 3, 5, 10, 40])
def test_ndcg_parity_with_sklearn(k: int) -> None:
    """Binary gain on random continuous scores: the top-k list alone determines NDCG@k,
    so ours on top-k lists must equal sklearn's on all scores."""
    n_users, n_items = 400, 40
    lists, relevant, items, scores, relevance = random_lists(
        seed=10 + k, n_users=n_users, n_items=n_items, depth=n_items)
    full = lists_frame({u: list(items.ids[np.argsort(-scores[row])])
                        for row, u in enumerate(np.arange(n_users) * 7 + 1000)})
    expected = ndcg_score(relevance.astype(np.float64), scores, k=k)
    got = evaluate_lists(full, relevant, items, [k])
    assert got[f"ndcg@{k}"] == pytest.approx(expected, abs=1e-9)
    # and the metric function alone, per user, on the hit matrix built from the top k
    top = np.argsort(-scores, axis=1)[:, :k]
    hits = np.take_along_axis(relevance, top, axis=1)
    per_user = ndcg_at_k(hits, relevance.sum(axis=1), k)
    sk_per_user = [ndcg_score(relevance[u : u + 1].astype(np.float64), scores[u : u + 1], k=k)
                   for u in range(50)]
    np.testing.assert_allclose(per_user[:50], sk_per_user, rtol=0, atol=1e-9)
    assert per_user.mean() == pytest.approx(expected, abs=1e-9)
