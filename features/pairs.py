"""(user, item) pairs joined with what the fitting data knows of each side, and the
default FFM fields over them.

Side columns are prefixed ``user_``/``item_`` so both tables may carry a ``region``;
``item_popularity`` is the item's user count in the fitting data (0 for items it never
saw), so an FM can learn how much to trust popularity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.fields import EncodedFields, FieldEncoder

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
    return _attach(_attach(pairs, user_side, "user_id"), item_side, "item_id")


def _attach(frame: pd.DataFrame, side: pd.DataFrame, key: str) -> pd.DataFrame:
    out = frame.join(side, on=key)
    if "item_tags" in side.columns:  # a missing list must stay a list for the encoder
        out["item_tags"] = [t if isinstance(t, (list, np.ndarray)) else [] for t in
                            out["item_tags"]]
    return out


@dataclass(frozen=True)
class EncodedSide:
    """One side of the pairs: ``encoded`` holds each distinct id's slots (the columns
    ``slots`` of a full encoding) and ``of`` each pair's row in it."""

    encoded: EncodedFields
    slots: np.ndarray
    of: np.ndarray
    rows: np.ndarray | None = None  # each distinct id's row in the table it came from


@dataclass(frozen=True)
class EncodedTable:
    """Every row of one side table encoded once (its fields' slots), by id: a request's
    ids are then gathered instead of joined and encoded again (a served request's 300
    candidates: the join and encoding were most of its FM scoring)."""

    index: pd.Index
    encoded: EncodedFields
    slots: np.ndarray  # where its fields' slots lie in a full row

    def rows(self, ids: pd.Index) -> np.ndarray | None:
        """The table rows of ``ids``; None unless it holds every one, typed alike (an id
        it lacks is encoded from its join, missing values and all)."""
        if ids.dtype != self.index.dtype:
            return None
        rows = self.index.get_indexer(ids)
        return None if (rows < 0).any() else rows


def _side_fields(encoder: FieldEncoder, user_side: pd.DataFrame, item_side: pd.DataFrame
                 ) -> dict[str, list[str]] | None:
    """The fields each side's columns feed; None when a field reads anything else."""
    sources = {"user_id": {"user_id", *user_side.columns},  # once, not per field
               "item_id": {"item_id", *item_side.columns}}
    names = {key: [f.name for f in encoder.fields if f.source in read]
             for key, read in sources.items()}
    return names if sum(map(len, names.values())) == encoder.n_fields else None


def _encode_ids(encoder: FieldEncoder, ids: pd.Index, side: pd.DataFrame, key: str,
                names: list[str]) -> EncodedFields:
    return encoder.transform(_attach(pd.DataFrame({key: ids}), side, key), names)


def encode_tables(encoder: FieldEncoder, user_side: pd.DataFrame, item_side: pd.DataFrame
                  ) -> dict[str, EncodedTable]:
    """Both side tables encoded whole, for ``encode_sides`` to gather from (empty when
    a field reads anything but the two sides, or a table repeats an id)."""
    names = _side_fields(encoder, user_side, item_side)
    sides = {"user_id": user_side, "item_id": item_side}
    if names is None or not all(side.index.is_unique for side in sides.values()):
        return {}
    return {key: EncodedTable(side.index, _encode_ids(encoder, side.index, side, key,
                                                      names[key]),
                              encoder.slot_positions(names[key]))
            for key, side in sides.items()}


def encode_sides(encoder: FieldEncoder, pairs: pd.DataFrame, user_side: pd.DataFrame,
                 item_side: pd.DataFrame, tables: dict[str, EncodedTable] | None = None
                 ) -> tuple[EncodedSide, EncodedSide] | None:
    """The user and the item side of ``pairs``, each distinct user and item encoded once
    (or gathered from ``tables``, ``encode_tables``: the same slots); None when a field
    reads anything but the two sides."""
    names = _side_fields(encoder, user_side, item_side)
    if names is None:
        return None
    out = []
    for key, side in {"user_id": user_side, "item_id": item_side}.items():
        codes, distinct = pd.factorize(pairs[key], use_na_sentinel=False)
        distinct = pd.Index(distinct)
        table = (tables or {}).get(key)
        rows = table.rows(distinct) if table is not None else None
        part = (_encode_ids(encoder, distinct, side, key, names[key]) if rows is None else
                EncodedFields(table.encoded.ids[rows], table.encoded.weights[rows]))
        out.append(EncodedSide(part, encoder.slot_positions(names[key]), codes, rows))
    return out[0], out[1]


def encode_pairs(encoder: FieldEncoder, pairs: pd.DataFrame, user_side: pd.DataFrame,
                 item_side: pd.DataFrame) -> EncodedFields:
    """``encoder.transform(pair_frame(pairs, ...))``, with each distinct user and item
    encoded once and its slots gathered into every row that names it: candidates repeat
    each user about 300 times, and encoding them row by row was half of train-fm's time.
    Fields reading anything but the two sides fall back to the row-wise encoding."""
    sides = encode_sides(encoder, pairs, user_side, item_side)
    if sides is None:
        return encoder.transform(pair_frame(pairs, user_side, item_side))
    ids = np.empty((len(pairs), encoder.n_slots), np.int32)
    weights = np.empty((len(pairs), encoder.n_slots), np.float32)
    for side in sides:
        ids[:, side.slots] = side.encoded.ids[side.of]
        weights[:, side.slots] = side.encoded.weights[side.of]
    return EncodedFields(ids, weights)


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
