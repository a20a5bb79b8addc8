"""`make bench-serve`: the HTTP service's latency on loopback, and its memory.

For each dataset (the synthetic default; ML-100K where ``../shared`` has it) a scheduled
run makes a live publication if there is none, then the service starts in its own
process (``python -m pipeline serve``) and takes, from this process:

- **one client** sending its next request when the last one answers, for 5 s: the
  time one request costs, without queueing;
- **saturation**: ``CLIENTS`` (default 4) clients each sending its next request when the
  last one answers, for ``SECONDS`` (default 10): the most the service answers a second;
- a **steady** load: ``RATE`` requests per second (default 100) sent on schedule,
  whatever the replies' pace (open loop, so a slow reply delays no later send and
  queueing shows in the latency), for ``REQUESTS`` requests (default 300);

for each kind of request: a recommendation, a search (a user and a query from the
fitting log) and a recommendation carrying one recent click (a random item). Users,
queries and items are drawn with a fixed seed. Per phase: p50 and p99 of
the request latency (send to full reply), requests answered a second, and failures;
in the steady phase, the cores that the service, its compute process and this generator
each used; the service's peak resident memory (VmHWM) at the end. Between phases the service
drains what the last one queued (a timed-out request is still computed). Everything
stays on 127.0.0.1 (port ``PORT``, default 8765), bounded in count and time.

Before the service starts, the same publication is loaded in this process and the
first 100 requests of each kind are answered by the service's own ``answer``: the
median CPU milliseconds of one request (``cpu_ms``), which other work on the cores
inflates far less than the latencies. The 1-minute load average before and after
each publication's run is recorded beside it (``load_average``). This process's
objects are then left out of its garbage collector's full passes (``gc.freeze``):
one pass over what the loaded publication left behind took 182 ms, during which no
reply was read, and showed as the 99th percentile of the service's latency. The
memory is the peak resident set of the service's processes (HTTP, compute), summed.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import record
from pipeline.config import load_config
from pipeline.io import read_table
from pipeline.release import PUBLISH, current
from pipeline.service import RecommendRequest, answer
from pipeline.serving import Recommender

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("ML100K_PATH", REPO.parent / "shared" / "datasets" / "ml-100k"))
PORT = int(os.environ.get("PORT", 8765))


def publication(config: Path, data_dir: Path) -> Path:
    """The live publication of ``config`` under ``data_dir`` (a scheduled run first if
    there is none)."""
    cfg = load_config(config, [f"data_dir={data_dir}"])
    if current(cfg) is None:
        subprocess.run([sys.executable, "-m", "pipeline", "schedule", "--config", str(config),
                        "--set", f"data_dir={data_dir}", "--force"], check=True, cwd=REPO)
    return cfg.root / PUBLISH / current(cfg)


def ask(fields: dict, timeout: float = 30) -> float:
    """Seconds for one /recommend request (raises on a failed one)."""
    body = json.dumps(fields).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/recommend", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        reply.read()
    return time.perf_counter() - started


def steady(requests: list[dict], rate: float) -> dict:
    """Open loop: request i is sent at i / rate seconds, on its own thread."""
    latencies: list[float] = []
    failures = [0]

    def one(fields: dict) -> None:
        try:
            latencies.append(ask(fields))
        except Exception:
            failures[0] += 1

    started = time.perf_counter()
    threads = []
    for i, fields in enumerate(requests):
        time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        threads.append(threading.Thread(target=one, args=(fields,)))
        threads[-1].start()
    for t in threads:
        t.join()
    return summary(latencies, failures[0], time.perf_counter() - started)


def saturated(requests: list[dict], clients: int, seconds: float) -> dict:
    """Closed loop: ``clients`` threads, each asking again as soon as it is answered."""
    latencies: list[float] = []
    failures = [0]
    stop = time.perf_counter() + seconds

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            try:
                latencies.append(ask(requests[i % len(requests)]))
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


def plain(value: object) -> object:
    """A numpy scalar as the Python value JSON takes."""
    return value.item() if isinstance(value, np.generic) else value


def kinds_of_request(folder: Path, n: int) -> dict[str, list[dict]]:
    """``n`` seeded requests of each kind from a publication's users, queries and items."""
    rng = np.random.default_rng(0)
    users = read_table(folder / "recommendations.parquet", ["user_id"])["user_id"].unique()
    items = read_table(folder / "items.parquet", ["item_id"])["item_id"].to_numpy()
    fit = pd.concat([read_table(p) for p in sorted((folder / "fitting").glob("*.parquet"))])
    asked = fit[fit["query"].notna()] if "query" in fit.columns else fit.iloc[:0]
    picked = rng.choice(users, n)
    found = {"recommendation": [{"user_id": plain(u), "k": 10} for u in picked],
             "with recent click": [{"user_id": plain(u), "k": 10,
                                    "recent": [{"item_id": plain(rng.choice(items))}]}
                                   for u in picked]}
    if (folder / "search" / "blend.json").is_file() and len(asked):
        rows = asked.iloc[rng.choice(len(asked), n)]
        found["search"] = [{"user_id": plain(u), "query": str(q), "k": 10}
                           for u, q in zip(rows["user_id"].to_numpy(), rows["query"],
                                           strict=True)]
    return found


