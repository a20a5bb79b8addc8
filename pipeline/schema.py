"""The data contract: column names, and validation at each stage boundary.

Every check names the table's origin (a file path, or the generator), the column (the
file's own name, the contract's in brackets, when a source mapped one onto the other),
how many rows fail and the first few of them (data rows counted from 1, header
excluded), so a user can find the bad line without opening a debugger. A table's checks
all run before anything is raised: one error lists every problem found, one a line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("pipeline")

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


class Origin(str):
    """A table's origin (its file path) that also knows how the file names the contract's
    columns and encodes its time.

    It travels wherever a source's origin strings go, so validation names the user's own
    columns and parses time as configured without a new argument at every call.
    """

    columns: dict[str, str]
    ts_unit: str | None
    ts_format: str | None
    kept: np.ndarray | None  # the file's data rows (from 0) a table kept, where it left some

    def __new__(cls, where: str, columns: Mapping[str, str] | None = None,
                ts_unit: str | None = None, ts_format: str | None = None,
                kept: np.ndarray | None = None) -> Origin:
        self = super().__new__(cls, where)
        self.columns = dict(columns or {})  # contract column -> the file's column
        self.ts_unit, self.ts_format, self.kept = ts_unit, ts_format, kept
        return self

    @classmethod
    def of(cls, origin: str) -> Origin:
        return origin if isinstance(origin, Origin) else cls(origin)

    def keeping(self, positions: np.ndarray) -> Origin:
        """The origin of this table's rows at ``positions``: messages still name the
        file's own row numbers."""
        rows = positions if self.kept is None else self.kept[positions]
        return Origin(self, self.columns, self.ts_unit, self.ts_format, rows)

    def data_rows(self, positions: np.ndarray) -> str:
        """The first positions' rows as the file numbers them (1 = the first data row)."""
        shown = positions[:_EXAMPLES]
        return ", ".join(str(r + 1) for r in (shown if self.kept is None else self.kept[shown]))


class Problems:
    """Every contract breach found in one table, raised together as one DataError: the
    user fixes a file in one go rather than one rerun per problem."""

    def __init__(self, origin: str) -> None:
        self.origin = Origin.of(origin)
        self.lines: list[str] = []

    def column(self, column: str) -> str:
        """The user's own column name, and the contract's in brackets where they differ."""
        own = self.origin.columns.get(column, column)
        return f"column '{own}'" if own == column else f"column '{own}' ({column})"

    def note(self, problem: str) -> None:
        """Record a problem of the whole table (no column, no rows)."""
        self.lines.append(problem)

    def check(self, column: str | None, problem: str, bad: pd.Series | np.ndarray,
              values: pd.Series | None = None) -> bool:
        """Record ``problem`` with its count and first rows if any row is ``bad``;
        True when it was recorded, so checks that depend on the column can skip it."""
        positions = np.flatnonzero(np.asarray(bad, dtype=bool))
        if not len(positions):
            return False
        where = f"{self.column(column)}: " if column else ""
        line = (f"{where}{problem}: {len(positions)} row(s), first at data row(s) "
                f"{self.origin.data_rows(positions)}")
        if values is not None:
            shown = ", ".join(_shown(v) for v in values.iloc[positions[:_EXAMPLES]].tolist())
            line += f" (values {shown})"
        self.lines.append(line)
        return True

    def raise_if_any(self) -> None:
        """One problem keeps the one-line message; several are listed one a line."""
        if len(self.lines) == 1:
            raise DataError(f"{self.origin}: {self.lines[0]}")
        if self.lines:
            listed = "".join(f"\n  {line}" for line in self.lines)
            raise DataError(f"{self.origin}: {len(self.lines)} problems:{listed}")


def _shown(value: Any) -> str:
    """A cell as a message quotes it; a null is a reader's (an empty cell, or a marker
    such as ``NA`` or ``n/a``), not the user's text, so it is called missing, not nan."""
    missing = value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, float) and np.isnan(value))
    return "missing" if missing else repr(value)


def fail(origin: str, column: str | None, problem: str, bad: pd.Series | np.ndarray,
         values: pd.Series | None = None) -> None:
    """Raise a DataError naming origin, column, count and the first offending rows."""
    problems = Problems(origin)
    problems.check(column, problem, bad, values)
    problems.raise_if_any()


def require_rows(df: pd.DataFrame, origin: str) -> None:
    if len(df) == 0:
        raise DataError(f"{origin}: table is empty")


