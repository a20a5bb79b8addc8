"""The LightGBM ranker: group bookkeeping, the RankNet objective, and the four objectives
on a planted data set checked with sklearn's NDCG, plus files, determinism and columns.

The planted set: per group of 20 candidates, label 1 for the top 2 of a noisy linear
function of three features; two more features are pure noise. A random ordering gets
NDCG@10 of about 0.4 there, so every objective must clear it by a wide margin.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from models.ranker import (
    OBJECTIVES,
    FoldEnsemble,
    Ranker,
    binned,
    cross_fit,
    group_sizes,
    pairwise_objective,
    ranknet_pairs,
    refit,
    training_rows,
)
from pipeline.schema import DataError
from pipeline.stages.train_rank import assign_folds

SIGNAL = ["s0", "s1", "s2"]
NOISE = ["n0", "n1"]
FAST = {"rounds": 60, "early_stopping": 10, "learning_rate": 0.1, "num_leaves": 7}


def planted(n_groups: int, size: int = 20, seed: int = 0,
            noise_only: bool = False) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_groups * size
    x = pd.DataFrame(rng.normal(size=(n, 5)), columns=SIGNAL + NOISE)
    utility = x["s0"] + 0.6 * x["s1"] - 0.8 * x["s2"] + 0.3 * rng.normal(size=n)
    if noise_only:
        utility = pd.Series(rng.normal(size=n))
    groups = np.repeat(np.arange(n_groups) * 7 + 3, size)  # ids need not be 0..G-1
    rank = utility.groupby(groups).rank(ascending=False, method="first").to_numpy()
    return x, (rank <= 2).astype(np.int64), groups


def mean_ndcg(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Independent check: sklearn's NDCG@10 per group, averaged."""
    sizes = group_sizes(groups)
    cuts = np.cumsum(sizes)[:-1]
    return float(np.mean([ndcg_score(y[None], s[None], k=10)
                          for y, s in zip(np.split(labels, cuts), np.split(scores, cuts),
                                          strict=True)]))


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
    return {"train": planted(200, seed=0), "valid": planted(60, seed=1)}


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, Ranker]:
    return {obj: Ranker(obj, FAST, seed=3, threads=1).fit(*data["train"], valid=data["valid"])
            for obj in OBJECTIVES}


def test_group_sizes_counts_runs_and_rejects_split_groups() -> None:
    assert group_sizes(np.array([5, 5, 5, 2, 9, 9])).tolist() == [3, 1, 2]
    assert group_sizes(np.array(["u", "u", "v"])).tolist() == [2, 1]
    assert group_sizes(np.array([], np.int64)).tolist() == []
    with pytest.raises(ValueError, match="group id 5 reappears at row 4"):
        group_sizes(np.array([5, 5, 2, 9, 5, 2]))


def test_ranknet_pairs_match_a_loop_over_groups() -> None:
    labels = np.array([0, 2, 1, 2, 0, 1, 1, 0, 3])
    sizes = np.array([5, 1, 3])  # 2 x 3 + 1 x 2, none, 1 x 2 + 1 x 1
    got = set(zip(*ranknet_pairs(labels, sizes), strict=True))
    want = set()
    for lo, hi in itertools.pairwise(np.r_[0, np.cumsum(sizes)]):
        want |= {(i, j) for i in range(lo, hi) for j in range(lo, hi) if labels[i] > labels[j]}
    assert got == want and len(want) == 8 + 3
    assert len(ranknet_pairs(labels, sizes)[0]) == len(want)  # no duplicates either
    with pytest.raises(ValueError, match="lambdarank"):
        ranknet_pairs(labels, sizes, max_pairs=9)


