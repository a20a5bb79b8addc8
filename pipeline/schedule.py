"""A scheduled run: backtest, gate, publish, and one ledger line, under a whole-run lock.

``python -m pipeline schedule --config C [--as-of T] [--force]`` (``make scheduled``)
is what a nightly cron job or timer calls over a log that grows. Stages rerun from the
first one whose inputs changed, by content hash (``runner.up_to_date``), and are reused
otherwise, so a rerun with nothing new only checks hashes. Exit statuses, one meaning
each:

- 0: published, already up to date (the live publication holds these very files), or
  a backfill older than the live publication (recorded, not published);
- 1: crashed (a traceback; the previous publication stays live);
- 2: bad config or data, nothing written;
- 3: refused by the release gate (the previous publication stays live);
- 75: another run of this dataset (or a stage command on the same folder) holds the
  lock (sysexits' "try again later").
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import sys
import time
from typing import Any

from pipeline.catalogue import STAGE_NAMES, artifact_path, stage_dir
from pipeline.config import Config, ConfigError
from pipeline.history import run_page, write_pages
from pipeline.io import RunLockedError, StageLockedError, git_commit, read_manifest, run_lock
from pipeline.release import (
    append_ledger,
    as_of_time,
    config_hash,
    current,
    decision_record,
    gate,
    last_published,
    live_matches,
    release,
    run_id,
)
from pipeline.runner import MissingInputError, run_stage, up_to_date
from pipeline.schema import DataError
from pipeline.tracking import log_run

log = logging.getLogger("pipeline")
OK, CRASHED, BAD_INPUT, REFUSED, LOCKED = 0, 1, 2, 3, 75


def run_stages(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every stage in order, reused where up to date; per stage its seconds, whether it
    was reused, and the run's peak resident memory so far (the first stage to reach the
    run's peak is the one that holds it)."""
    done: dict[str, dict[str, Any]] = {}
    for name in STAGE_NAMES:
        started = time.perf_counter()
        reused = up_to_date(cfg, name)
        if reused:
            log.info("[%s] up to date: reused", name)
        else:
            run_stage(cfg, name)
        done[name] = {"reused": reused, "seconds": round(time.perf_counter() - started, 3),
                      "peak_rss_mb": peak_rss_mb()}
    return done


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def inputs_record(cfg: Config) -> dict[str, Any]:
    """The ingested inputs: source files with their hashes, and row counts."""
    manifest = read_manifest(stage_dir(cfg, "ingest"))
    return {"files": manifest.get("source_files", {}), "counts": manifest.get("counts", {}),
            "as_of": manifest.get("as_of")}


def headline(cfg: Config) -> dict[str, Any]:
    """The evaluation's metrics and the final ranking's headline numbers."""
    metrics = json.loads(artifact_path(cfg, "metrics").read_text())
    final = metrics["systems"]["final"]
    lift = metrics["lift_ndcg@10"]["recommendation"]
    return {"metrics": metrics, "ndcg@10": final["ndcg@10"],
            "ndcg@10_ci": final.get("ndcg@10_ci"), "recall@10": final.get("recall@10"),
            "baseline": lift["baseline"],
            "baseline_ndcg@10": metrics["systems"][lift["baseline"]]["ndcg@10"],
            "lift": [lift["mean"], lift["low"], lift["high"]]}


def schedule(cfg: Config, force: bool = False) -> int:
    """One scheduled run (see the module docstring); returns its exit status. Every run
    that got the lock leaves a ledger line; a crash is recorded, then re-raised."""
    started = time.perf_counter()
    entry: dict[str, Any] = {"as_of": cfg.ingest.as_of, "config_hash": config_hash(cfg),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "git_commit": git_commit(), "host": platform.node(),
                             "forced": False}
    holder = {"as_of": cfg.ingest.as_of or "newest event", "config_hash": entry["config_hash"]}
    try:
        with run_lock(cfg.root, holder):
            try:
                entry["status"] = locked_run(cfg, force, entry)
            except (ConfigError, DataError, MissingInputError) as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                entry.update(status=BAD_INPUT, error=str(err))
            except StageLockedError as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                entry.update(status=LOCKED, error=str(err))
            except BaseException as err:
                entry.update(status=CRASHED, error=f"{type(err).__name__}: {err}")
                raise
            finally:
                entry["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                entry["seconds"] = round(time.perf_counter() - started, 3)
                entry["peak_rss_mb"] = peak_rss_mb()
                if entry.get("status") in (OK, REFUSED) and entry.get("run_id"):
                    entry["report"] = str(run_page(cfg, entry).relative_to(cfg.root))
                append_ledger(cfg, entry)
                record_run(cfg, entry)
    except RunLockedError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return LOCKED
    return int(entry["status"])


def record_run(cfg: Config, entry: dict[str, Any]) -> None:
    """The run's report page and the history page, and the run in MLflow when
    ``tracking.mlflow_uri`` is set. A failure here is logged, never the run's outcome:
    the ledger line already holds the truth."""
    try:
        write_pages(cfg, entry)
    except Exception:
        log.exception("[schedule] the run's report pages could not be written")
    if cfg.tracking.mlflow_uri:
        try:
            metrics = artifact_path(cfg, "metrics")
            pages = [p for p in (cfg.root / entry["report"],) if "report" in entry]
            log_run(cfg.tracking.mlflow_uri, cfg.tracking.experiment or cfg.dataset, entry,
                    cfg.to_dict(), json.loads(metrics.read_text())
                    if entry.get("status") in (OK, REFUSED) else None, pages)
        except Exception:
            log.exception("[schedule] the run could not be logged to MLflow at %s",
                          cfg.tracking.mlflow_uri)


def locked_run(cfg: Config, force: bool, entry: dict[str, Any]) -> int:
    """Stages, gate and release, recording each step in ``entry``; returns the status."""
    entry["stages"] = run_stages(cfg)
    entry["inputs"] = inputs_record(cfg)
    entry["as_of"] = as_of = str(as_of_time(cfg.ingest.as_of or entry["inputs"]["as_of"]))
    entry["run_id"] = run = run_id(as_of, cfg)
    top = headline(cfg)
    entry.update({k: top[k] for k in ("ndcg@10", "ndcg@10_ci", "recall@10", "baseline",
                                      "baseline_ndcg@10", "lift")})
    last = last_published(cfg)
    if live_matches(cfg):
        log.info("[schedule] %s is live and up to date", current(cfg))
        entry.update(published=True, publication=current(cfg),
                     decision={"reason": "already up to date"})
        return OK
    if last is not None and as_of_time(last["as_of"]) > as_of_time(as_of) and not force:
        reason = f"a backfill ({as_of}) older than the live {last['publication']} ({last['as_of']})"
        log.info("[schedule] %s is not published: %s", run, reason)
        entry.update(published=False, decision={"reason": reason})
        return OK
    decision = gate(cfg, top["metrics"], last)
    entry["decision"] = decision_record(decision)
    if not decision.passed and not force:
        live = current(cfg)
        log.error("[schedule] the gate refused %s: %s; %s", run, decision.reason,
                  f"{live} stays live" if live else "nothing is published yet")
        entry["published"] = False
        return REFUSED
    if not decision.passed:
        log.warning("[schedule] the gate refused %s (%s); --force publishes it", run,
                    decision.reason)
        entry["forced"] = True
    entry["publication"] = release(cfg, run)
    log.info("[schedule] published %s: %s", run, cfg.root / "publish" / entry["publication"])
    entry["published"] = True
    return OK
