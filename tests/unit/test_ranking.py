import numpy as np
import pandas as pd
import pytest

from pipeline.ranking import proposing_channels, top_k


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
    rows = rng.permutation(500)[:40]
    assert proposing_channels(frame, names, rows).tolist() == [expected[r] for r in rows]


def sorted_frame_top_k(frame: pd.DataFrame, key: str, scores: np.ndarray, k: int,
                       extra: tuple[str, ...]) -> pd.DataFrame:
    """The rule as a frame sort: by request, score descending (NaN last), merge rank."""
    keys = [c for c in (key, "user_id") if c in frame.columns]
    ordered = frame[[*dict.fromkeys(keys), "item_id", "merge_rank", *extra]].assign(
        score=scores)
    ordered = ordered.sort_values([key, "score", "merge_rank"], ascending=[True, False, True],
                                  kind="stable")
    ordered["rank"] = (ordered.groupby(key, sort=False).cumcount() + 1).astype(np.int32)
    return ordered[ordered["rank"] <= k].drop(columns="merge_rank").reset_index(drop=True)


@pytest.mark.parametrize("key", ["user_id", "case_id"])
def test_top_k_equals_sorting_the_frame(key: str) -> None:
    rng = np.random.default_rng(4)
    n = 2000
    frame = pd.DataFrame({"case_id": rng.integers(0, 60, n), "user_id": rng.choice(
        np.array(["u9", "u10", "a", "b2"], dtype=object), n),
        "item_id": rng.integers(0, 500, n), "merge_rank": rng.integers(1, 40, n),
        "x_rank": pd.array(np.where(rng.random(n) < 0.5, 1, None), dtype="Int32"),
        "y_rank": pd.array(np.where(rng.random(n) < 0.5, 2, None), dtype="Int32")})
    frame["channels"] = proposing_channels(frame, ["x", "y"])
    for scores in (rng.integers(0, 5, n).astype(np.float64),  # many ties
                   np.where(rng.random(n) < 0.1, np.nan, rng.choice([0.0, -0.0, 1.5], n)),
                   rng.random(n).astype(np.float32)):
        for k in (1, 10, 100):
            pd.testing.assert_frame_equal(
                top_k(frame, key, scores, k, ["x", "y"]),
                sorted_frame_top_k(frame, key, scores, k, ("channels",)), check_exact=True)
            pd.testing.assert_frame_equal(
                top_k(frame, key, scores, k),
                sorted_frame_top_k(frame, key, scores, k, ()), check_exact=True)
    assert top_k(frame.iloc[:0], key, np.zeros(0), 5).empty