def _begin(df: pd.DataFrame, required: Iterable[str], origin: str) -> Problems:
    """A table's problems, starting with its missing columns; an empty table is reported
    at once, having no rows to check."""
    problems = Problems(origin)
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = " (not mapped in the source's columns)" if problems.origin.columns else ""
        problems.note(f"missing required column(s) {missing}{hint}; found {list(df.columns)}")
    if len(df) == 0:
        problems.note("table is empty")
        problems.raise_if_any()
    return problems


def _name(series: pd.Series) -> str | None:
    return None if series.name is None else str(series.name)


def absent_ids(series: pd.Series) -> pd.Series:
    """Ids that are none: null, or blank text (a Parquet or JSON log's "")."""
    missing = series.isna()
    if not (pd.api.types.is_numeric_dtype(series.dtype) or missing.all()):
        try:
            missing |= series.astype("string").str.strip().eq("").fillna(False)
        except (UnicodeDecodeError, TypeError, ValueError):  # bytes, reported by ``_text``
            pass
    return missing


def _ids(series: pd.Series, problems: Problems, hint: str = "") -> pd.Series:
    """Ids stay int64 when every value is integral and fits, otherwise become strings
    (raw ids kept: hashed ids past int64, such as unsigned 64-bit ones, as their digits)."""
    nulls = problems.check(_name(series), f"null or blank values{hint}", absent_ids(series))
    if pd.api.types.is_float_dtype(series.dtype):
        frac = series.notna() & ~(np.isfinite(series) & (series == np.floor(series)))
        fractional = problems.check(_name(series), "ids must be integers or strings", frac,
                                    series)
        # a float holds every integer up to 2**53 only: past it, ids have lost digits
        inexact = ~frac & (series.abs() > 2.0 ** 53).fillna(False)
        lossy = problems.check(_name(series), "ids stored as floating-point numbers past "
                               "2**53 are no longer exact: store them as integers or text",
                               inexact, series)
        return series if nulls or fractional or lossy else series.astype("int64")
    if pd.api.types.is_integer_dtype(series.dtype):
        if nulls:
            return series
        if pd.api.types.is_unsigned_integer_dtype(series.dtype) and len(series) and (
                series.max() > np.iinfo(np.int64).max):
            return series.astype("string[pyarrow]")
        return series.astype("int64")
    return _text(series, problems).astype("string[pyarrow]")


def _text(series: pd.Series, problems: Problems) -> pd.Series:
    """Text as strings; raw bytes must decode as UTF-8 (reported by row when not, and
    left null)."""
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return series
    values = series.to_numpy(dtype=object, copy=True)
    bad = np.zeros(len(values), bool)
    for i in np.flatnonzero([isinstance(v, bytes) for v in values]):
        try:
            values[i] = values[i].decode("utf-8")
        except UnicodeDecodeError:
            bad[i], values[i] = True, None
    problems.check(_name(series), "text is not valid UTF-8", bad)
    return pd.Series(values, index=series.index, name=series.name).astype("string[pyarrow]")


def _optional_text(series: pd.Series, problems: Problems) -> pd.Series:
    """Text a row may lack (a query, a region, a category): a blank value, empty or
    spaces only, is none. A CSV's empty cell reads as an empty string, and an empty
    query would make every event a search."""
    text = _text(series, problems)
    return text.mask((text.str.strip() == "").fillna(False))


def _event(series: pd.Series, problems: Problems) -> pd.Series:
    problems.check(_name(series), "null values", series.isna())
    return _text(series.astype(object).where(series.notna(), None), problems)


def coerce_timestamp(series: pd.Series, origin: str, unit: str | None = None,
                     allow_null: bool = False) -> pd.Series:
    """Timestamps as naive UTC datetime64[us]: numbers since 1970 (s, ms, us or ns) or
    ISO text."""
    problems = Problems(origin)
    out = _timestamp(series, problems, unit, allow_null)
    problems.raise_if_any()
    return out


_EPOCH_UNITS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds",
                "ns": "nanoseconds"}
_LATEST = pd.Timestamp("2300-01-01", tz="UTC")  # later: the wrong unit, not a real time


def epoch_unit(numbers: pd.Series) -> str:
    """The unit of numbers since 1970 by their size: the median read as seconds would be
    after the year 5138 (1e11) when they are milliseconds (today about 1.7e12), and so
    on up to nanoseconds. Logs written by browsers and JVMs count milliseconds."""
    values = np.abs(pd.to_numeric(numbers, errors="coerce").to_numpy(np.float64,
                                                                      na_value=np.nan))
    values = values[np.isfinite(values)]
    median = float(np.median(values)) if len(values) else 0.0  # none: seconds
    for unit, below in (("s", 1e11), ("ms", 1e14), ("us", 1e17)):
        if median < below:
            return unit
    return "ns"


