import numpy as np
import pandas as pd

from pipeline.ranking import proposing_channels


def test_proposing_channels_name_every_retrieving_channel_in_channel_order() -> None:
    rank = pd.array  # the merge keeps each channel's rank, null where it did not retrieve
    frame = pd.DataFrame({"b_rank": rank([1, None, 2, None], dtype="Int32"),
                          "a_rank": rank([3, 1, None, None], dtype="Int32"),
                          "c_rank": rank([None, 4, 5, 1], dtype="Int32")})
    got = proposing_channels(frame, ["b", "a", "c"])
    assert got.tolist() == ["b,a", "a,c", "b,c", "c"]
    assert got.dtype == object


def test_proposing_channels_equal_the_row_by_row_rule() -> None:
    rng = np.random.default_rng(2)
    names = [f"ch{i}" for i in range(7)]
    frame = pd.DataFrame({f"{n}_rank": pd.array(np.where(rng.random(500) < 0.4, 1, None),
                                                dtype="Int32") for n in names})
    expected = [",".join(n for n in names if pd.notna(row[f"{n}_rank"]))
                for _, row in frame.iterrows()]
    assert proposing_channels(frame, names).tolist() == expected
