"""A request's features are converted to LightGBM's matrix once for every ranker: the
scores equal LightGBM's own prediction on the frame, whatever the columns' types."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.ranker import FoldEnsemble, Ranker, cross_fit, ensemble_scores, feature_matrix

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
