"""Release: the gate between evaluation and users, the live pointer, and the run ledger.

A run's publication candidate (the ``publish`` stage's folder) goes live only if the
gate passes: the final ranking's NDCG@10 is not significantly below its best single
component (the paired bootstrap interval of the lift lies entirely below zero) and not
more than ``gate.max_drop`` (relative) below the last published run's. Going live is a
copy of hard links into ``publish/<run_id>/`` under a temporary name, renamed into
place, then ``publish/current`` (a symbolic link) swapped by an atomic rename, so a
reader sees the old publication or the new one, never half of one. The last
``publish.keep`` publications stay for rollback. Every run appends one JSON line to
``runs.jsonl`` (written and synced in one ``write``), whatever its outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.catalogue import stage_dir
from pipeline.config import Config
from pipeline.io import MANIFEST, link_tree

PUBLISH = "publish"
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
    """A short hash of what the run computes from (paths and thread counts left out)."""
    tree = cfg.to_dict()
    for key in ("data_dir", "threads"):
        tree.pop(key, None)
    return hashlib.blake2b(json.dumps(tree, sort_keys=True).encode(), digest_size=4).hexdigest()


def run_id(as_of: str, cfg: Config) -> str:
    """``<as-of as YYYYmmddTHHMMSS>-<config hash>``: the same data and config, the same id."""
    stamp = "".join(ch for ch in as_of if ch.isdigit())[:14]
    return f"{stamp[:8]}T{stamp[8:14].ljust(6, '0')}-{config_hash(cfg)}"


def ledger(cfg: Config) -> list[dict[str, Any]]:
    path = cfg.root / LEDGER
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    """The ledger entry of the publication ``current`` points to, if any."""
    live = current(cfg)
    return next((e for e in reversed(ledger(cfg))
                 if e.get("published") and e.get("run_id") == live), None)


def gate(cfg: Config, metrics: dict[str, Any], last: dict[str, Any] | None) -> Decision:
    """Check the evaluation against the gate's rules (see the module docstring)."""
    ndcg = metrics["systems"]["final"][f"ndcg@{K}"]
    checks: dict[str, dict[str, Any]] = {}
    lift = metrics[f"lift_ndcg@{K}"]["recommendation"]
    if cfg.gate.beat_channels:
        ok = lift["high"] >= 0
        checks["best_single"] = {
            "passed": ok, "baseline": lift["baseline"], "lift": lift["mean"],
            "interval": [lift["low"], lift["high"]],
            "reason": f"final NDCG@{K} {ndcg:.4f} is significantly below {lift['baseline']} "
                      f"(lift {lift['mean']:+.4f} [{lift['low']:+.4f}, {lift['high']:+.4f}])"}
    if last is not None and last.get("ndcg@10") is not None:
        before = float(last["ndcg@10"])
        drop = (before - ndcg) / before if before > 0 else 0.0
        checks["last_published"] = {
            "passed": drop <= cfg.gate.max_drop, "last_run": last["run_id"], "last": before,
            "drop": drop, "max_drop": cfg.gate.max_drop,
            "reason": f"final NDCG@{K} {ndcg:.4f} is {drop:.1%} below the last published "
                      f"run's {before:.4f} ({last['run_id']}; gate.max_drop "
                      f"{cfg.gate.max_drop:.0%})"}
    passed = not cfg.gate.enabled or all(c["passed"] for c in checks.values())
    return Decision(passed, checks)


def current(cfg: Config) -> str | None:
    """The run id ``publish/current`` points to (None before the first publication)."""
    link = cfg.root / PUBLISH / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def release(cfg: Config, run: str) -> Path:
    """Make the publication candidate live as ``publish/<run>``; returns its folder."""
    root = cfg.root / PUBLISH
    root.mkdir(parents=True, exist_ok=True)
    target = root / run
    if not (target / MANIFEST).is_file():
        tmp = root / f".{run}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        link_tree(stage_dir(cfg, PUBLISH), tmp)
        shutil.rmtree(target, ignore_errors=True)  # a release killed between the renames
        os.rename(tmp, target)
    pointer = root / f".{CURRENT}.tmp-{os.getpid()}"
    pointer.unlink(missing_ok=True)
    os.symlink(run, pointer)
    os.replace(pointer, root / CURRENT)
    prune(cfg)
    return target


def prune(cfg: Config) -> list[str]:
    """Remove publications beyond the newest ``publish.keep`` (never the live one) and
    temporary folders of killed releases; returns what was removed."""
    root = cfg.root / PUBLISH
    live = current(cfg)
    runs = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink()
                   and not p.name.startswith(".")), key=lambda p: p.name, reverse=True)
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
