"""Experiment tracking: each scheduled run copied to MLflow, where runs can be compared.

The ledger (``runs.jsonl``) and the report stay the record on the machine that ran; a
team comparing runs across machines, datasets and months wants them in one place it can
query and chart. ``log_run`` copies one run there. It is off unless
``tracking.mlflow_uri`` is set, and ``mlflow`` (the ``tracking`` extra, mlflow-skinny)
is imported only when it is called, so the pipeline neither needs nor loads it otherwise.

What goes where:

- params: the config flattened to dotted keys (``recall.budget``), values as written
  (strings) or as JSON (numbers, lists, dicts), cut to MLflow's length limit;
- tags: the ledger line's strings (``run_id``, ``as_of``, ``git_commit``, ...) and the
  gate's reason (``decision.reason``);
- metrics: every system's numbers (``final.ndcg_at_10``, ``channel_sequence.recall_at_10``),
  every lift's (``lift_ndcg_at_10.recommendation.mean``, ``.low``, ``.high``), the
  ledger's (``run.seconds``, ``run.status``, ``run.published`` as 0/1) and each stage's
  (``stage.rank.seconds``, ``stage.rank.reused``);
- artifacts: the ledger line as ``ledger_entry.json``, the report files under ``report/``.

Metric names keep to letters, digits, ``_``, ``-`` and the ``.`` between levels (MLflow
refuses ``(``, ``)`` and ``@``, and Windows stores ``:``): ``@`` becomes ``_at_``, any
other run of other characters one ``_``. Two names that would meet both get a short hash
of the original appended, so distinct systems never share a metric. Values go in
``log_batch`` requests of MLflow's largest size: hundreds of metrics are a few requests.

Two MLflow 3 defaults are turned off here unless the environment already sets them. It
refuses a file store (a ``file://`` URI) without ``MLFLOW_ALLOW_FILE_STORE=true``, asking
for a database that mlflow-skinny cannot open; a ``file://`` URI in the config is that
opt-in. And it starts a thread at import that sends usage telemetry to its makers; a
scheduled job should neither report to a third party nor wait on one offline
(``MLFLOW_DISABLE_TELEMETRY=true``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

LEDGER_ARTIFACT = "ledger_entry.json"
REPORT_ARTIFACTS = "report"
INSTALL = "pip install -e '.[tracking]'"
_OTHER = re.compile(r"[^A-Za-z0-9_-]+")


def log_run(uri: str, experiment: str, entry: dict[str, Any], config: dict[str, Any],
            metrics: dict[str, Any] | None, reports: list[Path]) -> str:
    """Log one scheduled run (its ledger ``entry``, ``config.to_dict()``, the evaluation's
    ``metrics``, None for a run that crashed before it, and the ``reports`` that exist) to
    ``experiment`` (created if missing) at ``uri``; returns the MLflow run id. The run is
    named by the ledger's run_id (its start time for a run that crashed before it had
    one). If logging fails the MLflow run is ended FAILED and the error re-raised."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        import mlflow
        from mlflow.entities import Metric, Param
        from mlflow.utils import validation as limits
    except ImportError as err:
        raise RuntimeError(f"experiment tracking needs MLflow: {INSTALL}") from err
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    client = mlflow.MlflowClient(uri)
    tags = {key: value[:limits.MAX_TAG_VAL_LENGTH] for key, value in _tags(entry).items()}
    run_id = client.create_run(experiment_id, run_name=entry.get("run_id") or entry.get("started"),
                               tags=tags).info.run_id
    try:
        params = [Param(key, value[:limits.MAX_PARAM_VAL_LENGTH])
                  for key, value in _params(config).items()]
        now = int(time.time() * 1000)
        values = [Metric(key, value, now, 0) for key, value in _metrics(entry, metrics).items()]
        for chunk in _chunks(params, limits.MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=chunk)
        for chunk in _chunks(values, limits.MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
        client.log_text(run_id, json.dumps(entry, sort_keys=True, default=str), LEDGER_ARTIFACT)
        for path in reports:
            if path.is_file():
                client.log_artifact(run_id, str(path), REPORT_ARTIFACTS)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _tags(entry: Mapping[str, Any]) -> dict[str, str]:
    """The ledger line's strings, and the gate's reason where there is one."""
    tags = {key: value for key, value in entry.items() if isinstance(value, str)}
    reason = (entry.get("decision") or {}).get("reason")
    if isinstance(reason, str):
        tags["decision.reason"] = reason
    return tags


def _params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``config`` flattened to dotted keys; strings as they are, anything else as JSON."""
    params: dict[str, str] = {}
    for name, key in _keys(config).items():
        value = config[name]
        if isinstance(value, Mapping) and value:
            params.update(_params(value, f"{prefix}{key}."))
        else:
            params[prefix + key] = value if isinstance(value, str) else json.dumps(
                value, sort_keys=True, default=str)
    return params


def _metrics(entry: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Every number of the ledger line, its stages, the systems and the lifts, by name."""
    values = _numbers("run", entry)
    for name, key in _keys(entry.get("stages") or {}).items():
        values.update(_numbers(f"stage.{key}", entry["stages"][name]))
    if metrics is None:
        return values
    systems = metrics.get("systems") or {}
    for name, key in _keys(systems).items():
        values.update(_numbers(key, systems[name]))
    for name, key in _keys(name for name in metrics if name.startswith("lift_")).items():
        for kind, kind_key in _keys(metrics[name]).items():
            values.update(_numbers(f"{key}.{kind_key}", metrics[name][kind]))
    return values


def _numbers(prefix: str, record: Mapping[str, Any]) -> dict[str, float]:
    """``record``'s numbers (booleans as 0/1) under ``prefix.``; other values left out."""
    return {f"{prefix}.{key}": float(record[name]) for name, key in _keys(record).items()
            if isinstance(record[name], int | float)}


def _keys(names: Iterable[str]) -> dict[str, str]:
    """Each name's MLflow-safe form (see the module docstring), distinct across ``names``."""
    safe = {name: _OTHER.sub("_", name.replace("@", "_at_")).strip("_") or "_" for name in names}
    seen = Counter(safe.values())
    return {name: key if seen[key] == 1
            else f"{key}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
            for name, key in safe.items()}


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in consecutive lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
