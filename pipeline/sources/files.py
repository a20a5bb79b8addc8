"""A team's own logs: Parquet or CSV tables mapped onto the contract by config alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import schema as S
from pipeline.config import FilesSource, InteractionFile, TableFile
from pipeline.schema import DataError
from pipeline.sources import RawTables


def read_any(path: Path) -> pd.DataFrame:
    """Read a .parquet or .csv/.tsv file; invalid UTF-8 in a CSV is reported by line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path).to_pandas()
    if suffix not in (".csv", ".tsv", ".txt"):
        raise DataError(f"{path}: unsupported file type '{suffix}' (use .parquet or .csv)")
    options = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
    try:
        return pacsv.read_csv(path, parse_options=options).to_pandas()
    except pa.ArrowInvalid as err:
        if "UTF8" in str(err) or "utf8" in str(err).lower():
            _raise_utf8_location(path, options.delimiter)
        raise DataError(f"{path}: cannot parse CSV: {err}") from None


def _raise_utf8_location(path: Path, delimiter: str) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        line_no = raw.count(b"\n", 0, err.start)  # header is line 0 -> data row numbers
        header = raw[: raw.find(b"\n")].decode("utf-8", "replace").split(delimiter)
        col_idx = raw[line_start: err.start].count(delimiter.encode())
        column = header[col_idx] if col_idx < len(header) else f"#{col_idx}"
        raise DataError(f"{path}: column '{column}': text is not valid UTF-8 "
                        f"at data row {line_no}") from None
    raise DataError(f"{path}: text is not valid UTF-8")


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


def _interactions(spec: InteractionFile) -> tuple[str, pd.DataFrame]:
    origin = str(spec.path)
    df = _mapped(read_any(spec.path), spec.columns, spec.path)
    if S.TS not in df.columns:
        # Logs without time (e.g. listening counts): file order stands in for time.
        df[S.TS] = pd.to_datetime(np.arange(len(df)), unit="s")
    elif spec.ts_unit is not None:
        df[S.TS] = S.coerce_timestamp(df[S.TS], origin, spec.ts_unit)
    df[S.EVENT] = spec.event
    if S.WEIGHT not in df.columns:
        df[S.WEIGHT] = 1.0
    return origin, df


def _table(spec: TableFile) -> tuple[str, pd.DataFrame]:
    df = _mapped(read_any(spec.path), spec.columns, spec.path)
    return str(spec.path), _split_lists(df, spec.list_columns)


def load_files(src: FilesSource) -> RawTables:
    notes = []
    interactions = [_interactions(spec) for spec in src.interactions]
    if any(S.TS not in spec.columns for spec in src.interactions):
        notes.append("some interaction files have no timestamp: row order used as time")
    return RawTables(
        interactions=interactions,
        items=_table(src.items) if src.items else None,
        users=_table(src.users) if src.users else None,
        notes=tuple(notes),
    )
