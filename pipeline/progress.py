"""Progress for long loops: a bar on a terminal, a log line every so often in batch jobs.

Scheduled jobs write to log files, where tqdm turns itself off; an engineer tailing the
log still wants to know how far the stage is and when it will end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("pipeline")


def progress(items: Iterable[T], label: str, every_seconds: float = 30.0,
             total: int | None = None) -> Iterator[T]:
    """Yield ``items``, showing a bar on a TTY and logging done/total and ETA otherwise;
    ``total`` is the expected count for an iterator without a length."""
    total = len(items) if total is None else total  # type: ignore[arg-type]
    bar = tqdm(items, desc=label, unit="chunk", disable=None, total=total)
    started = last = time.perf_counter()
    for done, item in enumerate(bar, start=1):
        yield item
        now = time.perf_counter()
        if bar.disable and now - last >= every_seconds and done < total:
            eta = (now - started) / done * (total - done)
            log.info("[%s] %d/%d chunks (%.0f%%), about %.0fs left", label, done, total,
                     100 * done / total, eta)
            last = now
