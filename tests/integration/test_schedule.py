"""Scheduled runs: publish behind the gate, reuse what is up to date, keep a ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.catalogue import STAGE_NAMES, artifact_path
from pipeline.config import Config, TrackingConfig, load_config
from pipeline.io import read_table, run_lock
from pipeline.release import current, ledger
from pipeline.runner import run_until
from pipeline.schedule import LOCKED, OK, REFUSED, record_run, schedule
from pipeline.simulate import simulate
from tests.conftest import REPO, only_channels, tiny_config

pytestmark = pytest.mark.integration
CHEAP = {"cooccurrence": {}, "preference": {}, "popularity": {}}


def cheap_config(data_dir: Path, **overrides: object) -> Config:
    """A tiny run on channels that fit in a blink: the flow is under test here."""
    settings = {"recall": {"budget": 60, **only_channels(CHEAP, {"popularity": {}})},
                "fm": {"models": ["fm"], "max_epochs": 1},
                "rank": {"folds": 2, "compare": [], "params": {"rounds": 20}},
                "publish": {"top_k": 50}}
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
    peaks = [entry["stages"][name]["peak_rss_mb"] for name in STAGE_NAMES]
    assert peaks == sorted(peaks) and 0 < peaks[-1] <= entry["peak_rss_mb"]
    live = first.root / "publish" / "current"
    recs = read_table(live / "recommendations.parquet")
    assert set(recs["user_id"]) == set(read_table(artifact_path(first, "users"))["user_id"])
    assert (live / "manifest.json").is_file() and (live / "cold_start.parquet").is_file()
    page = (first.root / entry["report"]).read_text()
    assert page.index("class=ok") < page.index("<h1>")  # all clear, above everything
    assert entry["run_id"] in page and "Wall time per stage" in page and "History" in page
    assert entry["run_id"] in (first.root / "reports" / "index.html").read_text()


def page_of(cfg: Config) -> str:
    return (cfg.root / ledger(cfg)[-1]["report"]).read_text()


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
    page = page_of(weaker)
    assert page.index("class=alarm") < page.index("<h1>")  # the alarm comes first
    assert "refused" in page[:page.index("<h1>")] and live in page
    assert schedule(weaker, force=True) == OK  # --force publishes anyway, and says so
    assert ledger(weaker)[-1]["forced"] and current(weaker) != live


def test_a_second_run_while_one_holds_the_lock_exits_75(first: Config, capsys) -> None:
    with run_lock(first.root, {"as_of": "holder"}):
        assert schedule(first) == LOCKED
    assert f"'pid': {os.getpid()}" in capsys.readouterr().err.replace('"', "'")


def test_a_later_as_of_publishes_a_new_run(tmp_path: Path) -> None:
    early = cheap_config(tmp_path, ingest={"as_of": "2026-02-20"})
    assert schedule(early) == OK
    first_run = current(early)
    seen_early = read_table(artifact_path(early, "interactions"))["ts"].max()
    assert seen_early <= pd.Timestamp("2026-02-20")
    cfg = cheap_config(tmp_path)
    assert schedule(cfg) == OK
    assert current(cfg) != first_run and current(cfg) > first_run
    page = page_of(cfg)
    assert "Change in final NDCG@10 against the last published run" in page
    history = page[page.index("<h2>History</h2>"):page.index("<h2>Where it wins")]
    history = history[history.index("<table"):]  # the runs, after the change line
    assert first_run in history and current(cfg) in history  # both runs, newest first
    assert history.index(current(cfg)) < history.index(first_run)
    assert read_table(artifact_path(cfg, "interactions"))["ts"].max() > seen_early
    kept = sorted(p.name for p in (tmp_path / "tiny" / "publish").iterdir()
                  if not p.name.startswith("."))
    assert kept == sorted([first_run, current(cfg), "current"])
    later = current(cfg)
    assert schedule(early) == OK  # a backfill of the earlier date: recorded, not published
    entry = ledger(early)[-1]
    assert not entry["published"] and "backfill" in entry["decision"]["reason"]
    assert current(cfg) == later


def daily_settings(root: Path, through: str) -> dict:
    """The tiny synthetic log as daily partitions up to ``through``, read through the
    files source (as configs/synthetic-daily.yaml reads the default one)."""
    source = tiny_config(root).source
    simulate(source, 42, root / "input", through)
    logs = root / "input" / "logs" / "dt=*" / "part-*.parquet"
    same = {c: c for c in ("user_id", "item_id", "ts", "event", "weight", "query", "region")}
    return {"dataset": "daily", "data_dir": str(root), "threads": 1, "source": {
        "kind": "files",
        "interactions": [{"path": str(logs), "columns": same}],
        "items": {"path": str(root / "input" / "items.parquet"),
                  "columns": {c: c for c in ("item_id", "title", "text", "category", "tags",
                                             "region", "created_ts")}},
        "users": {"path": str(root / "input" / "users.parquet"),
                  "columns": {"user_id": "user_id", "region": "region"}}},
        "recall": {"budget": 60, **only_channels(CHEAP, {"popularity": {}})},
        "fm": {"models": ["fm"], "max_epochs": 1},
        "rank": {"folds": 2, "compare": [], "params": {"rounds": 20}},
        "publish": {"top_k": 50}}


def test_daily_partitions_publish_day_after_day(tmp_path: Path) -> None:
    cfg = load_config(None, base=daily_settings(tmp_path, "2026-02-20"))
    assert schedule(cfg) == OK
    day1 = current(cfg)
    daily_settings(tmp_path, "2026-02-21")  # the next day's partition lands
    assert schedule(cfg) == OK
    day2 = ledger(cfg)[-1]
    assert day2["run_id"] != day1 and day2["as_of"] > ledger(cfg)[0]["as_of"]
    assert not day2["stages"]["ingest"]["reused"] and current(cfg) == day2["run_id"]
    assert any("dt=2026-02-21" in f for f in day2["inputs"]["files"])
    assert schedule(cfg) == OK
    again = ledger(cfg)[-1]
    assert all(s["reused"] for s in again["stages"].values()) and current(cfg) == day2["run_id"]


def test_a_log_without_time_publishes_night_after_night(tmp_path: Path) -> None:
    """Every run of a log without time has the as-of 1970 and so one run id: each night
    that brings new events still gets its own publication and its own page, and a night
    with nothing new keeps both."""
    timed = cheap_config(tmp_path / "timed")
    run_until(timed, "ingest")
    log = pd.read_parquet(artifact_path(timed, "interactions"))
    counts = log.groupby(["user_id", "item_id"]).size().rename("count").reset_index()
    night, later = counts.iloc[: len(counts) * 9 // 10], counts
    path = tmp_path / "counts.csv"
    night.to_csv(path, index=False)
    cfg = cheap_config(tmp_path / "runs", dataset="counts", source={
        "kind": "files", "interactions": [{"path": str(path), "columns": {
            "user_id": "user_id", "item_id": "item_id", "weight": "count"}}]})
    assert schedule(cfg, force=True) == OK  # the gate is not under test here
    later.to_csv(path, index=False)  # the next night's file holds more
    assert schedule(cfg, force=True) == OK
    assert schedule(cfg) == OK  # nothing new
    first, second, again = ledger(cfg)[-3:]
    run = first["run_id"]
    assert run.startswith("19700101T000000-") and second["run_id"] == run
    assert (first["publication"], second["publication"]) == (run, f"{run}.2")
    assert current(cfg) == f"{run}.2" and again["publication"] == f"{run}.2"
    assert (first["report"], second["report"], again["report"]) == (
        f"reports/{run}.html", f"reports/{run}.2.html", f"reports/{run}.2.html")
    assert all((cfg.root / e["report"]).is_file() for e in (first, second))


def _run(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "schedule", "--config",
                             str(config)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _kill_when(proc: subprocess.Popen, root: Path, pattern: str, limit: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as a file matching ``pattern`` appears under ``root``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if any(root.glob(pattern)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


def _outputs(root: Path) -> dict[str, bytes]:
    """Every file a run leaves, manifests, the ledger and the report pages (timings, and
    the killed run's own line in the history) aside; the run id (whose config hash covers
    the source paths, which differ here) as ``RUN``."""
    live = current_run(root)
    return {str(p.relative_to(root)).replace(live, "RUN"): _untimed(p)
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "runs.jsonl", "index.html")
            and not p.name.endswith(".lock") and p.parent.name != "reports"}


def _untimed(path: Path) -> bytes | str:
    """A file's bytes; a JSON file's content without its timing fields (seconds, speed)."""
    if path.suffix != ".json":
        return path.read_bytes()

    def strip(node: object) -> object:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()
                    if "second" not in k and "samples_per" not in k}
        return [strip(v) for v in node] if isinstance(node, list) else node

    return json.dumps(strip(json.loads(path.read_text())), sort_keys=True)  # NaN == NaN


def current_run(root: Path) -> str:
    return os.readlink(root / "publish" / "current")


@pytest.mark.parametrize("where", ["recall/.recommendation", ".publication.tmp-*"])
def test_a_run_killed_midway_and_rerun_ends_as_an_uninterrupted_one(
        tmp_path: Path, where: str) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for root in (clean, killed):
        config = root / "config.yaml"
        root.mkdir()
        config.write_text(yaml.safe_dump(daily_settings(root, "2026-02-20")))
    assert _run(clean / "config.yaml").wait() == OK
    pattern = {"recall/.recommendation": ".recall.tmp-*/*/recommendation/candidates.parquet",
               ".publication.tmp-*": ".publication.tmp-*/recommendations.parquet"}[where]
    assert _kill_when(_run(killed / "config.yaml"), killed / "daily", pattern), "not caught"
    assert _run(killed / "config.yaml").wait() == OK
    assert not [p for p in (killed / "daily").rglob(".*.tmp-*")]
    a, b = _outputs(clean / "daily"), _outputs(killed / "daily")
    assert sorted(a) == sorted(b)
    page = killed / "daily" / "reports" / f"{current_run(killed / 'daily')}.html"
    assert "class=alarm" not in page.read_text()  # the rerun succeeded: all clear
    assert [k for k in a if a[k] != b[k]] == []


def test_a_run_goes_to_mlflow_when_a_tracking_uri_is_set(first: Config, tmp_path: Path,
                                                          monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = (tmp_path / "mlruns").as_uri()
    tracked = first.model_copy(update={"tracking": TrackingConfig(mlflow_uri=uri)})
    entry = ledger(first)[-1]  # the run whose metrics.json is on disk
    record_run(tracked, entry)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(first.dataset).experiment_id])
    assert run.info.run_name == entry["run_id"]
    assert run.data.metrics["final.ndcg_at_10"] == pytest.approx(entry["ndcg@10"])
    assert run.data.params["rank.folds"] == "2"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"ledger_entry.json"}
