"""A phase retrieved for a sample of users is judged on that sample, not on everyone."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.catalogue import artifact_path
from pipeline.io import read_table
from pipeline.protocol import is_search
from pipeline.runner import run_until
from tests.conftest import tiny_config


def test_the_valid_candidate_report_counts_the_sampled_users_only(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, rank={"params": {"rounds": 20}, "compare": []})
    cfg = cfg.model_copy(update={"recall": cfg.recall.model_copy(update={"valid_users": 90})})
    run_until(cfg, "evaluate")
    answered = read_table(artifact_path(cfg, "candidates", phase="valid",
                                        kind="recommendation"))["user_id"].unique()
    valid = read_table(artifact_path(cfg, "split", part="valid"))
    asked = valid[~is_search(valid)]["user_id"].unique()
    assert len(answered) <= 90 < len(asked)
    report = json.loads(artifact_path(cfg, "metrics").read_text())
    block = report["phases"]["valid"]["recommendation"]["systems"]
    judged = {system["users"] for system in block.values()}
    # every channel is judged on the sampled users with a plain valid event, no others
    assert judged == {len(set(answered) & set(asked))}
