"""Per-user metric values and bootstrap intervals over users.

Per-user values must average to exactly what ``evaluate_lists`` reports (hand case with
visible log2 expressions); intervals are checked on degenerate inputs, against
``scipy.stats.bootstrap`` and for independence from the memory chunking.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from features.interactions import IdIndex
from models.metrics import METRICS
from pipeline import schema as S
from pipeline.evaluation import bootstrap
from pipeline.evaluation.bootstrap import (
    bootstrap_ci,
    bootstrap_cis,
    paired_lift_ci,
    ratio_ci,
    ratio_cis,
)
from pipeline.evaluation.protocol import evaluate_lists, per_user_metric

log2 = np.log2
ITEMS = IdIndex(np.array(list("abcdefgh")))


def lists_frame(lists: dict[object, list[object]]) -> pd.DataFrame:
    rows = [(u, i, r) for u, items in lists.items() for r, i in enumerate(items, start=1)]
    return pd.DataFrame(rows, columns=[S.USER, S.ITEM, S.RANK])


def relevant_frame(relevant: dict[object, list[object]]) -> pd.DataFrame:
    rows = [(u, i) for u, items in relevant.items() for i in items]
    return pd.DataFrame(rows, columns=[S.USER, S.ITEM])


# --- per_user_metric ---------------------------------------------------------------

def test_per_user_mean_matches_evaluate_lists() -> None:
    # user 4 has no list (counts 0), user 9 has a list but nothing relevant (not evaluated),
    # 'zz' is outside the catalogue, user 2 has a duplicated relevant row
    lists = lists_frame({1: list("abcdefg"), 2: list("hgfe"), 3: list("dcba"), 9: list("ab")})
    relevant = relevant_frame({1: ["b", "g", "zz"], 2: ["e", "e", "a"], 3: ["d"], 4: ["a"]})
    expected = evaluate_lists(lists, relevant, ITEMS, ks=[5, 10])
    for metric, k in [("ndcg", 10), ("recall", 5)] + [(m, 5) for m in METRICS]:
        values = per_user_metric(lists, relevant, ITEMS, metric, k)
        assert list(values.index) == [1, 2, 3, 4]
        assert values.mean() == pytest.approx(expected[f"{metric}@{k}"], abs=1e-12)


def test_per_user_ndcg_hand_case() -> None:
    lists = lists_frame({2: list("edf"), 1: list("abc"), 7: list("a")})
    relevant = relevant_frame({1: ["b", "d"], 2: ["d", "f"]})
    values = per_user_metric(lists, relevant, ITEMS, "ndcg", 10)
    assert values.index.name == S.USER
    assert list(values.index) == [1, 2]  # sorted, user 7 has nothing relevant
    expected = [
        (1 / log2(3)) / (1 / log2(2) + 1 / log2(3)),
        (1 / log2(3) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3)),
    ]
    np.testing.assert_allclose(values.to_numpy(), expected, rtol=1e-12)


def test_per_user_unknown_metric_raises() -> None:
    lists, relevant = lists_frame({1: ["a"]}), relevant_frame({1: ["a"]})
    with pytest.raises(ValueError, match="ndcg"):
        per_user_metric(lists, relevant, ITEMS, "auc", 10)


# --- bootstrap_ci ------------------------------------------------------------------

def test_constant_values_give_a_point_interval() -> None:
    ci = bootstrap_ci(np.full(8, 0.25), resamples=50)
    assert ci == {"mean": 0.25, "low": 0.25, "high": 0.25}


def test_interval_agrees_with_scipy() -> None:
    x = np.random.default_rng(0).normal(size=500)
    ci = bootstrap_ci(x, resamples=1000, seed=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=1000, method="percentile",
                          confidence_level=0.95, rng=np.random.default_rng(2)).confidence_interval
    width = ci["high"] - ci["low"]
    assert ci["mean"] == pytest.approx(x.mean())
    assert ci["low"] < ci["mean"] < ci["high"]
    assert abs(ci["low"] - ref.low) < 0.1 * width
    assert abs(ci["high"] - ref.high) < 0.1 * width
    narrow = bootstrap_ci(x, resamples=1000, seed=1, level=0.5)
    assert narrow["high"] - narrow["low"] < 0.5 * width


def test_seed_reproducible() -> None:
    x = np.random.default_rng(3).uniform(size=40)
    assert bootstrap_ci(x, resamples=200, seed=5) == bootstrap_ci(x, resamples=200, seed=5)
    assert bootstrap_ci(x, resamples=200, seed=5) != bootstrap_ci(x, resamples=200, seed=6)


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(4).uniform(size=13)
    whole_means = bootstrap._resampled_means(x, 101, seed=7)
    assert whole_means.shape == (1, 101)
    whole = bootstrap_ci(x, resamples=101, seed=7)
    monkeypatch.setattr(bootstrap, "_MAX_DRAW", 30)  # 2 rows per chunk, last chunk 1 row
    np.testing.assert_array_equal(bootstrap._resampled_means(x, 101, seed=7), whole_means)
    assert bootstrap_ci(x, resamples=101, seed=7) == whole


def test_means_are_numpys_means_of_the_drawn_users() -> None:
    # the resampled means are exactly values[idx].mean(axis=1) over the drawn indices
    x = np.random.default_rng(8).uniform(size=(2, 300))
    idx = np.random.default_rng(9).integers(0, 300, size=(50, 300))
    np.testing.assert_array_equal(bootstrap._resampled_means(x, 50, seed=9),
                                  np.stack([v[idx].mean(axis=1) for v in x]))


def test_batched_intervals_equal_one_call_each() -> None:
    # vectors of one length share a draw; each interval is still what its own call gives
    rng = np.random.default_rng(10)
    vectors = [rng.uniform(size=40), rng.normal(size=40), rng.uniform(size=25),
               rng.uniform(size=40)]
    assert bootstrap_cis(vectors, resamples=200, seed=3) == [
        bootstrap_ci(v, resamples=200, seed=3) for v in vectors]
    a, b = vectors[0], vectors[3]
    lift = paired_lift_ci(a, b, resamples=200, seed=3)
    assert bootstrap_cis([a - b], resamples=200, seed=3)[0] == {
        k: v for k, v in lift.items() if k != "excludes_zero"}
    assert bootstrap_cis([], resamples=200) == []


def test_batched_ratios_equal_one_call_each() -> None:
    rng = np.random.default_rng(11)
    denominator = rng.integers(0, 4, size=60).astype(float)
    numerators = [np.minimum(rng.integers(0, 3, size=60), denominator) for _ in range(3)]
    assert ratio_cis(numerators, denominator, resamples=300, seed=2) == [
        ratio_ci(v, denominator, resamples=300, seed=2) for v in numerators]
    with pytest.raises(ValueError, match="one numerator"):
        ratio_cis([np.zeros(3)], np.ones(4))


def test_invalid_input_raises() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError, match="same user"):
        paired_lift_ci(np.zeros(3), np.zeros(4))


# --- paired_lift_ci ----------------------------------------------------------------

def test_identical_systems_have_zero_lift() -> None:
    x = np.random.default_rng(5).uniform(size=30)
    lift = paired_lift_ci(x, x.copy(), resamples=100)
    assert lift == {"mean": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False}


def test_constant_lift_is_exact() -> None:
    base = np.random.default_rng(6).uniform(size=30)
    lift = paired_lift_ci(base + 0.1, base, resamples=100)
    for key in ("mean", "low", "high"):
        assert lift[key] == pytest.approx(0.1, abs=1e-12)
    assert lift["excludes_zero"] is True


def test_pairing_narrows_the_interval_for_correlated_systems() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=300)
    system = base + 0.05 + 0.1 * rng.normal(size=300)
    lift = paired_lift_ci(system, base, resamples=500)
    width = lift["high"] - lift["low"]
    sys_ci, base_ci = bootstrap_ci(system, resamples=500), bootstrap_ci(base, resamples=500)
    assert width < (sys_ci["high"] - sys_ci["low"]) + (base_ci["high"] - base_ci["low"])
    # resampling the two systems independently would give ~1.4x one arm's width
    assert width < 0.5 * (base_ci["high"] - base_ci["low"])
    assert lift["excludes_zero"] is True