def _timestamp(series: pd.Series, problems: Problems, unit: str | None = None,
               allow_null: bool = False, fmt: str | None = None) -> pd.Series:
    """Times as naive UTC: typed ones as they are; text in the strftime pattern ``fmt``;
    numbers since 1970 in ``unit`` or ISO text, inferred when ``unit`` is None."""
    if fmt is not None and not pd.api.types.is_datetime64_any_dtype(series.dtype):
        # read as text (``files.read_any``): a blank cell is no time
        series = series.astype("string").str.strip().replace("", pd.NA)
    if not allow_null:
        problems.check(_name(series), "null values", series.isna())
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        out = series.dt.tz_convert("UTC").dt.tz_localize(None) if series.dt.tz else series
        return out.astype("datetime64[us]")
    if fmt is not None:
        unit, parsed = f"format {fmt!r}", pd.to_datetime(
            series, format=fmt, errors="coerce", utc=True)
    else:
        unit, parsed = _parse_inferred(series, problems, unit)
    problems.check(_name(series), f"unparsable timestamp (expected {unit})",
                   parsed.isna() & series.notna(), series)
    if unit in _EPOCH_UNITS:
        problems.check(_name(series), f"times after the year 2300 when read as "
                       f"{_EPOCH_UNITS[unit]} since 1970 (is ts_unit right?)",
                       (parsed > _LATEST).fillna(False), series)
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


STRAY_SPANS = 5  # how many of its middle half's spans an event lies outside it to be noted


def stray_times(df: pd.DataFrame, origin: str) -> str | None:
    """A note (not an error) on events dated far outside the rest of a validated table:
    more than STRAY_SPANS times the span of its middle half before its 25th percentile
    or after its 75th. Placeholder dates (0, 1970-01-01) do this, up to a quarter of the
    rows, and where they fall in the fitting data they stretch its span, which half-lives
    and windows default to shares of. A log growing fast over the years keeps its early
    events inside the bound. None where there are none, or where half the events share
    one time (a log without time)."""
    values = df[TS].to_numpy("datetime64[us]").astype(np.int64)
    if not len(values):
        return None
    low, high = np.percentile(values, [25, 75], method="nearest")
    span = high - low
    if span <= 0:
        return None
    positions = np.flatnonzero((values < low - STRAY_SPANS * span)
                               | (values > high + STRAY_SPANS * span))
    if not len(positions):
        return None

    def day(us: int) -> str:
        return str(np.datetime64(int(us), "us").astype("datetime64[D]"))

    rows = Origin.of(origin).data_rows(positions)
    shown = ", ".join(day(v) for v in values[positions[:_EXAMPLES]])
    return (f"{origin}: {Problems(origin).column(TS)}: {len(positions)} event(s) dated far "
            f"outside the rest (half of them from {day(low)} to {day(high)}), first at data "
            f"row(s) {rows} (dates {shown}); kept, and where they fall in the fitting data "
            "they stretch its span, which half-lives and windows default to shares of: fix "
            "or drop placeholder dates, or give a channel its half_life_days "
            "(recall.channels.<name>.params)")


def _parse_inferred(series: pd.Series, problems: Problems, unit: str | None
                    ) -> tuple[str, pd.Series]:
    """Times in ``unit``, or with it inferred: numbers by their size; text as ISO, or as
    unix seconds (one bad value turns a CSV column to text), whichever reading parses
    more rows, so the report names the odd ones out."""
    if unit is None and pd.api.types.is_numeric_dtype(series.dtype):
        if (dates := _day_stamps(series)) is not None:
            log.info("%s: %s: numbers read as dates written YYYYMMDD, all positive ones "
                     "being of their size (set ts_unit to read them as a count since "
                     "1970)", problems.origin, problems.column(_name(series) or TS))
            return "format '%Y%m%d', inferred: ts_unit reads a count since 1970", dates
        unit = _said(epoch_unit(series), series, problems)
        if fmt := _digit_times(series):
            log.warning("%s: %s: numbers read as %s since 1970 are every one a time written "
                        "%s: set ts_format: '%s' if that is what they are",
                        problems.origin, problems.column(_name(series) or TS),
                        _EPOCH_UNITS[unit], fmt, fmt)
    if unit is not None:
        return unit, _parse_timestamp(series, unit)
    unit, parsed = "iso", _parse_timestamp(series, "iso")
    if parsed.isna().sum() > series.isna().sum():
        sized = epoch_unit(series)
        numbers = _parse_timestamp(series, sized)
        if numbers.notna().sum() > parsed.notna().sum():
            unit, parsed = _said(sized, series, problems), numbers
    return unit, parsed


