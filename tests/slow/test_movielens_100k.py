"""ML-100K end to end: the split and baselines agree with an independent computation.

Popularity's NDCG@10 and top-300 recall are worked out here from the run's own split
with pandas alone (``popularity_reference``) and must equal the pipeline's: a check of
split, exclusion and metric together. The issue's reference numbers (popularity NDCG@10
0.0717, top-300 recall 57.8%, measured by other libraries) hold for a split that orders
a user's events at one second by item id; three in four of ML-100K's events share their
second with another of the user's, and the split now orders such ties at random (seeded),
which gives about 0.082 (``pipeline.splitting``). Skipped when ../shared/datasets/ml-100k
is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.catalogue import artifact_path, stage_dir
from pipeline.config import load_config
from pipeline.io import read_manifest, read_table
from pipeline.runner import run_until
from pipeline.splitting import PARTS
from tests.conftest import only_channels

pytestmark = pytest.mark.slow


def popularity_reference(cfg) -> tuple[float, float]:
    """Popularity's NDCG@10 and recall@300 over the test users of the run's split:
    items ranked by their fitted (train + valid) events, ties to the lower id (the
    catalogue's order), each user's fitted items left out, binary gain, IDCG over
    min(|test items|, 10)."""
    parts = {p: read_table(artifact_path(cfg, "split", part=p)) for p in PARTS}
    fitted = pd.concat([parts["train"], parts["valid"]])
    counts = fitted.groupby("item_id").size()
    ranking = sorted(counts.index, key=lambda item: (-counts[item], item))
    seen = fitted.groupby("user_id")["item_id"].agg(set)
    ndcg, recall = [], []
    for user, items in parts["test"].groupby("user_id")["item_id"]:
        test, own = set(items), seen.get(user, set())
        top = [item for item in ranking if item not in own][:300]
        gain = sum(1 / np.log2(r + 2) for r, item in enumerate(top[:10]) if item in test)
        ndcg.append(gain / sum(1 / np.log2(r + 2) for r in range(min(len(test), 10))))
        recall.append(len(test & set(top)) / len(test))
    return float(np.mean(ndcg)), float(np.mean(recall))


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
    ndcg, recall = popularity_reference(cfg)
    assert pop["ndcg@10"] == pytest.approx(ndcg, abs=1e-9)
    assert metrics["candidate_recall"]["popularity"]["recall@300"] == pytest.approx(recall,
                                                                                     abs=1e-9)
    assert 0.07 < ndcg < 0.095  # near the reference's 0.0717: the same counts, other ties
    co = metrics["systems"]["channel:cooccurrence"]
    assert co["ndcg@10"] > 1.3 * pop["ndcg@10"]
    assert metrics["systems"]["final"]["ndcg@10"] > co["ndcg@10"]  # the ranker adds to it
