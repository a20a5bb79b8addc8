"""split: deduplicate and split the ingested log by time (see ``pipeline.splitting``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.io import read_table, write_table
from pipeline.splitting import PARTS, split
from pipeline.stages import stage_dir


def run(cfg: Config, out: Path) -> dict:
    interactions = read_table(stage_dir(cfg, "ingest") / "interactions.parquet")
    parts = split(interactions, cfg.split)
    for name in PARTS:
        write_table(parts[name], out / f"{name}.parquet")
    counts = {name: len(parts[name]) for name in PARTS}
    users = {f"{name}_users": int(parts[name]["user_id"].nunique()) for name in PARTS}
    return {"counts": counts, **users}
