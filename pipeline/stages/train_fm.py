"""train-fm: FM/FFM feature-cross models.

Not built yet (the FM/FFM issue): nothing is trained; the candidates are passed through
unchanged and the log and manifest say so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import Config
from pipeline.io import link_or_copy
from pipeline.stages import stage_dir

log = logging.getLogger("pipeline")
STATUS = "pass-through: no FM/FFM model trained yet; candidates handed on unchanged"


def run(cfg: Config, out: Path) -> dict:
    link_or_copy(stage_dir(cfg, "features") / "candidates.parquet", out / "candidates.parquet")
    log.info("[train-fm] %s", STATUS)
    return {"status": STATUS}
