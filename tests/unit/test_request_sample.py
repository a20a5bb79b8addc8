"""train-rank's publication rankers read a seeded sample of whole requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import read_table, write_table
from pipeline.stages.train_rank import sampled_requests, with_positives


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


def test_each_chunk_is_filtered_as_it_is_read(tmp_path: Path) -> None:
    """``keep`` sees whole requests, chunk by chunk: the requests with a positive, as
    train-rank keeps them, come out as from the whole table, sampled or not."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": np.repeat(np.arange(12), 5),
                          "label": (rng.random(60) < 0.1).astype(np.int8),
                          "x": np.arange(60.0)})
    path = tmp_path / "features.parquet"
    write_table(frame, path)
    whole = with_positives(frame, "user_id")
    assert 0 < whole["user_id"].nunique() < 12
    for rows in (3, 8, 100):  # chunks cutting requests, and one chunk
        got = sampled_requests(path, "user_id", 0, seed=1, rows=rows,
                               keep=lambda c: with_positives(c, "user_id"))
        pd.testing.assert_frame_equal(got, whole)
        sample = sampled_requests(path, "user_id", 6, seed=1, rows=rows)
        kept = sampled_requests(path, "user_id", 6, seed=1, rows=rows,
                                keep=lambda c: with_positives(c, "user_id"))
        pd.testing.assert_frame_equal(kept, with_positives(sample, "user_id"))
    empty = tmp_path / "empty.parquet"
    write_table(frame.iloc[:0], empty)  # no rows: no chunk to keep, the empty table back
    pd.testing.assert_frame_equal(sampled_requests(empty, "user_id", 0, seed=1, rows=8,
                                                   keep=lambda c: c), read_table(empty))
