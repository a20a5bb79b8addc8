"""split: deduplicate and split the ingested log by time (see ``pipeline.splitting``)."""

from __future__ import annotations

from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.io import write_table
from pipeline.splitting import PARTS, split


def run(cfg: Config, io: StageIO) -> dict:
    parts = split(io.read("interactions"), cfg.split)
    for name in PARTS:
        write_table(parts[name], io.output("split", part=name))
    counts = {name: len(parts[name]) for name in PARTS}
    users = {f"{name}_users": int(parts[name]["user_id"].nunique()) for name in PARTS}
    return {"counts": counts, **users}
