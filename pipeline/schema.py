"""The data contract: column names, and validation at each stage boundary.

Every check names the table's origin (a file path, or the generator), the column, how
many rows fail and the first few of them (data rows counted from 1, header excluded),
so a user can find the bad line without opening a debugger.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

USER = "user_id"
ITEM = "item_id"
TS = "ts"
EVENT = "event"
WEIGHT = "weight"
QUERY = "query"
REGION = "region"
TITLE = "title"
TEXT = "text"
CATEGORY = "category"
TAGS = "tags"
CREATED_TS = "created_ts"
RANK = "rank"
SCORE = "score"

INTERACTION_REQUIRED = (USER, ITEM, TS, EVENT, WEIGHT)
INTERACTION_OPTIONAL = (QUERY, REGION)
ITEM_REQUIRED = (ITEM, TITLE)
ITEM_OPTIONAL = (TEXT, CATEGORY, TAGS, REGION, CREATED_TS)
USER_REQUIRED = (USER,)

_EXAMPLES = 5


class DataError(ValueError):
    """Input that breaks the data contract; nothing is written when it is raised."""


def fail(origin: str, column: str | None, problem: str, bad: pd.Series | np.ndarray,
         values: pd.Series | None = None) -> None:
    """Raise a DataError naming origin, column, count and the first offending rows."""
    mask = np.asarray(bad, dtype=bool)
    positions = np.flatnonzero(mask)
    rows = ", ".join(str(p + 1) for p in positions[:_EXAMPLES])
    where = f"{origin}: column '{column}'" if column else origin
    detail = f"{problem}: {len(positions)} row(s), first at data row(s) {rows}"
    if values is not None and len(positions):
        shown = ", ".join(repr(v) for v in values.iloc[positions[:_EXAMPLES]].tolist())
        detail += f" (values {shown})"
    raise DataError(f"{where}: {detail}")


def require_columns(df: pd.DataFrame, required: Iterable[str], origin: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{origin}: missing required column(s) {missing}; found {list(df.columns)}"
        )


def require_rows(df: pd.DataFrame, origin: str) -> None:
    if len(df) == 0:
        raise DataError(f"{origin}: table is empty")


def _no_nulls(series: pd.Series, origin: str) -> None:
    nulls = series.isna()
    if nulls.any():
        fail(origin, str(series.name), "null values", nulls)


def coerce_ids(series: pd.Series, origin: str) -> pd.Series:
    """Ids stay int64 when every value is integral, otherwise become strings (raw ids kept)."""
    _no_nulls(series, origin)
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype("int64")
    if pd.api.types.is_float_dtype(series.dtype):
        frac = series != np.floor(series)
        if frac.any():
            fail(origin, str(series.name), "ids must be integers or strings", frac, series)
        return series.astype("int64")
    return coerce_text(series, origin).astype("string[pyarrow]")


def coerce_text(series: pd.Series, origin: str) -> pd.Series:
    """Text as strings; raw bytes must decode as UTF-8 (reported by row when not)."""
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return series
    values = series.to_numpy(dtype=object, copy=True)
    is_bytes = np.fromiter((isinstance(v, bytes) for v in values), bool, len(values))
    if is_bytes.any():
        bad = np.zeros(len(values), bool)
        for i in np.flatnonzero(is_bytes):
            try:
                values[i] = values[i].decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
        if bad.any():
            fail(origin, str(series.name), "text is not valid UTF-8", bad)
    out = pd.Series(values, index=series.index, name=series.name)
    return out.astype("string[pyarrow]")


def coerce_timestamp(series: pd.Series, origin: str, unit: str | None = None,
                     allow_null: bool = False) -> pd.Series:
    """Timestamps as naive UTC datetime64[us]; unix seconds/ms or ISO text accepted."""
    if not allow_null:
        _no_nulls(series, origin)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        out = series.dt.tz_convert("UTC").dt.tz_localize(None) if series.dt.tz else series
        return out.astype("datetime64[us]")
    if unit is None and pd.api.types.is_numeric_dtype(series.dtype):
        unit = "s"
    if unit is None:
        # Text: ISO, or unix seconds as text (one bad value turns a CSV column to text);
        # take the reading that parses more rows, so the report names the odd ones out.
        unit, parsed = "iso", _parse_timestamp(series, "iso")
        if parsed.isna().sum() > series.isna().sum():
            secs = _parse_timestamp(series, "s")
            if secs.notna().sum() > parsed.notna().sum():
                unit, parsed = "s", secs
    else:
        parsed = _parse_timestamp(series, unit)
    bad = parsed.isna() & (series.notna() if allow_null else True)
    if bad.any():
        fail(origin, str(series.name), f"unparsable timestamp (expected {unit})", bad, series)
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


def _parse_timestamp(series: pd.Series, unit: str) -> pd.Series:
    if unit == "iso":
        return pd.to_datetime(series.astype("string"), errors="coerce", utc=True,
                              format="ISO8601")
    numeric = pd.to_numeric(series, errors="coerce")
    return pd.to_datetime(numeric, unit=unit, errors="coerce", utc=True)


def coerce_weight(series: pd.Series, origin: str) -> pd.Series:
    numeric = pd.to_numeric(series, errors="coerce").astype("float64")
    bad = ~np.isfinite(numeric.to_numpy(na_value=np.nan))
    if bad.any():
        fail(origin, str(series.name), "weight must be a finite number", bad, series)
    return numeric


def unique_ids(series: pd.Series, origin: str) -> None:
    dup = series.duplicated(keep="first")
    if dup.any():
        fail(origin, str(series.name), "duplicate ids", dup, series)


def validate_interactions(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Check and normalise one interactions table (required columns, types, nulls)."""
    require_rows(df, origin)
    require_columns(df, INTERACTION_REQUIRED, origin)
    out = pd.DataFrame(index=df.index)
    out[USER] = coerce_ids(df[USER], origin)
    out[ITEM] = coerce_ids(df[ITEM], origin)
    out[TS] = coerce_timestamp(df[TS], origin)
    out[EVENT] = coerce_text(df[EVENT].astype(object).where(df[EVENT].notna(), None), origin)
    _no_nulls(out[EVENT], origin)
    out[WEIGHT] = coerce_weight(df[WEIGHT], origin)
    for col in INTERACTION_OPTIONAL:
        if col in df.columns:
            out[col] = coerce_text(df[col], origin)
    return out.reset_index(drop=True)


