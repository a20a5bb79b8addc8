"""`make bench-scale`: the large profile through every stage at several user counts.

Each size is one scheduled run (`python -m pipeline schedule`) of
``configs/synthetic-large.yaml`` with ``source.n_users`` set, in its own process under
``data_dir`` (so its peak memory is its own), read back from the run's ledger line:
wall seconds per stage, peak resident memory, final NDCG@10 and the lift over the best
single channel. Per stage, the cost per user at each size says whether it grows
linearly. ``SIZES`` (comma-separated users, default 100000,300000,1000000) and
``DATA_DIR`` (default ``data``) come from the environment; sizes already in the ledger
of an earlier run with the same config are read back, not rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import record
from pipeline.catalogue import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic-large.yaml"


def run_size(users: int, data_dir: Path) -> dict:
    """The ledger line of a scheduled run at ``users`` users (run now if not yet)."""
    dataset = f"synthetic-large-{users // 1000}k"
    ledger = data_dir / dataset / "runs.jsonl"
    done = [json.loads(line) for line in ledger.read_text().splitlines()] \
        if ledger.is_file() else []
    if not any(e.get("status") == 0 for e in done):
        status = subprocess.run([sys.executable, "-m", "pipeline", "schedule", "--config",
                                 str(CONFIG), "--set", f"dataset={dataset}", "--set",
                                 f"data_dir={data_dir}", "--set", f"source.n_users={users}"],
                                check=False, cwd=REPO).returncode
        done = [json.loads(line) for line in ledger.read_text().splitlines()] \
            if ledger.is_file() else []
        if not any(e.get("status") == 0 for e in done):  # killed (OOM) leaves no line
            raise RuntimeError(f"the {users:,}-user run exited {status} without a successful "
                               f"ledger line ({ledger}); rerun to resume it")
    return next(e for e in reversed(done) if e.get("status") == 0)


def peak_stage(entry: dict) -> str:
    """The first stage after which the run's peak memory had been reached."""
    peaks = {name: entry["stages"][name].get("peak_rss_mb") for name in STAGE_NAMES}
    top = max((p for p in peaks.values() if p is not None), default=None)
    return next((name for name, p in peaks.items() if p == top), "not recorded")


def main() -> dict:
    sizes = [int(s) for s in os.environ.get("SIZES", "100000,300000,1000000").split(",")]
    data_dir = Path(os.environ.get("DATA_DIR", REPO / "data")).resolve()
    runs = {users: run_size(users, data_dir) for users in sizes}
    header = "| stage | " + " | ".join(f"{u:,} users: s (ms/1k users)" for u in sizes) + " |"
    lines = [header, "|---" * (len(sizes) + 1) + "|"]
    for stage in STAGE_NAMES:
        seconds = {u: e["stages"][stage]["seconds"] for u, e in runs.items()}
        cells = [f"{s:.0f} ({s / u * 1e6:.0f})" for u, s in seconds.items()]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **wall** | " + " | ".join(f"**{e['seconds']:.0f}**" for e in runs.values())
                 + " |")
    lines.append("| peak RSS (GB), reached in | " + " | ".join(
        f"{e['peak_rss_mb'] / 1024:.2f} ({peak_stage(e)})" for e in runs.values()) + " |")
    lines.append("| final NDCG@10 | " + " | ".join(
        f"{e['ndcg@10']:.4f} [{e['ndcg@10_ci'][0]:.4f}, {e['ndcg@10_ci'][1]:.4f}]"
        for e in runs.values()) + " |")
    lines.append("| lift over " + "/".join(dict.fromkeys(e["baseline"] for e in runs.values()))
                 + " | " + " | ".join(f"{e['lift'][0]:+.4f} [{e['lift'][1]:+.4f}, "
                                      f"{e['lift'][2]:+.4f}]" for e in runs.values()) + " |")
    summary = {f"scale_{u}": {"seconds": e["seconds"], "peak_rss_mb": e["peak_rss_mb"],
                              "ndcg@10": e["ndcg@10"], "lift": e["lift"]}
               for u, e in runs.items()}
    record("scale", "make bench-scale SIZES=" + ",".join(map(str, sizes)), summary,
           "\n".join(lines))
    return summary


if __name__ == "__main__":
    main()
