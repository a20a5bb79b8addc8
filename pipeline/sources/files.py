"""A team's own logs: Parquet or CSV tables mapped onto the contract by config alone.

An interactions path may be a glob (``logs/dt=*/part-*.parquet``): a log that grows by
daily partitions, several files a day, is read whole, each file named in its errors.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import schema as S
from pipeline.config import FilesSource, InteractionFile, TableFile
from pipeline.schema import DataError
from pipeline.sources import RawTables

# Contract columns holding text: read from CSV as strings, so "007" or zip "02134" keep
# their leading zeros instead of being inferred as numbers.
_TEXT_TARGETS = (S.TITLE, S.TEXT, S.CATEGORY, S.TAGS, S.REGION, S.QUERY, S.EVENT)
_ID_TARGETS = (S.USER, S.ITEM)
_INTEGER = r"^(0|-?[1-9][0-9]*)(\.0*)?$"  # as a program writes one (1 or 1.0), no padding
_DECIMAL = r"^(0|-?[1-9][0-9]*)(\.[0-9]+)?$"  # with 1.5 among them: a fractional id


def read_any(path: Path, columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read a .parquet or .csv/.tsv file; invalid UTF-8 is reported by column and row.

    ``columns`` (contract column -> the file's) says which of a CSV's columns are read
    as strings rather than inferred (text) and which as ids (``_ids_as_read``).
    """
    columns = dict(columns or {})
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: cannot read Parquet: {err}") from None
        _check_parquet_utf8(path, table)
        return table.to_pandas()
    if suffix not in (".csv", ".tsv", ".txt"):
        raise DataError(f"{path}: unsupported file type '{suffix}' (use .parquet or .csv)")
    options = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
    ids = _sources(columns, _ID_TARGETS)
    convert = pacsv.ConvertOptions(column_types={
        c: pa.string() for c in (*_sources(columns, _TEXT_TARGETS), *ids)})
    try:
        table = pacsv.read_csv(path, parse_options=options, convert_options=convert)
        for name in ids:
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name,
                                         _ids_as_read(table[name]))
        return table.to_pandas()
    except UnicodeDecodeError:  # invalid UTF-8 in the header (column names)
        _raise_utf8_location(path, options.delimiter, columns)
        raise
    except pa.ArrowInvalid as err:
        if "UTF8" in str(err) or "utf8" in str(err).lower():
            _raise_utf8_location(path, options.delimiter, columns)
        raise DataError(f"{path}: cannot parse CSV: {err}") from None


