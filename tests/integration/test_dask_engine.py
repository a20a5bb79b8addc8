"""engine: dask gives the local engine's outputs, byte for byte, on a 2-worker cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.runner import run_until
from tests.conftest import tiny_config

pytest.importorskip("dask.distributed")

# Files that record how a run went rather than what it computed: the manifests (timings,
# the config with its engine) and the report that shows them.
RUN_RECORDS = ("manifest.json", "index.html")


TIMING = re.compile(r"second|^samples_per_")  # seconds, train_cpu_seconds, samples_per_s


def untimed(tree: Any) -> Any:
    """A JSON tree without its wall-clock fields (the fits run in the client either way;
    only their timings may differ)."""
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items() if not TIMING.search(k)}
    return [untimed(v) for v in tree] if isinstance(tree, list) else tree


def outputs(root: Path) -> dict[str, Any]:
    """Every output's bytes (a JSON file's content without timings), by relative path."""
    return {str(p.relative_to(root)): untimed(json.loads(p.read_text())) if p.suffix == ".json"
            else p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in RUN_RECORDS and not p.name.startswith(".")}


def test_every_stage_on_a_local_cluster_writes_what_the_local_engine_writes(
        tmp_path: Path) -> None:
    # small chunks, so every stage has several shards to spread over the workers
    shards = {"recall": {"request_chunk": 64}, "features": {"request_chunk": 32}}
    local = tiny_config(tmp_path / "local")
    local = local.model_copy(update={
        "recall": local.recall.model_copy(update=shards["recall"]),
        "features": local.features.model_copy(update=shards["features"])})
    dask = local.model_copy(update={"data_dir": tmp_path / "dask", "engine": "dask"})
    run_until(local)
    run_until(dask)
    ours, theirs = outputs(local.root), outputs(dask.root)
    assert sorted(ours) == sorted(theirs)
    assert [name for name in ours if ours[name] != theirs[name]] == []
    parts = [name for name in ours if "candidates.parquet/part-" in name]
    assert len(parts) > 3 * 2  # several shards per phase did run as tasks
