"""train-rank's publication rankers read a seeded sample of whole requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import write_table
from pipeline.stages.train_rank import sampled_requests


def test_a_seeded_sample_of_whole_requests(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": np.repeat(np.arange(10), 7), "x": np.arange(70.0)})
    path = tmp_path / "features.parquet"
    write_table(frame, path)
    got = sampled_requests(path, "user_id", 3, seed=1, rows=8)  # chunks cut requests
    assert got["user_id"].nunique() == 3
    assert (got.groupby("user_id").size() == 7).all()  # every row of a kept request
    pd.testing.assert_frame_equal(got, frame[frame["user_id"].isin(got["user_id"])]
                                  .reset_index(drop=True))
    pd.testing.assert_frame_equal(got, sampled_requests(path, "user_id", 3, seed=1, rows=50))
    pd.testing.assert_frame_equal(sampled_requests(path, "user_id", 0, seed=1, rows=8), frame)
    pd.testing.assert_frame_equal(sampled_requests(path, "user_id", 10, seed=1, rows=8), frame)
