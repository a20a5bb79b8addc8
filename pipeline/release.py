"""Release: the gate between evaluation and users, the live pointer, and the run ledger.

A run's publication candidate (the ``publish`` stage's folder) goes live only if the
gate passes: the final ranking's NDCG@10 is not significantly below its best single
component (the paired bootstrap interval of the lift lies entirely below zero) and not
more than ``gate.max_drop`` (relative) below the last published run's. Going live is a
copy of hard links into ``publish/<run_id>/`` under a temporary name, renamed into
place, then ``publish/current`` (a symbolic link) swapped by an atomic rename, so a
reader sees the old publication or the new one, never half of one. The last
``publish.keep`` publications stay for rollback. Every run that got the whole-run lock
appends one JSON line to ``runs.jsonl`` (written and synced in one ``write``), whatever
its outcome. A reader should resolve ``current`` once and read from that folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from pipeline import schema as S
from pipeline.catalogue import stage_dir
from pipeline.config import Config
from pipeline.io import MANIFEST, link_tree, read_manifest

log = logging.getLogger("pipeline")

PUBLISH = "publish"  # the folder of live publications (the stage writes publication/)
CURRENT = "current"
LEDGER = "runs.jsonl"
K = 10  # the gate's metric: NDCG@10 of the final recommendation ranking


@dataclass
class Decision:
    """The gate's verdict: ``passed`` and, per check, what was compared."""

    passed: bool
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        failed = [c["reason"] for c in self.checks.values() if not c["passed"]]
        return "; ".join(failed) or "every check passed"


def config_hash(cfg: Config) -> str:
    """A short hash of what the run computes from: paths, thread counts and the as-of
    time (the other half of a run id) left out, so runs of one setup share it."""
    tree = cfg.to_dict()
    for key in ("data_dir", "threads"):
        tree.pop(key, None)
    tree["ingest"].pop("as_of", None)
    return hashlib.blake2b(json.dumps(tree, sort_keys=True).encode(), digest_size=4).hexdigest()


def as_of_time(value: str) -> pd.Timestamp:
    """An as-of time as the cut-off reads it: naive UTC (ISO text or unix seconds)."""
    return S.coerce_timestamp(pd.Series([str(value)]), "as-of").iloc[0]


def run_id(as_of: str, cfg: Config) -> str:
    """``<as-of, UTC, YYYYmmddTHHMMSS>-<config hash>``: same data and setup, same id."""
    return f"{as_of_time(as_of):%Y%m%dT%H%M%S}-{config_hash(cfg)}"


def ledger(cfg: Config) -> list[dict[str, Any]]:
    """The ledger's entries, oldest first; a line torn by a crash is skipped, with a
    warning, rather than stopping every later run."""
    path = cfg.root / LEDGER
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip():
                log.warning("%s line %d is not JSON (a torn write?): skipped", path, number)
    return entries


def append_ledger(cfg: Config, entry: dict[str, Any]) -> None:
    """One JSON line, written with a single ``write`` on an O_APPEND descriptor."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(cfg.root / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def last_published(cfg: Config) -> dict[str, Any] | None:
    """The ledger entry of the publication ``current`` points to, if any (else the
    newest published one: a run killed between the swap and its ledger line)."""
    live = current(cfg)
    published = [e for e in ledger(cfg) if e.get("published") and e.get("publication")]
    return next((e for e in reversed(published) if e["publication"] == live),
                published[-1] if published else None)


def gate(cfg: Config, metrics: dict[str, Any], last: dict[str, Any] | None) -> Decision:
    """Check the evaluation against the gate's rules (see the module docstring)."""
    if not cfg.gate.enabled:
        return Decision(True, {"gate": {"passed": True, "reason": "gate disabled"}})
    ndcg = metrics["systems"]["final"][f"ndcg@{K}"]
    checks: dict[str, dict[str, Any]] = {}
    lift = metrics[f"lift_ndcg@{K}"]["recommendation"]
    # each check's reason says what was found, passed or not: the ledger keeps them all
    if cfg.gate.beat_channels:
        ok = lift["high"] >= 0
        checks["best_single"] = {
            "passed": ok, "baseline": lift["baseline"], "lift": lift["mean"],
            "interval": [lift["low"], lift["high"]],
            "reason": f"final NDCG@{K} {ndcg:.4f} is {'not ' * ok}significantly below "
                      f"{lift['baseline']} (lift {lift['mean']:+.4f} [{lift['low']:+.4f}, "
                      f"{lift['high']:+.4f}])"}
    if last is not None and last.get("ndcg@10") is not None:
        before = float(last["ndcg@10"])
        drop = (before - ndcg) / before if before > 0 else 0.0
        ok = drop <= cfg.gate.max_drop
        checks["last_published"] = {
            "passed": ok, "last_run": last["publication"], "last": before,
            "drop": drop, "max_drop": cfg.gate.max_drop,
            "reason": f"final NDCG@{K} {ndcg:.4f} is {abs(drop):.1%} "
                      f"{'below' if drop > 0 else 'above'} the last published run's "
                      f"{before:.4f} ({last['publication']}; gate.max_drop "
                      f"{cfg.gate.max_drop:.1%}{'' if ok else ' exceeded'})"}
    return Decision(all(c["passed"] for c in checks.values()), checks)