def test_pairwise_gradient_and_hessian_match_finite_differences() -> None:
    labels = np.array([1, 0, 0, 2, 1, 0, 1])
    sizes = np.array([3, 4])
    pi, pj = ranknet_pairs(labels, sizes)

    def loss(s: np.ndarray) -> float:  # written out per pair, as RankNet defines it
        return sum(np.log1p(np.exp(-(s[i] - s[j]))) for i, j in zip(pi, pj, strict=True))

    s = np.random.default_rng(0).normal(size=len(labels))
    grad, hess = pairwise_objective(pi, pj, len(labels))(s, None)
    eps = 1e-4
    for k in range(len(s)):
        e = np.zeros_like(s)
        e[k] = eps
        assert grad[k] == pytest.approx((loss(s + e) - loss(s - e)) / (2 * eps), abs=1e-7)
        second = (loss(s + e) - 2 * loss(s) + loss(s - e)) / eps**2
        assert hess[k] == pytest.approx(second, abs=1e-4)
    assert np.all(hess > 0)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_learns_the_planted_ranking(objective, data, fitted) -> None:
    x, y, g = data["valid"]
    ranker = fitted[objective]
    random_ndcg = mean_ndcg(y, np.random.default_rng(9).random(len(y)), g)
    model_ndcg = mean_ndcg(y, ranker.predict(x), g)
    assert random_ndcg < 0.5
    assert model_ndcg > random_ndcg + 0.3, (objective, model_ndcg, random_ndcg)
    assert ranker.predict(x).dtype == np.float64
    assert len(ranker.history) >= ranker.best_iteration > 0
    # LightGBM's own valid NDCG@10 at the kept iteration is the one sklearn measures
    assert ranker.history[ranker.best_iteration - 1] == pytest.approx(model_ndcg, abs=0.01)
    gains = ranker.importance()
    assert list(gains.values()) == sorted(gains.values(), reverse=True)
    assert set(gains) == set(SIGNAL + NOISE)
    assert next(iter(gains)) in SIGNAL
    assert min(gains[f] for f in SIGNAL) > max(gains[f] for f in NOISE), gains


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_save_load_round_trip(objective, data, fitted, tmp_path: Path) -> None:
    x = data["valid"][0]
    ranker = fitted[objective]
    ranker.save(tmp_path)
    assert (tmp_path / "model.txt").read_text().startswith("tree")
    back = Ranker.load(tmp_path)
    assert np.array_equal(back.predict(x), ranker.predict(x))
    assert (back.objective, back.best_iteration, back.history, back.feature_names) == \
        (objective, ranker.best_iteration, ranker.history, ranker.feature_names)
    assert back.importance() == ranker.importance()


def test_same_seed_same_scores_and_columns_are_picked_by_name(data) -> None:
    x, y, g = data["train"]
    params = {**FAST, "rounds": 15}
    a = Ranker("lambdarank", params, seed=1).fit(x, y, g).predict(x)
    b = Ranker("lambdarank", params, seed=1).fit(x, y, g).predict(x)
    c = Ranker("lambdarank", params, seed=2).fit(x, y, g).predict(x)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # feature_fraction draws from the seed
    ranker = Ranker("lambdarank", params, seed=1).fit(x, y, g)
    shuffled = x[NOISE[::-1] + SIGNAL[::-1]].assign(extra=1.0)
    assert np.array_equal(ranker.predict(shuffled), a)
    assert ranker.best_iteration == 15 and ranker.history == []
    with pytest.raises(ValueError, match="s1"):
        ranker.predict(x.drop(columns="s1"))


def test_early_stopping_on_a_noise_valid_set(data) -> None:
    valid = planted(60, seed=5, noise_only=True)
    ranker = Ranker("lambdarank", {**FAST, "rounds": 200}, seed=0).fit(*data["train"],
                                                                      valid=valid)
    assert ranker.best_iteration < 200
    assert len(ranker.history) == ranker.best_iteration + 10  # stopped 10 rounds after it
    assert ranker.history[ranker.best_iteration - 1] == max(ranker.history)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="rank_xendcg"):
        Ranker("ranknet")
    with pytest.raises(ValueError, match="n_estimators"):
        Ranker(params={"n_estimators": 10})
    with pytest.raises(RuntimeError, match="not fitted"):
        Ranker().predict(pd.DataFrame({"a": [1.0]}))


@pytest.mark.parametrize("objective", ["lambdarank", "pairwise"])
def test_cross_fit_scores_each_row_with_the_fold_that_never_saw_it(objective: str,
                                                                   tmp_path: Path) -> None:
    x, y, g = planted(90, seed=4)
    fold = (np.unique(g, return_inverse=True)[1] % 3)
    ensemble, oof = cross_fit(objective, x, y, g, fold, FAST, seed=1)
    assert len(ensemble.rankers) == 3
    assert len({r.best_iteration for r in ensemble.rankers}) == 1  # stopped together
    for f, ranker in enumerate(ensemble.rankers):
        held = fold == f
        np.testing.assert_array_equal(oof[held], ranker.predict(x[held]))
        other = ensemble.rankers[(f + 1) % 3].predict(x[held])
        assert not np.allclose(oof[held], other)
    assert mean_ndcg(y, oof, g) > 0.8  # out-of-fold, yet far above random (~0.4)
    np.testing.assert_allclose(ensemble.predict(x),
                               np.mean([r.predict(x) for r in ensemble.rankers], axis=0))
    ensemble.save(tmp_path / "e")
    np.testing.assert_array_equal(FoldEnsemble.load(tmp_path / "e").predict(x),
                                  ensemble.predict(x))
    assert list(ensemble.importance())[0] in SIGNAL


