"""train-fm's training rows: positives (capped by a seeded sample) and their negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.interactions import IdIndex
from pipeline.config import FMConfig
from pipeline.stages.train_fm import labelled


def test_positives_are_capped_by_a_seeded_sample_with_their_negatives() -> None:
    rng = np.random.default_rng(0)
    pos = pd.DataFrame({"user_id": rng.integers(0, 50, 400), "item_id": rng.integers(0, 80, 400)})
    distinct = len(pos.drop_duplicates())
    users, items = IdIndex(np.arange(50)), IdIndex(np.arange(80))
    full = labelled(pos, users, items, FMConfig(max_positives=0), np.random.default_rng(1))
    assert (full["label"] == 1).sum() == distinct and (full["label"] == 0).sum() == 4 * distinct
    capped = [labelled(pos, users, items, FMConfig(max_positives=100), np.random.default_rng(1))
              for _ in range(2)]
    pd.testing.assert_frame_equal(*capped)  # the same sample for the same seed
    ones = capped[0][capped[0]["label"] == 1]
    assert len(ones) == 100 and (capped[0]["label"] == 0).sum() == 400
    assert len(ones.merge(pos.drop_duplicates())) == 100  # real positives only
