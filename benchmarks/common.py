"""Benchmark plumbing: timing, peak memory, and the RESULTS.md section writer.

Targets are ratios against a reference measured in the same run on the same data, so a
slower or busier machine moves both sides alike.
"""

from __future__ import annotations

import json
import platform
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def best_of(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Fastest wall time of ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    """The CPU as ``lscpu`` names it (model name, family, model; cores): a ratio is a
    claim only with its machine, and a bare "AMD EPYC" names a generation of chips."""
    fields: dict[str, str] = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                   check=True).stdout.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    return (f"{fields.get('Model name', '?')} (lscpu: family {fields.get('CPU family', '?')}, "
            f"model {fields.get('Model', '?')}, {fields.get('CPU(s)', '?')} CPUs)")


def record(name: str, command: str, summary: dict[str, Any], table: str) -> None:
    """Replace this benchmark's latest run in RESULTS.md (its section up to its first
    ``###`` subsection: those record earlier changes, measured by hand, and stay) and
    print the JSON summary last."""
    section = (f"## {name}\n\nCommand: `{command}`  \nMachine: {platform.machine()}, "
               f"{cpu_model()}, Python {platform.python_version()}, "
               f"{time.strftime('%Y-%m-%d')}\n\n"
               f"{table}\n\n```json\n{json.dumps(summary, indent=2)}\n```\n")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^##+ |\Z)", re.S | re.M)
    found = pattern.search(text)
    text = (text[:found.start()] + section + "\n" + text[found.end():] if found
            else text + section + "\n")
    RESULTS.write_text(text)
    print(json.dumps(summary), file=sys.stdout, flush=True)
