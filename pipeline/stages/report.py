"""report: ``report/index.html`` from the evaluation, with each stage's status noted."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Config
from pipeline.evaluation.report import render
from pipeline.io import MANIFEST, read_manifest
from pipeline.stages import STAGES, stage_dir


def run(cfg: Config, out: Path) -> dict:
    metrics = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())
    notes = []
    for stage in STAGES:
        folder = stage_dir(cfg, stage.name)
        if stage.name != "report" and (folder / MANIFEST).is_file():
            manifest = read_manifest(folder)
            status = manifest.get("status", "ok")
            notes.append(f"{stage.name}: {status} ({manifest.get('seconds', 0):.1f}s)")
    (out / "index.html").write_text(render(metrics, notes), encoding="utf-8")
    return {"report": str(stage_dir(cfg, "report") / "index.html")}
