"""rank.engine: dask trains the published rankers with lightgbm.dask on every test request."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import spearmanr

from models.ranker import FoldEnsemble, Ranker, training_rows
from pipeline.catalogue import artifact_path
from pipeline.config import ConfigError, load_config
from pipeline.io import read_table, table_parts
from pipeline.protocol import LABEL, click_labels, clicks
from pipeline.runner import run_stage, run_until
from pipeline.stages.train_rank import with_positives
from tests.conftest import tiny_config

pytest.importorskip("dask.distributed")


def test_published_rankers_learn_every_test_request_on_the_cluster(tmp_path: Path) -> None:
    local = tiny_config(tmp_path, rank={"params": {"rounds": 40}, "compare": []})
    local = local.model_copy(update={"recall": local.recall.model_copy(update={
        "request_chunk": 64, "valid_users": 100})})
    run_until(local, "train-rank")
    dask = local.model_copy(update={"rank": local.rank.model_copy(update={"engine": "dask"})})
    run_stage(dask, "train-rank")
    source = artifact_path(dask, "features", phase="test", kind="recommendation")
    targets = clicks(read_table(artifact_path(dask, "split", part="test")))
    parts = []
    for i, path in enumerate(table_parts(source)):  # each part samples its negatives
        part = with_positives(read_table(path).assign(**{LABEL: lambda f: click_labels(
            f, "user_id", targets)}), "user_id")
        parts.append(part[training_rows(part[LABEL].to_numpy(), dask.rank.negatives,
                                        [dask.seed, i])])
    learned = pd.concat(parts, ignore_index=True)
    features = read_table(source)
    report = json.loads(artifact_path(dask, "ranker_metrics").read_text())["publish"]
    # every test request with a click, not the valid-sized sample the local engine takes
    assert report["requests"] == learned["user_id"].nunique() > local.recall.valid_users
    assert report["rows"] == len(learned)
    assert (learned[LABEL] > 0).sum() < len(learned) < 0.5 * len(features)
    published = FoldEnsemble.load(artifact_path(dask, "ranker", phase="publish",
                                                kind="recommendation", objective="lambdarank"))
    rounds = report["rounds"]["lambdarank"]
    assert published.rankers[0].best_iteration == rounds
    reference = Ranker("lambdarank", {"rounds": rounds, "early_stopping": 0}, seed=local.seed)
    columns = published.rankers[0].feature_names
    reference.fit(learned[columns], learned[LABEL].to_numpy(), learned["user_id"].to_numpy())
    # the same data and rounds on one machine: data-parallel bins differ a little, so the
    # scores agree in order, not to the bit
    assert spearmanr(published.predict(features), reference.predict(features)).statistic > 0.9


def test_pairwise_cannot_train_on_dask() -> None:
    with pytest.raises(ConfigError, match="pairwise"):
        load_config(None, base={"dataset": "x", "source": {"kind": "synthetic"},
                                "rank": {"engine": "dask", "compare": ["pairwise"]}})