def test_training_rows_keep_every_positive_and_a_seeded_share_of_the_rest() -> None:
    labels = (np.random.default_rng(0).random(30_000) < 0.1).astype(float)
    keep = training_rows(labels, 0.25, seed=3)
    assert keep[labels > 0].all()
    assert abs(keep[labels == 0].mean() - 0.25) < 0.01
    np.testing.assert_array_equal(keep, training_rows(labels, 0.25, seed=3))
    assert not np.array_equal(keep, training_rows(labels, 0.25, seed=4))
    assert training_rows(labels, 1.0, seed=3).all()
    with pytest.raises(ValueError, match="share"):
        training_rows(labels, 0.0, seed=3)


def test_cross_fit_learns_only_from_train_rows_and_scores_every_row() -> None:
    x, y, g = planted(90, seed=4)
    fold = np.unique(g, return_inverse=True)[1] % 3
    _, oof = cross_fit("lambdarank", x, y, g, fold, FAST, seed=1,
                       train_rows=training_rows(y, 0.3, seed=1))
    assert mean_ndcg(y, oof, g) > 0.8  # a third of the negatives still learn the ranking
    _, blind = cross_fit("lambdarank", x, y, g, fold, FAST, seed=1, train_rows=y == 0)
    assert np.ptp(blind) == 0  # no positive to learn from: every held-out row scores alike


def test_a_refit_on_one_binned_set_matches_a_fit_on_the_same_rows() -> None:
    """``refit`` trains on a subset of the Dataset the cross-fit binned, with the rows
    and group sizes of that subset: the same model as a fit of those rows alone binned
    with the same edges, and every round kept."""
    x, y, g = planted(150, seed=3)
    rows = np.flatnonzero(training_rows(y, 0.5, 0))
    data = binned(x, y, g)
    cross_fit("lambdarank", x, y, g, g % 3, FAST, seed=1, data=data)  # bins `data`
    ranker = refit("lambdarank", data, y, g, rows, 7, FAST, seed=1)
    alone = lgb.Dataset(x.iloc[rows], label=y[rows], group=group_sizes(g[rows]),
                        reference=data)  # the subset's rows, the full set's bin edges
    direct = Ranker("lambdarank", {**FAST, "rounds": 7, "early_stopping": 0}, seed=1
                    ).fit_dataset(alone, y[rows], group_sizes(g[rows]), list(x.columns))
    assert ranker.best_iteration == 7 and ranker.booster.num_trees() == 7
    np.testing.assert_allclose(ranker.predict(x), direct.predict(x), rtol=1e-12)


def test_too_few_clicked_requests_to_cross_fit_is_a_data_error_saying_how_many() -> None:
    """A log whose valid window leaves too few requests with a click stops ``train-rank``
    with a line naming the counts (the CLI's data-error exit), not a traceback."""
    frame = pd.DataFrame({"user_id": [1, 1, 2, 3], "label": [0, 0, 1, 0]})
    with pytest.raises(DataError, match=r"1 of 3 valid requests have a clicked candidate, "
                                        r"fewer than rank.folds=2"):
        assign_folds(frame, "user_id", 2, 0)
    # already filtered as train-rank reads it: the count comes from ``asked``, when needed
    counted: list[int] = []

    def asked() -> int:
        counted.append(3)
        return 3

    with pytest.raises(DataError, match=r"1 of 3 valid requests"):
        assign_folds(frame[frame["user_id"] == 2], "user_id", 2, 0, asked)
    assert counted == [3]
    assign_folds(frame[frame["user_id"] == 2], "user_id", 1, 0, asked)
    assert counted == [3]  # not asked when nothing is raised
    useful, fold = assign_folds(frame, "user_id", 1, 0)
    assert useful["user_id"].tolist() == [2] and fold.tolist() == [0]
