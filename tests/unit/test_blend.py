"""The rank blend: request ranks, candidate NDCG against sklearn, the fusion or one
component."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from models import blend
from models.blend import (
    MIN_GAIN,
    RRF_OFFSET,
    blend_scores,
    candidate_ndcg,
    clear_lift,
    fit_blend,
    reciprocal_rank,
    request_rank,
)


def test_request_rank_is_per_group_best_first_with_missing_last() -> None:
    groups = np.array([5, 5, 5, 2, 2])
    got = request_rank(groups, np.array([0.2, np.nan, 0.9, 1.0, 3.0]))
    np.testing.assert_array_equal(got, [2, 3, 1, 2, 1])



def test_request_rank_equals_pandas_first_rank_with_ties_and_gaps() -> None:
    """Against pandas' grouped rank (method "first": ties in row order), on interleaved
    groups with many ties and NaN, which rank after every score of their group."""
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 30, 2000)
    scores = rng.integers(0, 5, 2000).astype(float)
    scores[rng.random(2000) < 0.2] = np.nan
    want = pd.Series(np.where(np.isnan(scores), -np.inf, scores)).groupby(groups).rank(
        ascending=False, method="first").to_numpy()
    np.testing.assert_array_equal(request_rank(groups, scores), want)

def test_reciprocal_rank_gives_nothing_for_a_missing_rank() -> None:
    np.testing.assert_allclose(reciprocal_rank(np.array([1.0, np.nan, 5.0])),
                               [1 / (RRF_OFFSET + 1), 0.0, 1 / (RRF_OFFSET + 5)])


def test_candidate_ndcg_matches_a_hand_value_and_sklearn() -> None:
    # one group: positives at positions 2 and 3 of 3 -> (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    got = candidate_ndcg(np.zeros(3), np.array([3.0, 2.0, 1.0]), np.array([0, 1, 1]))
    assert got == pytest.approx((1 / np.log2(3) + 0.5) / (1 + 1 / np.log2(3)))
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 15)
    scores = rng.random(600)
    labels = (rng.random(600) < 0.2).astype(int)
    labels[::15] = 1  # every group has a positive
    expected = np.mean([ndcg_score([labels[groups == g]], [scores[groups == g]], k=10)
                        for g in range(40)])
    assert candidate_ndcg(groups, scores, labels, k=10) == pytest.approx(expected, abs=1e-12)


def reference_ndcg(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                   k: int = 10) -> float:
    values = reference_group_ndcg(groups, scores, labels, k)
    return float(values.mean()) if len(values) else 0.0


def reference_group_ndcg(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                         k: int = 10) -> np.ndarray:
    """The formula ``candidate_ndcg`` had before it went through ``ndcg_at_k``, kept as an
    independent implementation: pandas sorts and group sums of gain / log2(position + 2);
    an unranked (NaN) row sorts last and gains nothing, but counts in the ideal. One value
    per group with a positive, by group id."""
    frame = pd.DataFrame({"g": groups, "s": np.nan_to_num(scores, nan=-np.inf),
                          "y": labels.astype(np.float64), "row": np.arange(len(groups)),
                          "ranked": ~np.isnan(scores)})
    frame = frame[frame.groupby("g")["y"].transform("max") > 0]
    if frame.empty:
        return np.zeros(0)
    ordered = frame.sort_values(["g", "s", "row"], ascending=[True, False, True])
    position = ordered.groupby("g", sort=False).cumcount().to_numpy()
    earned = ordered["y"].to_numpy() * ordered["ranked"].to_numpy()
    gain = np.where(position < k, earned / np.log2(position + 2.0), 0.0)
    dcg = pd.Series(gain).groupby(ordered["g"].to_numpy(), sort=False).sum()
    ideal = frame.sort_values(["g", "y"], ascending=[True, False])
    ipos = ideal.groupby("g", sort=False).cumcount().to_numpy()
    igain = np.where(ipos < k, ideal["y"].to_numpy() / np.log2(ipos + 2.0), 0.0)
    idcg = pd.Series(igain).groupby(ideal["g"].to_numpy(), sort=False).sum()
    return (dcg / idcg.reindex(dcg.index)).sort_index().to_numpy()


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unsorted group ids of uneven sizes (some of one row, some without a positive),
    coarse scores with ties, NaN and infinite scores."""
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(1, 60))
    groups = np.repeat(rng.permutation(n_groups) * 3 + 1, rng.integers(1, 30, n_groups))
    n = len(groups)
    labels = (rng.random(n) < 0.3 * rng.random()).astype(int)
    scores = np.round(rng.random(n), int(rng.integers(1, 3)))
    scores[rng.random(n) < 0.1] = np.nan
    scores[rng.random(n) < 0.05] = -np.inf
    return groups, scores, labels