def current(cfg: Config) -> str | None:
    """The publication ``publish/current`` points to (None before the first one)."""
    link = cfg.root / PUBLISH / CURRENT
    if link.is_symlink():
        return os.readlink(link)
    if link.exists():
        raise RuntimeError(f"{link} should be a symbolic link to a publication, and is not: "
                           "move it away; the next run recreates it")
    return None


def live_matches(cfg: Config) -> bool:
    """Whether the live publication holds exactly the publication candidate's files."""
    live = current(cfg)
    if live is None or not (cfg.root / PUBLISH / live / MANIFEST).is_file():
        return False
    return (read_manifest(cfg.root / PUBLISH / live)["outputs"]
            == read_manifest(stage_dir(cfg, "publish"))["outputs"])


def release(cfg: Config, run: str) -> str:
    """Make the publication candidate live under ``publish/``; returns its folder name:
    the run id, or ``<run id>.<n>`` when a publication of that id with other content
    exists (same data and setup, new code)."""
    root = cfg.root / PUBLISH
    root.mkdir(parents=True, exist_ok=True)
    candidate = read_manifest(stage_dir(cfg, "publish"))["outputs"]
    name, n = run, 1
    while (root / name).exists():
        if (root / name / MANIFEST).is_file() and \
                read_manifest(root / name)["outputs"] == candidate:
            break
        n += 1
        name = f"{run}.{n}"
    if not (root / name).exists():
        tmp = root / f".{name}.tmp-{os.getpid()}"
        link_tree(stage_dir(cfg, "publish"), tmp)
        os.rename(tmp, root / name)
    pointer = root / f".{CURRENT}.tmp-{os.getpid()}"
    pointer.unlink(missing_ok=True)
    os.symlink(name, pointer)
    os.replace(pointer, root / CURRENT)
    prune(cfg)
    return name


def publication_order(name: str) -> tuple[str, int]:
    """A publication folder's place in ``prune``'s order: its run id (as-of first, then
    the config hash, which says nothing of time), then its number among publications of
    that id (``release``: ``<run id>.<n>``). By name alone ``.10`` would come before
    ``.9``, and a log without time, whose every run has the as-of 1970, publishes under
    one run id night after night."""
    run, _, n = name.partition(".")
    return run, int(n) if n.isdigit() else 1


def prune(cfg: Config) -> list[str]:
    """Remove publications beyond the newest ``publish.keep`` (never the live one) and
    temporary folders of killed releases; returns what was removed."""
    root = cfg.root / PUBLISH
    live = current(cfg)
    runs = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                   and not p.name.startswith(".")),
                  key=lambda p: publication_order(p.name), reverse=True)
    removed = [p for p in runs[cfg.publish.keep:] if p.name != live]
    removed += [p for p in root.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
    for path in removed:
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in removed]


def decision_record(decision: Decision) -> dict[str, Any]:
    return {**asdict(decision), "reason": decision.reason}
