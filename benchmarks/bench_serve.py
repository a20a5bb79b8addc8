"""`make bench-serve`: the HTTP service's latency on loopback, and its memory.

For each dataset (the synthetic default; ML-100K where ``../shared`` has it) a scheduled
run makes a live publication if there is none, then the service starts in its own
process (``python -m pipeline serve``) and takes, from this process:

- a **steady** load: ``RATE`` requests per second (default 100) sent on schedule,
  whatever the replies' pace (open loop, so a slow reply delays no later send and
  queueing shows in the latency), for ``REQUESTS`` requests (default 1,000);
- **saturation**: ``CLIENTS`` (default 8) clients each sending its next request when the
  last one answers, for ``SECONDS`` (default 10): the most the service answers a second.

Users are drawn with a fixed seed from the published ones. Per phase: p50 and p99 of
the request latency (send to full reply), requests answered a second, and failures;
the service's peak resident memory (VmHWM) at the end. Everything stays on 127.0.0.1,
bounded in count and time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import record
from pipeline.config import load_config
from pipeline.io import read_table
from pipeline.release import PUBLISH, current

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("ML100K_PATH", REPO.parent / "shared" / "datasets" / "ml-100k"))
PORT = 8765


def publication(config: Path, data_dir: Path) -> Path:
    """The live publication of ``config`` under ``data_dir`` (a scheduled run first if
    there is none)."""
    cfg = load_config(config, [f"data_dir={data_dir}"])
    if current(cfg) is None:
        subprocess.run([sys.executable, "-m", "pipeline", "schedule", "--config", str(config),
                        "--set", f"data_dir={data_dir}", "--force"], check=True, cwd=REPO)
    return cfg.root / PUBLISH / current(cfg)


def ask(user: object, k: int = 10) -> float:
    """Seconds for one /recommend request (raises on a failed one)."""
    body = json.dumps({"user_id": user, "k": k}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/recommend", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as reply:
        reply.read()
    return time.perf_counter() - started


def steady(users: np.ndarray, rate: float) -> dict:
    """Open loop: request i is sent at i / rate seconds, on its own thread."""
    latencies: list[float] = []
    failures = [0]

    def one(user: object) -> None:
        try:
            latencies.append(ask(user))
        except Exception:
            failures[0] += 1

    started = time.perf_counter()
    threads = []
    for i, user in enumerate(users):
        time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        threads.append(threading.Thread(target=one, args=(user,)))
        threads[-1].start()
    for t in threads:
        t.join()
    return summary(latencies, failures[0], time.perf_counter() - started)


def saturated(users: np.ndarray, clients: int, seconds: float) -> dict:
    """Closed loop: ``clients`` threads, each asking again as soon as it is answered."""
    latencies: list[float] = []
    failures = [0]
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            try:
                latencies.append(ask(users[i % len(users)]))
            except Exception:
                failures[0] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(latencies, failures[0], time.perf_counter() - started)


def summary(latencies: list[float], failures: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "failures": failures,
            "per_second": round(len(ms) / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def measure(name: str, config: Path, data_dir: Path) -> dict:
    folder = publication(config, data_dir)
    users = read_table(folder / "recommendations.parquet", ["user_id"])["user_id"].unique()
    rng = np.random.default_rng(0)
    service = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--config",
                                str(config), "--set", f"data_dir={data_dir}", "--port",
                                str(PORT)], cwd=REPO)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5).read()
                break
            except OSError:
                if time.time() > deadline or service.poll() is not None:
                    raise RuntimeError(f"the {name} service did not start") from None
                time.sleep(0.5)
        for user in rng.choice(users, 20):  # warm-up
            ask(user.item())
        picked = [u.item() for u in rng.choice(users, int(os.environ.get("REQUESTS", 1000)))]
        result = {"steady": steady(np.array(picked, dtype=object),
                                   float(os.environ.get("RATE", 100))),
                  "saturated": saturated(np.array(picked, dtype=object),
                                         int(os.environ.get("CLIENTS", 8)),
                                         float(os.environ.get("SECONDS", 10)))}
        status = Path(f"/proc/{service.pid}/status").read_text()
        result["peak_rss_mb"] = round(int(next(line.split()[1] for line in status.splitlines()
                                                if line.startswith("VmHWM"))) / 1024, 1)
    finally:
        service.terminate()
        service.wait(timeout=60)
    return result


def main() -> dict:
    data_dir = Path(os.environ.get("DATA_DIR", REPO / "data")).resolve()
    runs = {"synthetic": measure("synthetic", REPO / "configs" / "synthetic.yaml", data_dir)}
    if (ML100K / "u.data").is_file():
        runs["ml100k"] = measure("ml100k", REPO / "configs" / "movielens-100k.yaml", data_dir)
    rate = os.environ.get("RATE", "100")
    lines = ["| publication | load | requests | failures | answered/s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        for phase, label in (("steady", f"{rate}/s open loop"),
                             ("saturated", f"{os.environ.get('CLIENTS', 8)} clients")):
            p = r[phase]
            lines.append(f"| {name} | {label} | {p['requests']} | {p['failures']} | "
                         f"{p['per_second']} | {p['p50_ms']} | {p['p99_ms']} |")
    lines.append("")
    lines.append("Service peak memory (VmHWM): " + ", ".join(
        f"{name} {r['peak_rss_mb']:.0f} MB" for name, r in runs.items()) + ". Recommendation "
        "requests only: search and recent-event requests are not served yet (issue 18).")
    record("serving latency", "make bench-serve", runs, "\n".join(lines))
    return runs


if __name__ == "__main__":
    main()