def _ids_as_read(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """A CSV's id column, read as text, typed as a program would have written it, spaces
    around each id trimmed and an empty cell a missing id:
    - integers when every id is one written plainly (7, or 7.0), so ids stay numbers;
    - numbers when every id is a plain decimal and some have a fraction (a fractional
      id, then reported as such);
    - else the text: zero-padded ids ("00007") stay labels, where inferring numbers had
      merged "00007" and "7" into one user, and so do ids such as 1e3, +7 or inf."""
    text = pc.utf8_trim_whitespace(text)
    text = pc.if_else(pc.equal(text, ""), None, text)
    if pc.all(pc.match_substring_regex(text, _INTEGER)).as_py() is not False:
        try:
            return pc.cast(pc.replace_substring_regex(text, r"\.0*$", ""), pa.int64())
        except pa.ArrowInvalid:  # beyond 64 bits: a label
            return text
    if pc.all(pc.match_substring_regex(text, _DECIMAL)).as_py() is not False:
        return pc.cast(text, pa.float64())
    return text


def _raise_utf8_location(path: Path, delimiter: str, columns: Mapping[str, str]) -> None:
    """Name the column of the first invalid byte (and the contract's, where ``columns``
    maps it) and the lines holding any (header = 0)."""
    lines = path.read_bytes().split(b"\n")
    bad: list[tuple[int, int]] = []  # (line number, offset of the first bad byte)
    for number, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            bad.append((number, err.start))
    if not bad:
        raise DataError(f"{path}: text is not valid UTF-8")
    line_no, offset = bad[0]
    header = lines[0].decode("utf-8", "replace").split(delimiter)
    col_idx = lines[line_no][:offset].count(delimiter.encode())
    own = header[col_idx] if col_idx < len(header) else f"#{col_idx}"
    contract = {source: target for target, source in columns.items()}.get(own, own)
    column = f"column '{own}'" + (f" ({contract})" if contract != own else "")
    if line_no == 0:
        raise DataError(f"{path}: {column}: text is not valid UTF-8 in the header line")
    rows = ", ".join(str(n) for n, _ in bad[:5])
    raise DataError(f"{path}: {column}: text is not valid UTF-8: {len(bad)} row(s), "
                    f"first at data row(s) {rows}")


def _check_parquet_utf8(path: Path, table: pa.Table) -> None:
    """String columns are not UTF-8-checked on read (a bad value fails later, on access):
    validate them here and name the column and rows."""
    for field in table.schema:
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        try:
            table.column(field.name).validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = table.column(field.name).cast(pa.large_binary()).to_pylist()
        bad = np.zeros(len(raw), bool)
        for i, value in enumerate(raw):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
        if bad.any():
            S.fail(str(path), field.name, "text is not valid UTF-8", bad)


def _mapped(df: pd.DataFrame, columns: dict[str, str], path: Path) -> pd.DataFrame:
    missing = {target: source for target, source in columns.items() if source not in df.columns}
    if missing:
        raise DataError(f"{path}: mapped column(s) not in the file: "
                        + ", ".join(f"{s!r} (for {t})" for t, s in missing.items())
                        + f"; file has {list(df.columns)}")
    return pd.DataFrame({target: df[source] for target, source in columns.items()})


def _split_lists(df: pd.DataFrame, list_columns: dict[str, str]) -> pd.DataFrame:
    for column, delimiter in list_columns.items():
        if column in df.columns:
            text = df[column].astype("string").fillna("")
            df[column] = [[t for t in s.split(delimiter) if t] for s in text]
    return df


def _sources(columns: dict[str, str], targets: tuple[str, ...]) -> list[str]:
    """The file's columns mapped onto ``targets``."""
    return [source for target, source in columns.items() if target in targets]


def matching_files(path: Path) -> list[Path]:
    """The files a configured path names: itself, or every match of a glob pattern
    (``logs/dt=*/part-*.parquet``: a log that grows by partitions), in name order."""
    if not any(ch in str(path) for ch in "*?["):
        return [path]
    found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if not found:
        raise DataError(f"{path}: no file matches this pattern")
    return found


def _interactions(spec: InteractionFile) -> list[tuple[str, pd.DataFrame]]:
    """Each file of the spec as its own table, so errors name the partition. A log
    without time gets one timestamp (the Unix epoch) for every event: the file's row
    order, usually by user and item id, is no order of events (``pipeline.ordering``)."""
    tables = []
    for path in matching_files(spec.path):
        # The origin carries the mapping and time unit: validation names the file's own
        # columns and parses time as configured, reporting every problem together.
        origin = S.Origin(str(path), spec.columns, spec.ts_unit)
        df = _mapped(read_any(path, spec.columns), spec.columns, path)
        if S.TS not in df.columns:
            df[S.TS] = pd.Timestamp(0).as_unit("us")
        if S.EVENT not in df.columns:  # a mapped event column wins over the file's constant
            df[S.EVENT] = spec.event
        if S.WEIGHT not in df.columns:
            df[S.WEIGHT] = 1.0
        tables.append((origin, df))
    return tables


def _table(spec: TableFile) -> tuple[str, pd.DataFrame]:
    df = _mapped(read_any(spec.path, spec.columns), spec.columns, spec.path)
    return S.Origin(str(spec.path), spec.columns), _split_lists(df, spec.list_columns)


def load_files(src: FilesSource) -> RawTables:
    notes = []
    interactions = [table for spec in src.interactions for table in _interactions(spec)]
    untimed = [str(spec.path) for spec in src.interactions if S.TS not in spec.columns]
    if untimed and len(untimed) < len(src.interactions):
        notes.append(f"{', '.join(untimed)}: no timestamp mapped, so their events are dated "
                     "1970-01-01, before every timed event; map a time column to each file")
    elif untimed:
        notes.append("no timestamp mapped: the log has no time (one timestamp for every "
                     "event), so the split is random per user and nothing reads event order")
    return RawTables(
        interactions=interactions,
        items=_table(src.items) if src.items else None,
        users=_table(src.users) if src.users else None,
        notes=tuple(notes),
    )
