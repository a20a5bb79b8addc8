"""A served request's frames skip the Parquet round trip only where it changes nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.serving import through_arrow


def round_trip(frame: pd.DataFrame) -> pd.DataFrame:
    return pa.Table.from_pandas(frame, preserve_index=False).to_pandas()


def test_a_frame_arrow_keeps_as_it_is_is_passed_on_equal_to_the_round_trip() -> None:
    frame = pd.DataFrame(
        {
            "user_id": np.array([3, 1, 2], np.int64),
            "merge_rank": np.array([1, 2, 3], np.int8),
            "score": np.array([0.5, np.nan, -0.0], np.float32),
            "x": [1.0, 2.0, np.inf],
            "hit": [True, False, True],
            "rank": pd.array([1, None, 3], dtype="Int32"),
            "share": pd.array([0.5, None, 1.0], dtype="Float64"),
            "flag": pd.array([True, None, False], dtype="boolean"),
            "source": pd.array(["a", None, "c"], dtype=pd.StringDtype("pyarrow")),
            "title": pd.Series(["x", "y", np.nan], dtype="str"),
        }
    )
    assert through_arrow(frame) is frame
    pd.testing.assert_frame_equal(through_arrow(frame), round_trip(frame), check_exact=True)


def test_other_columns_or_an_index_take_the_round_trip() -> None:
    python = pd.DataFrame({"s": pd.array(["a", None], dtype=pd.StringDtype("python"))})
    when = pd.DataFrame({"ts": pd.to_datetime([0, 1], unit="s")})
    indexed = pd.DataFrame({"x": [1.0, 2.0]}, index=[5, 7])
    for frame in (python, when, indexed, pd.DataFrame({"x": [1.0, 2.0]}).iloc[1:]):
        got = through_arrow(frame)
        assert got is not frame
        pd.testing.assert_frame_equal(got, round_trip(frame), check_exact=True)
    assert through_arrow(python)["s"].dtype.storage == "pyarrow"  # as the batch reads it
    assert through_arrow(indexed).index.equals(pd.RangeIndex(2))
