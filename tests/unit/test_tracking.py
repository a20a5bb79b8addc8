"""MLflow tracking: a run logged to a local file store and read back with MlflowClient."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# As log_run does: no telemetry thread, which MLflow starts at import (collection time here).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
mlflow = pytest.importorskip("mlflow")

from pipeline.tracking import log_run  # noqa: E402

CONFIG = {"dataset": "tiny", "seed": 7, "ingest": {"as_of": None},
          "recall": {"budget": 200, "channels": {"ease": {"quota": 50, "params": {}}}},
          "publish": {"keep": 3}, "rank": {"features": ["a", "b"]}, "note": "x" * 7000}
ENTRY = {"run_id": "20450101T000000-abcd1234", "as_of": "2045-01-01 00:00:00",
         "git_commit": "0c04093", "config_hash": "abcd1234", "status": 0, "published": True,
         "forced": False, "seconds": 12.5, "ndcg@10": 0.3, "ndcg@10_ci": [0.28, 0.32],
         "stages": {"ingest": {"seconds": 1.25, "reused": True},
                    "train-fm": {"seconds": 4.0, "reused": False}},
         "decision": {"passed": True, "reason": "every check passed"}}
METRICS = {"systems": {"final": {"users": 40, "ndcg@10": 0.3, "recall@10": 0.25,
                                 "ndcg@10_ci": [0.28, 0.32]},
                       "channel:sequence": {"users": 40, "ndcg@10": 0.2, "mrr@10": 0.4},
                       "merged (merge order)": {"users": 40, "coverage@10": 0.5}},
           "lift_ndcg@10": {"recommendation": {"system": "final",
                                               "baseline": "channel:sequence", "mean": 0.1,
                                               "low": 0.05, "high": 0.15,
                                               "excludes_zero": True}}}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A file store in the temp dir, with MLflow's opt-in to file stores left to log_run
    (and the environment as it was after the test)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded, so teardown restores it
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    return (tmp_path / "mlruns").as_uri()


def artifact(client: mlflow.MlflowClient, run_id: str, path: str) -> str:
    return Path(client.download_artifacts(run_id, path)).read_text()


def test_run_logs_params_metrics_tags_and_artifacts(store: str, tmp_path: Path) -> None:
    report = tmp_path / "index.html"
    report.write_text("<html><body>NDCG@10 0.3</body></html>")
    run_id = log_run(store, "recs", ENTRY, CONFIG, METRICS, [report, tmp_path / "missing.html"])
    client = mlflow.MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == ENTRY["run_id"]
    assert client.get_experiment(run.info.experiment_id).name == "recs"
    params, values, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["dataset"] == "tiny"
    assert params["seed"] == "7"
    assert params["ingest.as_of"] == "null"
    assert params["recall.budget"] == "200"
    assert params["recall.channels.ease.params"] == "{}"
    assert params["rank.features"] == '["a", "b"]'
    assert params["note"] == "x" * 6000
    assert values["final.ndcg_at_10"] == 0.3
    assert values["final.recall_at_10"] == 0.25
    assert values["channel_sequence.mrr_at_10"] == 0.4
    assert values["merged_merge_order.coverage_at_10"] == 0.5
    assert "final.ndcg_at_10_ci" not in values
    assert values["lift_ndcg_at_10.recommendation.mean"] == 0.1
    assert values["lift_ndcg_at_10.recommendation.low"] == 0.05
    assert values["lift_ndcg_at_10.recommendation.high"] == 0.15
    assert values["lift_ndcg_at_10.recommendation.excludes_zero"] == 1
    assert values["run.seconds"] == 12.5
    assert values["run.status"] == 0
    assert values["run.published"] == 1
    assert values["stage.ingest.seconds"] == 1.25
    assert values["stage.ingest.reused"] == 1
    assert values["stage.train-fm.reused"] == 0
    assert tags["run_id"] == ENTRY["run_id"]
    assert tags["as_of"] == ENTRY["as_of"]
    assert tags["git_commit"] == ENTRY["git_commit"]
    assert tags["decision.reason"] == "every check passed"
    assert json.loads(artifact(client, run_id, "ledger_entry.json")) == ENTRY
    assert artifact(client, run_id, "report/index.html") == report.read_text()
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/index.html"]


def test_crashed_run_without_metrics_still_logs_its_entry(store: str) -> None:
    entry = {"as_of": "2045-01-01 00:00:00", "started": "2045-01-02T03:00:00+0000",
             "git_commit": "0c04093", "status": 1, "seconds": 3.5,
             "error": "ValueError: boom", "stages": {"ingest": {"seconds": 1.0, "reused": False}}}
    run_id = log_run(store, "recs", entry, CONFIG, None, [])
    client = mlflow.MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == entry["started"]
    assert run.data.metrics == {"run.status": 1, "run.seconds": 3.5,
                                "stage.ingest.seconds": 1.0, "stage.ingest.reused": 0}
    assert run.data.tags["error"] == "ValueError: boom"
    assert json.loads(artifact(client, run_id, "ledger_entry.json")) == entry


def test_distinct_systems_get_distinct_metric_names(store: str) -> None:
    names = ["channel:sequence", "channel_sequence", "channel sequence", "channel(sequence)"]
    metrics = {"systems": {name: {"ndcg@10": i / 10} for i, name in enumerate(names)}}
    run_id = log_run(store, "recs", ENTRY, {}, metrics, [])
    run = mlflow.MlflowClient(store).get_run(run_id)
    ndcg = {k: v for k, v in run.data.metrics.items() if k.startswith("channel")}
    assert sorted(ndcg.values()) == [0.0, 0.1, 0.2, 0.3]
    assert all(k.startswith("channel_sequence_") for k in ndcg)


def test_logging_error_ends_the_run_failed(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("artifact store unreachable")

    monkeypatch.setattr(mlflow.MlflowClient, "log_text", refuse)
    with pytest.raises(OSError, match="unreachable"):
        log_run(store, "recs", ENTRY, CONFIG, METRICS, [])
    client = mlflow.MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("recs").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.metrics["final.ndcg_at_10"] == 0.3


def test_more_values_than_one_batch_holds(store: str) -> None:
    config = {f"key{i}": i for i in range(150)}
    metrics = {"systems": {f"s{i}": {f"m{j}@10": i + j / 100 for j in range(30)}
                           for i in range(50)}}
    run_id = log_run(store, "recs", ENTRY, config, metrics, [])
    run = mlflow.MlflowClient(store).get_run(run_id)
    assert len(run.data.params) == 150
    assert sum(k.startswith("s") and k[1].isdigit() for k in run.data.metrics) == 1500
    assert run.data.metrics["s49.m29_at_10"] == 49.29


def test_missing_mlflow_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[tracking\]'"):
        log_run("http://localhost:5000", "recs", ENTRY, CONFIG, METRICS, [])
