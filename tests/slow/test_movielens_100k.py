"""ML-100K end to end: the split and baselines agree with reference measurements.

The issue's reference numbers were measured by other libraries on exactly this split
(ratio 80/10/10 per user, full ranking, fitted items excluded): popularity NDCG@10 0.0717,
its top-300 recall 57.8%. Matching them checks split, exclusion and metric together.
Skipped when ../shared/datasets/ml-100k is absent.
"""

from __future__ import annotations

import json

import pytest

from pipeline.catalogue import artifact_path, stage_dir
from pipeline.config import load_config
from pipeline.io import read_manifest
from pipeline.runner import run_until
from tests.conftest import only_channels

pytestmark = pytest.mark.slow


def test_movielens_100k_end_to_end(ml100k, tmp_path) -> None:
    # Two cheap channels: this checks split, exclusion and metrics, not model quality
    # (that is `make bench-recall`'s job).
    recall = only_channels({"cooccurrence": {"quota": 200}, "popularity": {"quota": 100}})
    cfg = load_config(None, base={
        "dataset": "ml", "data_dir": str(tmp_path), "threads": 1,
        "source": {"kind": "movielens-100k", "path": str(ml100k)},
        "recall": recall,
        "fm": {"models": ["fm"], "max_epochs": 2},
        "rank": {"folds": 2, "compare": []}})
    run_until(cfg)
    assert read_manifest(stage_dir(cfg, "ingest"))["counts"] == {
        "interactions": 100_000, "items": 1682, "users": 943}
    split = read_manifest(stage_dir(cfg, "split"))["counts"]
    assert sum(split.values()) == 100_000 and split["test"] == split["valid"]
    metrics = json.loads(artifact_path(cfg, "metrics").read_text())
    assert metrics["users"] == 943
    pop = metrics["systems"]["channel:popularity"]
    assert pop["ndcg@10"] == pytest.approx(0.0717, abs=5e-4)
    assert metrics["candidate_recall"]["popularity"]["recall@300"] == pytest.approx(0.578, abs=2e-3)
    co = metrics["systems"]["channel:cooccurrence"]
    assert co["ndcg@10"] > 1.3 * pop["ndcg@10"]
    assert metrics["systems"]["final"]["ndcg@10"] > co["ndcg@10"]  # the ranker adds to it
