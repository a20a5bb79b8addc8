"""The rank blend: request ranks, candidate NDCG against sklearn, greedy weights."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from models.blend import (
    RRF_OFFSET,
    blend_scores,
    candidate_ndcg,
    fit_blend,
    reciprocal_rank,
    request_rank,
)


def test_request_rank_is_per_group_best_first_with_missing_last() -> None:
    groups = np.array([5, 5, 5, 2, 2])
    got = request_rank(groups, np.array([0.2, np.nan, 0.9, 1.0, 3.0]))
    np.testing.assert_array_equal(got, [2, 3, 1, 2, 1])


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


def test_groups_without_a_positive_are_left_out_of_the_mean() -> None:
    groups = np.array([0, 0, 1, 1])
    got = candidate_ndcg(groups, np.array([1.0, 0.0, 1.0, 0.0]), np.array([1, 0, 0, 0]))
    assert got == 1.0


def test_blend_keeps_the_best_component_and_adds_one_that_helps() -> None:
    """a ranks the positive first in two groups of three and second otherwise, b the
    other way round, c is noise: the blend should use a and b, beat both, leave out c."""
    rng = np.random.default_rng(1)
    n_groups, size = 60, 10
    groups = np.repeat(np.arange(n_groups), size)
    labels = np.tile(np.r_[1, np.zeros(size - 1, int)], n_groups)  # row 0 of each group
    ranks = {name: np.zeros(n_groups * size) for name in "abc"}
    for g in range(n_groups):
        rows = slice(g * size, (g + 1) * size)
        first, second = ("a", "b") if g % 3 else ("b", "a")
        ranks[first][rows] = np.r_[1, rng.permutation(np.arange(2, size + 1))]
        ranks[second][rows] = np.r_[2, rng.permutation(np.r_[1, np.arange(3, size + 1)])]
        ranks["c"][rows] = rng.permutation(size) + 1.0
    weights, alone = fit_blend(ranks, groups, labels)
    assert set(weights) == {"a", "b"} and alone["a"] > alone["b"] > alone["c"]
    assert alone["blend"] == pytest.approx(1.0)
    blended = blend_scores(ranks, weights)
    assert candidate_ndcg(groups, blended, labels) == pytest.approx(alone["blend"])
