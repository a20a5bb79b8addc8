"""features: candidate features for the ranker.

Not built yet (the learning-to-rank issue): the recall candidates, which already carry
each channel's score and rank, are passed through unchanged, and the log says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import Config
from pipeline.io import link_or_copy
from pipeline.stages import stage_dir

log = logging.getLogger("pipeline")
STATUS = "pass-through: candidate features not built yet; recall candidates handed on unchanged"


def run(cfg: Config, out: Path) -> dict:
    source = stage_dir(cfg, "recall") / "test" / "candidates.parquet"
    link_or_copy(source, out / "candidates.parquet")
    log.info("[features] %s", STATUS)
    return {"status": STATUS}