def cpu_per_request(folder: Path, requests: dict[str, list[dict]]) -> dict[str, float]:
    """Per kind, the median CPU milliseconds of one request computed in this process by
    the service's own ``answer`` (no HTTP, no queue): the service time that load on
    other processes does not inflate as much as it does wall time."""
    recommender = Recommender.load(folder)
    found = {}
    for kind, bodies in requests.items():
        asked = [RecommendRequest(**fields) for fields in bodies[:100]]
        for body in asked[:10]:  # warm-up
            answer(recommender, body)
        spent = []
        for body in asked:
            started = time.process_time()
            answer(recommender, body)
            spent.append(time.process_time() - started)
        found[kind] = round(float(np.median(spent)) * 1000, 2)
    return found


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (the service's compute process)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_with_cores(requests: list[dict], rate: float, service: int) -> dict:
    """``steady``, plus the cores that the service, its compute process and this load
    generator each used meanwhile (CPU seconds over the phase's wall seconds): who held
    the 2 cores while requests queued."""
    processes = {"service": [service], "compute": children(service)}

    def used() -> dict[str, float]:
        return {**{name: sum(cpu_seconds(pid) for pid in pids)
                   for name, pids in processes.items()},
                "generator": sum(os.times()[:2])}

    before, started = used(), time.perf_counter()
    found = steady(requests, rate)
    after, wall = used(), time.perf_counter() - started
    found["cores"] = {name: round((after[name] - before[name]) / wall, 2) for name in before}
    return found


def peak_kb(pid: int) -> int:
    """A process's peak resident memory (VmHWM), kB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM")))


def measure(name: str, config: Path, data_dir: Path) -> dict:
    folder = publication(config, data_dir)
    requests = kinds_of_request(folder, int(os.environ.get("REQUESTS", 300)))
    load_before = os.getloadavg()[0]
    cpu_ms = cpu_per_request(folder, requests)
    gc.collect()
    gc.freeze()
    service = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--config",
                                str(config), "--set", f"data_dir={data_dir}", "--port",
                                str(PORT)], cwd=REPO)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5).read()
            except OSError:
                if time.time() > deadline or service.poll() is not None:
                    raise RuntimeError(f"the {name} service did not start") from None
                time.sleep(0.5)
                continue
            if service.poll() is not None:  # an older service holds the port
                raise RuntimeError(f"port {PORT} is taken: the {name} service exited")
            break
        result: dict = {}
        for kind, bodies in requests.items():
            for fields in bodies[:10]:  # warm-up
                ask(fields)
            result[kind] = {"one client": saturated(bodies[:50], 1, 5.0)}
            ask(bodies[0], timeout=600)  # drained: computed after everything queued
            result[kind]["saturated"] = saturated(bodies, int(os.environ.get("CLIENTS", 4)),
                                                  float(os.environ.get("SECONDS", 10)))
            ask(bodies[0], timeout=600)
            result[kind]["steady"] = steady_with_cores(
                bodies, float(os.environ.get("RATE", 100)), service.pid)
            ask(bodies[0], timeout=600)
        result["cpu_ms"] = cpu_ms
        result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        result["peak_rss_mb"] = round(sum(peak_kb(pid) for pid in (
            service.pid, *children(service.pid))) / 1024, 1)
    finally:
        service.terminate()
        service.wait(timeout=60)
    return result


def request_kinds(result: dict) -> dict:
    """A publication's results per kind of request (without its CPU, load and memory)."""
    return {kind: phases for kind, phases in result.items()
            if kind not in ("peak_rss_mb", "cpu_ms", "load_average")}


def main() -> dict:
    data_dir = Path(os.environ.get("DATA_DIR", REPO / "data")).resolve()
    runs = {"synthetic": measure("synthetic", REPO / "configs" / "synthetic.yaml", data_dir)}
    if (ML100K / "u.data").is_file():
        runs["ml100k"] = measure("ml100k", REPO / "configs" / "movielens-100k.yaml", data_dir)
    rate = os.environ.get("RATE", "100")
    lines = ["| publication | request | load | requests | failures | answered/s | p50 ms | "
             "p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        for kind, phases in request_kinds(r).items():
            for phase, label in (("one client", "one client"),
                                 ("saturated", f"{os.environ.get('CLIENTS', 4)} clients"),
                                 ("steady", f"{rate}/s open loop")):
                p = phases[phase]
                lines.append(f"| {name} | {kind} | {label} | {p['requests']} | "
                             f"{p['failures']} | {p['per_second']} | {p['p50_ms']} | "
                             f"{p['p99_ms']} |")
    lines.append("")
    lines.append("CPU per request in process (median ms): " + "; ".join(
        f"{name} " + ", ".join(f"{kind} {ms}" for kind, ms in r["cpu_ms"].items())
        for name, r in runs.items()) + ". Load average (1 min) before and after each "
        "publication's run: " + ", ".join(f"{name} {r['load_average']}"
                                          for name, r in runs.items()) + ".")
    lines.append("")
    lines.append(f"Cores used during the {rate}/s phase by the service, its compute process "
                 "and the load generator: " + "; ".join(
                     f"{name} {kind} " + "/".join(
                         f"{phases['steady']['cores'][p]:.2f}"
                         for p in ("service", "compute", "generator"))
                     for name, r in runs.items()
                     for kind, phases in request_kinds(r).items()) + ".")
    lines.append("")
    lines.append("Service peak memory (VmHWM): " + ", ".join(
        f"{name} {r['peak_rss_mb']:.0f} MB" for name, r in runs.items()) + ", the service's "
        "processes summed. The load "
        "generator runs on the same 2 cores as the service.")
    record("serving latency", "make bench-serve", runs, "\n".join(lines))
    return runs


if __name__ == "__main__":
    main()
