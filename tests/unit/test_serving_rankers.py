"""A request's features are converted to LightGBM's matrix once for every ranker: the
scores equal LightGBM's own prediction on the frame, whatever the columns' types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.ranker import FoldEnsemble, Ranker, cross_fit, ensemble_scores, feature_matrix
from pipeline.stages.rank import system_scores

FAST = {"rounds": 30, "early_stopping": 0, "learning_rate": 0.2, "num_leaves": 7,
        "min_data_in_leaf": 5}


def typed(n: int, seed: int, float32_only: bool = False) -> pd.DataFrame:
    """Features of the types a served frame holds, with missing values."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n).astype(np.float32),
                          "b": rng.normal(size=n).astype(np.float32)})
    frame.loc[::7, "a"] = np.nan
    if not float32_only:
        frame["c"] = rng.normal(size=n)
        frame["rank"] = pd.array(np.where(rng.random(n) < 0.3, None,
                                          rng.integers(1, 300, n)), dtype="Int32")
        frame["n_channels"] = rng.integers(1, 5, n).astype(np.int8)
    return frame


def frame_scores(ranker: Ranker, frame: pd.DataFrame) -> np.ndarray:
    """LightGBM converting the frame itself."""
    return ranker.booster.predict(frame[ranker.feature_names],
                                  num_iteration=ranker.best_iteration, raw_score=True)


def test_one_matrix_gives_lightgbms_own_scores_of_the_frame() -> None:
    for float32_only in (False, True):
        train = typed(400, 0, float32_only)
        labels = (train["b"].to_numpy() > 0.5).astype(int)
        groups = np.repeat(np.arange(20), 20)
        ensembles = {objective: cross_fit(objective, train, labels, groups, groups % 3,
                                          FAST)[0]
                     for objective in ("lambdarank", "binary")}
        served = typed(300, 1, float32_only).iloc[:, ::-1]  # columns picked by name
        assert feature_matrix(served, list(train.columns)).dtype == (
            np.float32 if float32_only else np.float64)
        got = ensemble_scores(served, ensembles)
        for name, ensemble in ensembles.items():
            want = np.mean([frame_scores(r, served) for r in ensemble.rankers], axis=0)
            np.testing.assert_array_equal(got[name], want)
            np.testing.assert_array_equal(ensemble.predict(served), want)


def test_an_ensemble_refuses_rankers_of_different_features() -> None:
    train = typed(400, 0)
    labels = (train["b"].to_numpy() > 0.5).astype(int)
    groups = np.repeat(np.arange(20), 20)
    one = Ranker("binary", FAST).fit(train, labels, groups)
    other = Ranker("binary", FAST).fit(train[["a", "b"]], labels, groups)
    with pytest.raises(ValueError, match="feature columns"):
        FoldEnsemble([one, other])


def test_a_served_system_is_scored_by_the_rankers_it_reads_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    train = typed(400, 0)
    labels = (train["b"].to_numpy() > 0.5).astype(int)
    groups = np.repeat(np.arange(20), 20)
    ensembles = {objective: cross_fit(objective, train, labels, groups, groups % 3, FAST)[0]
                 for objective in ("lambdarank", "binary", "rank_xendcg")}
    served = typed(300, 1).assign(case=np.repeat(np.arange(10), 30),
                                  ease_rank=np.tile(np.arange(1.0, 31.0), 10))
    blend = {"channels": ["ease"], "weights": {"ltr:binary": 1.0}}  # binary beat the fusion
    everything = system_scores(served, "case", ensembles, blend)
    read, predict = [], FoldEnsemble.predict_matrix

    def recorded(ensemble: FoldEnsemble, x: np.ndarray) -> np.ndarray:
        read.append(ensemble)
        return predict(ensemble, x)

    monkeypatch.setattr(FoldEnsemble, "predict_matrix", recorded)
    blended = system_scores(served, "case", ensembles, blend, only="blend")
    assert read == [ensembles["binary"]] and list(blended) == ["ltr:binary", "blend"]
    np.testing.assert_array_equal(blended["blend"], everything["blend"])
    read.clear()
    alone = system_scores(served, "case", ensembles, blend, only="ltr:rank_xendcg")
    assert read == [ensembles["rank_xendcg"]] and list(alone) == ["ltr:rank_xendcg"]
    np.testing.assert_array_equal(alone["ltr:rank_xendcg"], everything["ltr:rank_xendcg"])
