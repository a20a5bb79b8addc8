"""The synthetic log as a team would have it: daily partitions that grow by a day.

``python -m pipeline simulate --config configs/synthetic.yaml --out DIR [--through DATE]``
writes the generator's items and users tables and its interactions up to ``DATE`` (all
by default) as ``DIR/logs/dt=YYYY-MM-DD/part-0.parquet``, one partition a day. Rerun
with a later date, it adds the new days and leaves the existing files untouched, as a
log shipper would: ``configs/synthetic-daily.yaml`` reads them back through the
``files`` source, which is how the scheduled flow runs on the embedded default.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline import schema as S
from pipeline.config import SyntheticSource
from pipeline.io import write_table
from pipeline.sources.synthetic import generate


def _write_once(df: pd.DataFrame, path: Path) -> bool:
    """Write ``path`` atomically unless it already exists; True when written."""
    if path.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write_table(df, tmp)
    os.replace(tmp, path)
    return True


def simulate(src: SyntheticSource, seed: int, out: Path, through: str | None = None
             ) -> list[Path]:
    """Write the partitions up to ``through`` (inclusive, a date); returns those written."""
    raw = generate(src, seed)
    (_, interactions), = raw.interactions
    days = interactions[S.TS].dt.floor("D")
    if through is not None:
        keep = days <= pd.Timestamp(through)
        interactions, days = interactions[keep], days[keep]
    written = []
    for table, (_, df) in (("items", raw.items), ("users", raw.users)):
        if _write_once(df, out / f"{table}.parquet"):
            written.append(out / f"{table}.parquet")
    for day, part in interactions.groupby(days, sort=True):
        path = out / "logs" / f"dt={day:%Y-%m-%d}" / "part-0.parquet"
        if _write_once(part.reset_index(drop=True), path):
            written.append(path)
    return written
