"""(user, item) pairs joined with what the fitting data knows of each side, and the
default FFM fields over them.

Side columns are prefixed ``user_``/``item_`` so both tables may carry a ``region``;
``item_popularity`` is the item's user count in the fitting data (0 for items it never
saw), so an FM can learn how much to trust popularity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

_ITEM_SIDE = ("category", "tags", "region")


def side_tables(users: pd.DataFrame, items: pd.DataFrame, fit: pd.DataFrame
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The users and items tables reduced to prefixed feature columns, indexed by id."""
    user_side = users.set_index("user_id").add_prefix("user_")
    item_side = items.set_index("item_id")[[c for c in _ITEM_SIDE if c in items.columns]]
    item_side = item_side.add_prefix("item_")
    counts = fit.drop_duplicates(["user_id", "item_id"]).groupby("item_id").size()
    item_side["item_popularity"] = counts.reindex(item_side.index, fill_value=0).to_numpy(
        np.float64)
    return user_side, item_side


def pair_frame(pairs: pd.DataFrame, user_side: pd.DataFrame, item_side: pd.DataFrame
               ) -> pd.DataFrame:
    """``pairs`` (user_id, item_id, ...) with both sides' feature columns attached."""
    out = pairs.join(user_side, on="user_id").join(item_side, on="item_id")
    if "item_tags" in out.columns:  # a missing list must stay a list for the encoder
        out["item_tags"] = [t if isinstance(t, (list, np.ndarray)) else [] for t in
                            out["item_tags"]]
    return out


def default_fields(user_side: pd.DataFrame, item_side: pd.DataFrame) -> dict[str, Any]:
    """Ids, every item attribute, and every user attribute: numbers bucketised by
    quantiles, tags as a multi-valued field, the rest categorical."""
    fields: dict[str, Any] = {"user_id": "categorical", "item_id": "categorical"}
    for table in (user_side, item_side):
        for column in table.columns:
            if column == "item_tags":
                fields[column] = "multi"
            elif pd.api.types.is_numeric_dtype(table[column].dtype):
                fields[column] = "numeric"
            else:
                fields[column] = "categorical"
    return fields
