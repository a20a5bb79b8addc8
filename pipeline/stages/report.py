"""report: ``report/index.html`` from the evaluation, headed by what was run on what.

The header comes from the run's own files: the as-of time, the data and what ingest
noted of it (rows left out, odd dates, no time) from the ingest and evaluate outputs,
the share of held-out events the split placed among events of one time,
each stage's wall time and status from its manifest, the config as a diff from the
defaults, the quotas tuned on valid and the blend. A scheduled run adds the
history of earlier runs to its copy of the page (``pipeline.history``).
"""

from __future__ import annotations

import time

from pipeline.catalogue import StageIO, artifact_path
from pipeline.config import Config, config_diff
from pipeline.evaluation.report import render
from pipeline.io import git_commit
from pipeline.protocol import KINDS
from pipeline.release import run_id


def run_facts(cfg: Config, io: StageIO) -> dict:
    manifests = io.upstream_manifests()
    ingest = manifests.get("ingest", {})
    as_of = ingest.get("as_of")
    tuned = io.read_json("tuned")
    return {
        "run_id": run_id(as_of, cfg) if as_of else None, "as_of": as_of,
        "ingest": {"dropped": {k: n for k, n in ingest.get("dropped", {}).items() if n},
                   "notes": ingest.get("notes", [])},
        "tied_held_out": manifests.get("split", {}).get("tied_held_out", {}),
        "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "stages": {name: {"seconds": m.get("seconds", 0.0), "status": m.get("status", "ok")}
                   for name, m in manifests.items()},
        "config_diff": config_diff(cfg),
        "quotas": {kind: tuned[key] for kind, key in (("recommendation", "quotas"),
                                                       ("search", "search_quotas"))
                   if tuned.get(key)},
        "blend": {kind: io.read_json("blend", kind=kind) for kind in KINDS
                  if io.has("blend", kind=kind)},
    }


def run(cfg: Config, io: StageIO) -> dict:
    facts = run_facts(cfg, io)
    notes = [f"{name}: {s['status']} ({s['seconds']:.1f}s)" for name, s in facts["stages"].items()]
    io.output("report").write_text(render(io.read_json("metrics"), facts, notes),
                                   encoding="utf-8")
    return {"report": str(artifact_path(cfg, "report"))}
