"""Scheduled runs: publish behind the gate, reuse what is up to date, keep a ledger."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from pipeline.catalogue import artifact_path
from pipeline.config import Config
from pipeline.io import read_table, run_lock
from pipeline.release import current, ledger
from pipeline.schedule import LOCKED, OK, REFUSED, schedule
from tests.conftest import only_channels, tiny_config

pytestmark = pytest.mark.integration
CHEAP = {"cooccurrence": {}, "preference": {}, "popularity": {}}


def cheap_config(data_dir: Path, **overrides: object) -> Config:
    """A tiny run on channels that fit in a blink: the flow is under test here."""
    settings = {"recall": {"budget": 60, **only_channels(CHEAP, {"popularity": {}})},
                "fm": {"models": ["fm"], "max_epochs": 1},
                "rank": {"folds": 2, "compare": [], "params": {"rounds": 20}}}
    settings.update(overrides)
    return tiny_config(data_dir, **settings)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cfg = cheap_config(tmp_path_factory.mktemp("scheduled"))
    assert schedule(cfg) == OK
    return cfg


def test_a_first_run_publishes_and_records_itself(first: Config) -> None:
    entry = ledger(first)[-1]
    assert entry["status"] == OK and entry["published"] and entry["run_id"] == current(first)
    assert not any(s["reused"] for s in entry["stages"].values())
    assert {"ndcg@10", "ndcg@10_ci", "inputs", "decision", "config_hash", "seconds",
            "peak_rss_mb"} <= set(entry)
    live = first.root / "publish" / "current"
    recs = read_table(live / "recommendations.parquet")
    assert set(recs["user_id"]) == set(read_table(artifact_path(first, "users"))["user_id"])
    assert (live / "manifest.json").is_file() and (live / "cold_start.parquet").is_file()


def test_a_rerun_with_nothing_new_reuses_everything(first: Config) -> None:
    live = current(first)
    assert schedule(first) == OK
    entry = ledger(first)[-1]
    assert all(s["reused"] for s in entry["stages"].values())
    assert entry["decision"]["reason"] == "already up to date" and current(first) == live


def test_a_regression_is_refused_and_the_last_publication_stays_live(first: Config) -> None:
    live = current(first)
    weaker = cheap_config(first.data_dir, recall={
        "budget": 60, **only_channels({"popularity": {}}, {"popularity": {}})})
    assert schedule(weaker) == REFUSED
    entry = ledger(weaker)[-1]
    assert entry["status"] == REFUSED and not entry["published"]
    assert "below" in entry["decision"]["reason"]
    assert current(first) == live
    assert schedule(weaker, force=True) == OK  # --force publishes anyway, and says so
    assert ledger(weaker)[-1]["forced"] and current(weaker) != live


def test_a_second_run_while_one_holds_the_lock_exits_75(first: Config, capsys) -> None:
    with run_lock(first.root, {"as_of": "holder"}):
        assert schedule(first) == LOCKED
    assert f"'pid': {os.getpid()}" in capsys.readouterr().out.replace('"', "'")


def test_a_later_as_of_publishes_a_new_run(tmp_path: Path) -> None:
    early = cheap_config(tmp_path, ingest={"as_of": "2026-02-20"})
    assert schedule(early, as_of="2026-02-20") == OK
    first_run = current(early)
    seen_early = read_table(artifact_path(early, "interactions"))["ts"].max()
    assert seen_early <= pd.Timestamp("2026-02-20")
    cfg = cheap_config(tmp_path)
    assert schedule(cfg) == OK
    assert current(cfg) != first_run and current(cfg) > first_run
    assert read_table(artifact_path(cfg, "interactions"))["ts"].max() > seen_early
    kept = sorted(p.name for p in (tmp_path / "tiny" / "publish").iterdir()
                  if not p.name.startswith("."))
    assert kept == sorted([first_run, current(cfg), "current"])
