"""A log without time, loaded through the ``files`` source by config alone: the split is a
seeded random holdout per user, nothing learns the file's sort order, and every stage
says so where a person looks (the split's log line and manifest, the report)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.catalogue import artifact_path, stage_dir
from pipeline.io import MANIFEST
from pipeline.runner import run_until
from tests.conftest import tiny_config


def count_log(tmp_path: Path) -> dict:
    """The tiny synthetic log rewritten as (user, item, count), sorted by user and item,
    with no time column, plus its items table."""
    timed = tiny_config(tmp_path / "timed")
    run_until(timed, "ingest")
    log = pd.read_parquet(artifact_path(timed, "interactions"))
    counts = log.groupby(["user_id", "item_id"]).size().rename("count").reset_index()
    counts.sort_values(["user_id", "item_id"]).to_csv(tmp_path / "counts.csv", index=False)
    items = pd.read_parquet(artifact_path(timed, "items"))
    items[["item_id", "title", "category"]].to_csv(tmp_path / "items.csv", index=False)
    return {"kind": "files",
            "interactions": [{"path": str(tmp_path / "counts.csv"), "event": "listen",
                              "columns": {"user_id": "user_id", "item_id": "item_id",
                                          "weight": "count"}}],
            "items": {"path": str(tmp_path / "items.csv"),
                      "columns": {"item_id": "item_id", "title": "title",
                                  "category": "category"}}}


def test_a_count_log_runs_order_free_with_a_random_holdout(tmp_path: Path, caplog) -> None:
    cfg = tiny_config(tmp_path / "runs", dataset="counts", source=count_log(tmp_path))
    run_until(cfg, "report")

    ingested = pd.read_parquet(artifact_path(cfg, "interactions"))
    assert ingested["ts"].nunique() == 1  # no time: one timestamp, not the file's row order
    split = json.loads((stage_dir(cfg, "split") / MANIFEST).read_text())
    assert (split["strategy"], split["timed"]) == ("random", False)
    assert "tied_held_out" not in split  # a random holdout: every place is the seed's
    assert "channel sequence left out" in split["status"]
    assert any("no time" in r.message for r in caplog.records)

    # the held-out items are not each user's highest ids, as file order would make them
    test = pd.read_parquet(artifact_path(cfg, "split", part="test"))
    highest = ingested.groupby("user_id")["item_id"].max()
    assert (test["item_id"].to_numpy() == highest[test["user_id"]].to_numpy()).mean() < 0.5

    recall = json.loads((stage_dir(cfg, "recall") / MANIFEST).read_text())
    fitted = recall["phases"]["valid"]["fit_seconds"]
    assert "sequence" not in fitted and "trending" not in fitted
    assert recall["config"]["recall"]["channels"]["cooccurrence"]["params"]["recent_items"] == 0

    metrics = json.loads(artifact_path(cfg, "metrics").read_text())
    assert metrics["split"] == "random"
    assert not any("sequence" in s or "trending" in s for s in metrics["systems"])
    assert "no time" in artifact_path(cfg, "report").read_text()