@pytest.mark.parametrize("seed", range(40))
def test_candidate_ndcg_equals_the_reference_formula(seed: int) -> None:
    groups, scores, labels = random_case(seed)
    for k in (1, 3, 10, 50):
        got, expected = candidate_ndcg(groups, scores, labels, k), reference_ndcg(
            groups, scores, labels, k)
        assert np.isclose(got, expected, rtol=0, atol=1e-12), (k, got, expected)


def test_a_system_that_ranks_nothing_gets_no_credit_for_the_row_order() -> None:
    """A channel that retrieved none of the candidates (NaN ranks: e.g. geography on a log
    without regions) once scored the merge order's NDCG, since its rows tie in row order,
    and the blend picked it as the strongest channel."""
    groups, labels = np.zeros(4), np.array([1, 0, 0, 1])
    assert candidate_ndcg(groups, np.full(4, np.nan), labels) == 0.0
    # ranked the second positive only, at its rank 1 (the other rows are unranked)
    partial = candidate_ndcg(groups, np.array([np.nan, np.nan, np.nan, 1.0]), labels)
    assert partial == pytest.approx(1.0 / (1.0 + 1.0 / np.log2(3.0)))


def test_candidate_ndcg_without_any_positive_is_zero() -> None:
    assert candidate_ndcg(np.array([0, 0, 1]), np.array([1.0, 2.0, 3.0]), np.zeros(3)) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_fit_blend_picks_the_weights_the_reference_formula_picks(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(100 + seed)
    groups = np.repeat(np.arange(50), rng.integers(2, 20, 50))
    labels = (rng.random(len(groups)) < 0.15).astype(int)
    ranks = {}
    for name, lift in zip("abcd", (0.4, 0.3, 0.1, 0.0), strict=True):
        scores = np.round(rng.random(len(groups)) + lift * labels, 1)
        scores[rng.random(len(groups)) < 0.1] = np.nan
        ranks[name] = request_rank(groups, scores)
    weights, alone = fit_blend(ranks, groups, labels)
    monkeypatch.setattr(blend, "group_ndcg", reference_group_ndcg)
    ref_weights, ref_alone = fit_blend(ranks, groups, labels)
    assert weights == ref_weights
    assert alone.keys() == ref_alone.keys()
    assert all(np.isclose(alone[n], ref_alone[n], rtol=0, atol=1e-12) for n in alone)


def test_groups_without_a_positive_are_left_out_of_the_mean() -> None:
    groups = np.array([0, 0, 1, 1])
    got = candidate_ndcg(groups, np.array([1.0, 0.0, 1.0, 0.0]), np.array([1, 0, 0, 0]))
    assert got == 1.0


def complementary_ranks(n_groups: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """a ranks each group's positive (row 0) first in two groups of three and second
    otherwise, b the other way round, and b's first row is never a's second (nor the
    reverse), so a + b put the positive first everywhere without a tie. c ranks it third,
    after two rows a and b both rank third or lower: a + b + c still put it first."""
    rng = np.random.default_rng(seed)
    ranks = {name: np.zeros(n_groups * size) for name in "abc"}
    for g in range(n_groups):
        rows = slice(g * size, (g + 1) * size)
        first, second = ("a", "b") if g % 3 else ("b", "a")
        ranks[first][rows] = np.r_[1, 2, rng.permutation(np.arange(3, size + 1))]
        rest = rng.permutation(np.arange(3, size + 1))
        ranks[second][rows] = np.r_[2, rest[0], 1, rest[1:]]
        late = rng.permutation(np.arange(4, size + 1))
        ranks["c"][rows] = np.r_[3, late[:2], 1, 2, late[2:]]
    return ranks


def test_complementary_components_are_fused_alike() -> None:
    n_groups, size = 60, 10
    groups = np.repeat(np.arange(n_groups), size)
    labels = np.tile(np.r_[1, np.zeros(size - 1, int)], n_groups)  # row 0 of each group
    ranks = complementary_ranks(n_groups, size, 1)
    pair = {name: ranks[name] for name in "ab"}
    weights, alone = fit_blend(pair, groups, labels)
    assert weights == {"a": 1.0, "b": 1.0} and alone["a"] > alone["b"]
    assert alone["blend"] == 1.0
    # c adds nothing that a + b lack (a greedy search of weights left it out); the fusion
    # weighs every component alike
    weights, alone = fit_blend(ranks, groups, labels)
    assert weights == {"a": 1.0, "b": 1.0, "c": 1.0} and alone["c"] < alone["b"]
    assert alone["blend"] == 1.0


def test_a_component_that_clearly_beats_the_fusion_is_the_blend_alone() -> None:
    """a always ranks the positive first; b and c are noise that pull it down."""
    rng = np.random.default_rng(2)
    n_groups, size = 80, 10
    groups = np.repeat(np.arange(n_groups), size)
    labels = np.tile(np.r_[1, np.zeros(size - 1, int)], n_groups)
    ranks = {"a": np.tile(np.arange(1.0, size + 1), n_groups),
             "b": np.concatenate([rng.permutation(size) + 1.0 for _ in range(n_groups)]),
             "c": np.concatenate([rng.permutation(size) + 1.0 for _ in range(n_groups)])}
    weights, alone = fit_blend(ranks, groups, labels)
    assert weights == {"a": 1.0}
    assert alone["blend"] == alone["a"] == pytest.approx(1.0)
    assert candidate_ndcg(groups, blend_scores(ranks, {n: 1.0 for n in "abc"}), labels) < 1.0


def test_one_component_is_the_blend_and_the_blend_is_scored_as_served() -> None:
    """A channel that ranked none of a group's rows scores 0 alone (no credit for merge
    order), but the blend reports what ``blend_scores`` serves: those rows in merge
    order, here the positive first."""
    groups, labels = np.zeros(3), np.array([1, 0, 0])
    weights, alone = fit_blend({"channel:x": np.full(3, np.nan)}, groups, labels)
    assert weights == {"channel:x": 1.0}
    assert alone["channel:x"] == 0.0 and alone["blend"] == 1.0
    ranker = np.array([3.0, 1.0, 2.0])  # the positive last
    weights, alone = fit_blend({"ltr:r": ranker, "channel:x": np.full(3, np.nan)}, groups,
                               labels)
    assert weights == {"ltr:r": 1.0, "channel:x": 1.0}  # one request: never clear
    assert alone["blend"] == alone["ltr:r"] == pytest.approx(0.5)


def three_row_groups(ranks_a: list[int], ranks_b: list[int], count: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` groups of three rows (the positive first), ranked so by a and b."""
    return np.tile(np.array(ranks_a, float), count), np.tile(np.array(ranks_b, float), count)


@pytest.mark.parametrize(("scale", "fused"), [(1, True), (10, False)])
def test_a_component_replaces_the_fusion_only_when_it_clearly_beats_it(scale: int,
                                                                        fused: bool) -> None:
    """In 11 groups a ranks the positive first and the fusion a + b second; in 9 the
    other way round. a alone lifts the fusion by 2/20 of (1 - 1/log2 3), 0.037, far above
    MIN_GAIN, but +0.369 in 11 requests and -0.369 in 9, a standard error of 0.084 (z
    0.44): noise, so the fusion stays. Ten times the requests in the same shares give z
    1.4: a alone is the blend."""
    up_a, up_b = three_row_groups([1, 2, 3], [3, 1, 2], 11 * scale)
    down_a, down_b = three_row_groups([2, 1, 3], [1, 3, 2], 9 * scale)
    groups = np.repeat(np.arange(20 * scale), 3)
    labels = np.tile([1, 0, 0], 20 * scale)
    ranks = {"a": np.r_[up_a, down_a], "b": np.r_[up_b, down_b]}
    lift = 2 / 20 * (1 - 1 / np.log2(3))
    fusion = candidate_ndcg(groups, blend_scores(ranks, {"a": 1.0, "b": 1.0}), labels)
    weights, alone = fit_blend(ranks, groups, labels)
    assert alone["a"] > alone["b"] and lift > MIN_GAIN
    assert alone["a"] == pytest.approx(fusion + lift)
    assert weights == ({"a": 1.0, "b": 1.0} if fused else {"a": 1.0})
    assert alone["blend"] == pytest.approx(fusion if fused else alone["a"])


def test_clear_lift_needs_a_mean_of_one_standard_error_and_two_requests() -> None:
    assert clear_lift(np.array([0.1, 0.1, 0.1]))  # no spread: any mean over MIN_GAIN
    assert not clear_lift(np.array([MIN_GAIN / 2] * 3))
    assert not clear_lift(np.array([0.5]))
    # mean 0.1, standard deviation 0.2: one standard error at n = 4 exactly
    lift = np.array([0.1 - 0.2 * np.sqrt(3 / 4), 0.1 + 0.2 * np.sqrt(3 / 4)] * 2)
    assert lift.std(ddof=1) == pytest.approx(0.2)
    assert clear_lift(lift * 1.001 + 1e-6) and not clear_lift(lift - 1e-3)
