"""``evaluate.unique_hits`` by hand and against the pandas merge it replaced."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.evaluate import unique_hits


def frame(pairs: list[tuple[object, object]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["user_id", "item_id"])


def merged(lists: dict[str, pd.DataFrame], relevant: pd.DataFrame) -> dict[str, float]:
    """The definition as a merge and group-by over every listed row."""
    pairs = relevant[["user_id", "item_id"]].drop_duplicates()
    found = pd.concat([df[["user_id", "item_id"]].assign(channel=name)
                       for name, df in lists.items()], ignore_index=True).merge(pairs)
    finders = found.groupby(["user_id", "item_id"])["channel"].transform("size")
    only = found[finders == 1]["channel"].value_counts()
    return {name: float(only.get(name, 0) / max(len(pairs), 1)) for name in lists}


def test_by_hand() -> None:
    # relevant pairs: (1, a), (1, b), (2, a), (3, z); 'z' is no listed item
    relevant = frame([(1, "a"), (1, "b"), (2, "a"), (3, "z"), (1, "a")])
    lists = {"x": frame([(1, "a"), (2, "a"), (2, "c")]),
             "y": frame([(1, "a"), (1, "b"), (1, "b"), (9, "a")]),  # lists (1, b) twice
             "empty": frame([])}
    # (2, a) only by x; (1, b) only by y but twice, so not unique; (1, a) by both
    assert unique_hits(lists, relevant) == {"x": 0.25, "y": 0.0, "empty": 0.0}
    assert unique_hits(lists, relevant.iloc[:0]) == {"x": 0.0, "y": 0.0, "empty": 0.0}


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_merge_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    relevant = frame(list(zip(rng.integers(0, 50, 200), rng.integers(0, 80, 200),
                              strict=True)))
    lists = {f"c{c}": frame(list(zip(rng.integers(0, 60, 900), rng.integers(0, 90, 900),
                                     strict=True))) for c in range(4)}
    assert unique_hits(lists, relevant) == merged(lists, relevant)
