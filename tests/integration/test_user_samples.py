"""A backtest phase retrieved for a sample of users is judged on that sample, not on
everyone, and the publication still covers every user."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.catalogue import artifact_path
from pipeline.io import read_table
from pipeline.protocol import is_search
from pipeline.runner import run_until
from tests.conftest import tiny_config


def plain_users(cfg, part: str) -> set:
    rows = read_table(artifact_path(cfg, "split", part=part))
    return set(rows[~is_search(rows)]["user_id"])


def test_sampled_phases_are_judged_on_their_samples_and_everyone_is_published(
        tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, rank={"params": {"rounds": 20}, "compare": []})
    cfg = cfg.model_copy(update={"recall": cfg.recall.model_copy(update={
        "valid_users": 90, "test_users": 120})})
    run_until(cfg)
    report = json.loads(artifact_path(cfg, "metrics").read_text())
    for phase, size in (("valid", 90), ("test", 120)):
        answered = set(read_table(artifact_path(cfg, "candidates", phase=phase,
                                                kind="recommendation"))["user_id"])
        asked = plain_users(cfg, phase)
        assert len(answered) <= size < len(asked)
        judged = {s["users"] for s in report["phases"][phase]["recommendation"]["systems"]
                  .values()}
        # every channel is judged on the sampled users with a plain event, no others
        assert judged == {len(answered & asked)}, phase
    assert report["users"] == len(set(read_table(artifact_path(
        cfg, "ranking", phase="test", kind="recommendation"))["user_id"]) & plain_users(
        cfg, "test"))
    published = read_table(artifact_path(cfg, "recommendations"))["user_id"].nunique()
    assert published == len(read_table(artifact_path(cfg, "users")))