def _keyed_table(df: pd.DataFrame, origin: str, key: str, required: Iterable[str]
                 ) -> pd.DataFrame:
    """A copy of a side table with its rows, columns and unique ids checked."""
    require_rows(df, origin)
    require_columns(df, required, origin)
    out = df.copy()
    out[key] = coerce_ids(df[key], origin)
    unique_ids(out[key], origin)
    return out


def validate_items(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    out = _keyed_table(df, origin, ITEM, ITEM_REQUIRED)
    for col in (TITLE, TEXT, CATEGORY, REGION):
        if col in out.columns:
            out[col] = coerce_text(out[col], origin)
    blank = (out[TITLE].isna() | (out[TITLE].fillna("").str.strip() == "")).to_numpy(bool)
    if blank.any():
        fail(origin, TITLE, "null or empty titles", blank)
    if CREATED_TS in out.columns:
        out[CREATED_TS] = coerce_timestamp(out[CREATED_TS], origin, allow_null=True)
    if TAGS in out.columns:
        out[TAGS] = _coerce_tag_lists(out[TAGS], origin)
    return out.reset_index(drop=True)


def validate_users(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    out = _keyed_table(df, origin, USER, USER_REQUIRED)
    if REGION in out.columns:
        out[REGION] = coerce_text(out[REGION], origin)
    return out.reset_index(drop=True)


def _coerce_tag_lists(series: pd.Series, origin: str) -> pd.Series:
    """Tags as lists of strings; a null becomes an empty list."""
    def as_list(v: object) -> list[str]:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return []
        if isinstance(v, str):
            return [v]
        return [str(t) for t in v]  # type: ignore[union-attr]

    try:
        return pd.Series([as_list(v) for v in series], index=series.index, name=series.name)
    except TypeError:
        bad = np.array([not (v is None or isinstance(v, (str, list, np.ndarray, float)))
                        for v in series])
        fail(origin, TAGS, "tags must be lists of strings", bad, series)
        raise


def harmonise_id_types(*columns: tuple[pd.DataFrame, str]) -> None:
    """Give one id column the same dtype in every table (strings if any table has strings)."""
    if any(not pd.api.types.is_integer_dtype(df[c].dtype) for df, c in columns):
        for df, c in columns:
            df[c] = df[c].astype("string[pyarrow]")


def check_references(interactions: pd.DataFrame, column: str, known: pd.Series,
                     origin: str, table: str, policy: str) -> tuple[pd.DataFrame, int]:
    """Interactions whose ids are absent from the items/users table: error, or drop and count."""
    unknown = ~interactions[column].isin(known)
    if not unknown.any():
        return interactions, 0
    if policy == "error":
        fail(origin, column, f"ids not present in the {table} table "
             "(set ingest.unknown_ids: drop to drop them)", unknown, interactions[column])
    return interactions.loc[~unknown].reset_index(drop=True), int(unknown.sum())