def _positive_whole(numbers: pd.Series) -> pd.Series | None:
    """The positive values of a column of whole numbers (zero or less are placeholders,
    decided on apart); None where some value has a fraction or none is positive."""
    values = pd.to_numeric(numbers, errors="coerce")
    values = values[np.isfinite(values.to_numpy(np.float64, na_value=np.nan))]
    if not (values == np.floor(values)).all():
        return None
    values = values[values > 0]
    return values if len(values) else None


def _day_stamps(numbers: pd.Series) -> pd.Series | None:
    """Dates written YYYYMMDD (20170105) as those dates, where every positive number is
    of that size (19000101 to 21001231); an impossible month or day, and a placeholder
    of 0 or less, unparsable. Read as a count since 1970 they all fall within three
    weeks of August 1970, which no log's clock does."""
    values = _positive_whole(numbers)
    if values is None or not values.between(1900_01_01, 2100_12_31).all():
        return None
    text = values.reindex(numbers.index).astype("Int64").astype("string")  # others: NA
    return pd.to_datetime(text, format="%Y%m%d", errors="coerce", utc=True)


_DIGIT_TIMES = {10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _digit_times(numbers: pd.Series) -> str | None:
    """The pattern of hourly or finer times written as digits (2017010512), where every
    positive number is one; else None. These sizes are also real counts of seconds or
    milliseconds (a log of midnights from 2032 on can be all valid ones), so they are
    named, not read so: a count that is no time has an hour past 23 or a minute past 59
    somewhere."""
    values = _positive_whole(numbers)
    if values is None:
        return None
    low, high = int(values.min()), int(values.max())
    digits = len(str(low))
    if len(str(high)) != digits or digits not in _DIGIT_TIMES:
        return None
    fmt, scale = _DIGIT_TIMES[digits], 10 ** (digits - 4)
    if not (1970 <= low // scale and high // scale <= 2100):  # the year's four digits
        return None
    parsed = pd.to_datetime(values.astype("int64").astype("string"), format=fmt,
                            errors="coerce")
    return fmt if parsed.notna().all() else None


def _said(unit: str, series: pd.Series, problems: Problems) -> str:
    """``unit``, inferred for a time column, said in the log where it is not seconds."""
    if unit != "s":
        log.info("%s: %s: numbers read as %s since 1970, by their size (set ts_unit to "
                 "say otherwise)", problems.origin, problems.column(_name(series) or TS),
                 _EPOCH_UNITS[unit])
    return unit


def _parse_timestamp(series: pd.Series, unit: str) -> pd.Series:
    if unit == "iso":
        return pd.to_datetime(series.astype("string"), errors="coerce", utc=True,
                              format="ISO8601")
    numeric = pd.to_numeric(series, errors="coerce")
    parsed = pd.to_datetime(numeric, unit=unit, errors="coerce", utc=True)
    # fractions of a second (KuaiRec's 1594387154.277) come off a float a hair short:
    # rounded to the microseconds the contract keeps, not cut to .276999
    return parsed.dt.round("us") if numeric.dtype.kind == "f" else parsed


def _weight(series: pd.Series, problems: Problems) -> pd.Series:
    numeric = pd.to_numeric(series, errors="coerce").astype("float64")
    bad = ~np.isfinite(numeric.to_numpy(na_value=np.nan))
    problems.check(_name(series), "weight must be a finite number", bad, series)
    return numeric


def validate_interactions(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Check and normalise one interactions table (required columns, types, nulls)."""
    problems = _begin(df, INTERACTION_REQUIRED, origin)
    unit, fmt = problems.origin.ts_unit, problems.origin.ts_format
    ids = partial(_ids, hint=" (ingest.missing_ids: drop leaves such rows out)")
    coerce = {USER: ids, ITEM: ids, TS: lambda s, p: _timestamp(s, p, unit, fmt=fmt),
              EVENT: _event,
              WEIGHT: _weight, QUERY: _optional_text, REGION: _optional_text}
    out = pd.DataFrame(index=df.index)
    for column, convert in coerce.items():
        if column in df.columns:
            out[column] = convert(df[column], problems)
    problems.raise_if_any()
    return out.reset_index(drop=True)


def _keyed_table(df: pd.DataFrame, origin: str, key: str, required: Iterable[str]
                 ) -> tuple[Problems, pd.DataFrame]:
    """A copy of a side table with its rows, columns and unique ids checked."""
    problems = _begin(df, required, origin)
    out = df.copy()
    if key in df.columns:
        out[key] = _ids(df[key], problems)
        problems.check(key, "duplicate ids (duplicate_ids: first keeps each id's first "
                       "row)", out[key].duplicated() & ~absent_ids(out[key]), out[key])
    return problems, out


def validate_items(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    problems, out = _keyed_table(df, origin, ITEM, ITEM_REQUIRED)
    for col in (TITLE, TEXT, CATEGORY, REGION):
        if col in out.columns:
            out[col] = (_text if col == TITLE else _optional_text)(out[col], problems)
    if TITLE in out.columns:  # an undecodable title is reported once, as such
        _stand_in_titles(df, out, problems)
    if CREATED_TS in out.columns:
        out[CREATED_TS] = _timestamp(out[CREATED_TS], problems, problems.origin.ts_unit,
                                     allow_null=True, fmt=problems.origin.ts_format)
    if TAGS in out.columns:
        out[TAGS] = _tag_lists(out[TAGS], problems)
    problems.raise_if_any()
    return out.reset_index(drop=True)


def _stand_in_titles(df: pd.DataFrame, out: pd.DataFrame, problems: Problems) -> None:
    """An item without a title (null or blank) gets its id as one, said in the log, as
    an items table derived from the interactions has: public catalogues often lack a
    few, and refusing the whole table left editing the file as the only way on."""
    missing = df[TITLE].isna().to_numpy() | (out[TITLE].str.strip() == "").fillna(
        False).to_numpy(bool)
    if missing.any() and ITEM in out.columns:
        out.loc[missing, TITLE] = out.loc[missing, ITEM].astype("string")
        log.warning("%s: %s: %d item(s) without a title, first at data row(s) %s: their "
                    "ids stand in", problems.origin, problems.column(TITLE),
                    int(missing.sum()), problems.origin.data_rows(np.flatnonzero(missing)))


def validate_users(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    problems, out = _keyed_table(df, origin, USER, USER_REQUIRED)
    if REGION in out.columns:
        out[REGION] = _optional_text(out[REGION], problems)
    problems.raise_if_any()
    return out.reset_index(drop=True)


def _tag_list(value: object) -> list[str] | None:
    """Tags as a list of strings (a null: none, a string: one; lists of lists, as
    Amazon's category paths come, flattened in order); None when not tags."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(u) for t in value
                for u in (t if isinstance(t, Iterable) and not isinstance(t, str | bytes) else [t])]
    return None


def _tag_lists(series: pd.Series, problems: Problems) -> pd.Series:
    lists = [_tag_list(v) for v in series]
    bad = np.array([tags is None for tags in lists], bool)
    problems.check(_name(series), "tags must be lists of strings", bad, series)
    return pd.Series([tags or [] for tags in lists], index=series.index, name=series.name)


def harmonise_id_types(*columns: tuple[pd.DataFrame, str]) -> None:
    """Give one id column the same dtype in every table (strings if any table has strings)."""
    if any(not pd.api.types.is_integer_dtype(df[c].dtype) for df, c in columns):
        for df, c in columns:
            df[c] = df[c].astype("string[pyarrow]")


def left_out(dropped: Mapping[str, int]) -> str:
    """Ingest's counts of interactions left out, in words: '2,012 missing ids, 3 unknown
    items'; empty where none were."""
    return ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in dropped.items() if n)


def without_missing_ids(df: pd.DataFrame, origin: str
                        ) -> tuple[pd.DataFrame, Origin, int]:
    """An interactions table less its rows without a user or item id (``absent_ids``),
    its origin still numbering rows as the file does, and how many went (``ingest.
    missing_ids: drop``): public logs leave ids empty (Last.fm's track ids), and such a
    row says nothing."""
    missing = np.zeros(len(df), bool)
    for column in (USER, ITEM):
        if column in df.columns:
            missing |= absent_ids(df[column]).to_numpy(bool)
    if not missing.any():
        return df, Origin.of(origin), 0
    kept = np.flatnonzero(~missing)
    return (df.iloc[kept].reset_index(drop=True), Origin.of(origin).keeping(kept),
            int(missing.sum()))


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
