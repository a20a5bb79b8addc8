"""report: ``report/index.html`` from the evaluation, with each stage's status noted."""

from __future__ import annotations

from pipeline.catalogue import StageIO, artifact_path
from pipeline.config import Config
from pipeline.evaluation.report import render


def run(cfg: Config, io: StageIO) -> dict:
    notes = [f"{name}: {manifest.get('status', 'ok')} ({manifest.get('seconds', 0):.1f}s)"
             for name, manifest in io.upstream_manifests().items()]
    io.output("report").write_text(render(io.read_json("metrics"), notes), encoding="utf-8")
    return {"report": str(artifact_path(cfg, "report"))}
