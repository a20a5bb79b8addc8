"""train-rank: the learning-to-rank model.

Not built yet (the learning-to-rank issue): no ranker is trained, so ``rank`` orders the
candidates by their merge order. The manifest records that, and no model file exists.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import Config

log = logging.getLogger("pipeline")
STATUS = "pass-through: no ranker trained yet; rank will use the recall merge order"


def run(cfg: Config, out: Path) -> dict:
    log.info("[train-rank] %s", STATUS)
    return {"status": STATUS, "ranker": None}
