"""Bad input through the `files` source: a DataError naming file, column and rows; nothing written.

Every case writes real CSV or Parquet files into tmp_path, loads them with
``load_files`` and validates with ``validated_tables``, as the ingest stage does. Row
numbers in messages count data rows from 1, header excluded.
"""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import FilesSource, load_config
from pipeline.runner import run_stage
from pipeline.schema import DataError, validate_interactions
from pipeline.sources.files import load_files
from pipeline.stages.ingest import validated_tables

INTERACTION_COLUMNS = {"user_id": "u", "item_id": "i", "ts": "t", "weight": "w"}
ITEM_COLUMNS = {"item_id": "i", "title": "title"}
USER_COLUMNS = {"user_id": "u", "region": "zip"}

GOOD_INTERACTIONS = b"u,i,t,w\n1,10,1700000000,1.0\n2,11,1700000100,2\n1,11,1700000200,0.5\n"
GOOD_ITEMS = b"i,title\n10,Alpha\n11,Beta\n"
GOOD_USERS = b"u,zip\n1,85711\n2,94043\n"


def write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def spec(interactions: Path | list[Path], items: Path | None = None, users: Path | None = None,
         columns: dict[str, str] | None = None, ts_unit: str | None = None) -> dict:
    paths = interactions if isinstance(interactions, list) else [interactions]
    files = []
    for path in paths:
        entry = {"path": str(path), "columns": columns or INTERACTION_COLUMNS}
        if ts_unit:
            entry["ts_unit"] = ts_unit
        files.append(entry)
    out: dict = {"kind": "files", "interactions": files}
    if items is not None:
        out["items"] = {"path": str(items), "columns": ITEM_COLUMNS}
    if users is not None:
        out["users"] = {"path": str(users), "columns": USER_COLUMNS}
    return out


def load(source: dict, unknown_ids: str = "error"):
    raw = load_files(FilesSource.model_validate(source))
    return validated_tables(raw, unknown_ids)


# The files' own names for the contract's columns (the same in every test file).
OWN_NAMES = {**INTERACTION_COLUMNS, **ITEM_COLUMNS, **USER_COLUMNS}


def column_named(column: str) -> str:
    """How a message names a contract column: the file's name, the contract's in brackets."""
    own = OWN_NAMES.get(column, column)
    return f"column '{own}'" if own == column else f"column '{own}' ({column})"


def assert_names(err: pytest.ExceptionInfo[DataError], origin: Path, column: str | None,
                 rows: str | None, *fragments: str) -> str:
    """The message starts with the file, names the column (the file's own name) and the
    first offending rows."""
    msg = str(err.value)
    assert msg.startswith(f"{origin}: "), msg
    if column is not None:
        assert column_named(column) in msg, msg
    if rows is not None:
        assert f"data row(s) {rows}" in msg or f"data row {rows}" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# ------------------------------------------------------------------ good input
def test_valid_csv_tables_pass_with_contract_dtypes(tmp_path: Path) -> None:
    src = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS),
               write(tmp_path, "items.csv", GOOD_ITEMS), write(tmp_path, "users.csv", GOOD_USERS))
    interactions, items, users, dropped, _ = load(src)
    assert dropped == {"missing_ids": 0, "unknown_items": 0, "unknown_users": 0}
    assert list(interactions.columns) == ["user_id", "item_id", "ts", "event", "weight"]
    assert interactions["user_id"].dtype == "int64"
    assert interactions["item_id"].dtype == "int64"
    assert pa.types.is_timestamp(pa.from_numpy_dtype(interactions["ts"].dtype))
    assert pd.api.types.is_string_dtype(interactions["event"].dtype)
    assert interactions["weight"].dtype == "float64"
    assert interactions["ts"].tolist() == [pd.Timestamp(s, unit="s")
                                           for s in (1700000000, 1700000100, 1700000200)]
    assert interactions["weight"].tolist() == [1.0, 2.0, 0.5]
    assert items["title"].tolist() == ["Alpha", "Beta"]
    assert users["region"].tolist() == ["85711", "94043"]


@pytest.mark.parametrize(("text", "expected"), [
    ("1700000000\n1700000100", ["2023-11-14 22:13:20", "2023-11-14 22:15:00"]),
    ("2024-01-01T00:00:00\n2024-01-02 10:30:00", ["2024-01-01 00:00", "2024-01-02 10:30"]),
    ("2024-01-01T00:00:00Z\n2024-01-02T10:30:00+02:00", ["2024-01-01 00:00", "2024-01-02 08:30"]),
    ("2024-01-01\n2024-01-02", ["2024-01-01", "2024-01-02"]),
    # day-stamped logs write dates as numbers: read as seconds, they were August 1970
    ("20170105\n20170210", ["2017-01-05", "2017-02-10"]),
    # KuaiRec's seconds with milliseconds: a float a hair short of .277 was cut to .276999
    ("1594387154.277\n1594387154.421", ["2020-07-10 13:19:14.277", "2020-07-10 13:19:14.421"]),
], ids=["unix-seconds", "iso-naive", "iso-offsets-to-utc", "iso-date", "yyyymmdd",
        "fractional-seconds"])
def test_timestamp_encodings_are_inferred(tmp_path: Path, text: str, expected: list[str]) -> None:
    rows = "\n".join(f"{n},10,{t},1" for n, t in enumerate(text.split("\n"), start=1))
    interactions, *_ = load(spec(write(tmp_path, "log.csv", f"u,i,t,w\n{rows}\n")))
    assert interactions["ts"].tolist() == [pd.Timestamp(e) for e in expected]
    assert interactions["ts"].dt.tz is None


def test_yyyymmdd_numbers_read_as_seconds_when_told(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,20170105,1\n")
    interactions, *_ = load(spec(log, ts_unit="s"))
    assert interactions["ts"].tolist() == [pd.Timestamp("1970-08-22 10:48:25")]


@pytest.mark.parametrize("odd", ["20170230", "0", "-1"])
def test_an_impossible_day_stamp_is_named_not_read_as_1970(tmp_path: Path, odd: str) -> None:
    """One typo among day stamps, or a placeholder 0, had the whole file read as
    seconds: August 1970, silently."""
    log = write(tmp_path, "log.csv", f"u,i,t,w\n1,10,20170105,1\n2,11,{odd},1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "ts", "2", "unparsable timestamp", "%Y%m%d")


@pytest.mark.parametrize(("text", "fmt"), [("2017010512\n2017021023", "%Y%m%d%H"),
                                           ("201701051230\n201702102359", "%Y%m%d%H%M")])
def test_hourly_stamps_as_numbers_are_named_not_guessed(tmp_path: Path, text: str, fmt: str,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """Hourly or finer stamps written as digits are also real counts of seconds (2033)
    or milliseconds (1976): read as the count, with a warning naming the pattern; a
    count that is no time (an hour of 99) gets none."""
    rows = "".join(f"{n},10,{t},1\n" for n, t in enumerate(text.split("\n"), 1))
    with caplog.at_level("WARNING", logger="pipeline"):
        interactions, *_ = load(spec(write(tmp_path, "log.csv", f"u,i,t,w\n{rows}")))
    assert interactions["ts"].dt.year.tolist()[0] in (1976, 2033)
    assert f"set ts_format: '{fmt}'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline"):
        load(spec(write(tmp_path, "odd.csv", "u,i,t,w\n1,10,2017010512,1\n2,11,2017010599,1\n")))
    assert "ts_format" not in caplog.text


def test_parquet_tz_aware_timestamps_become_naive_utc(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    ts = pa.array([pd.Timestamp("2024-03-01 12:00", tz="Europe/Berlin")] * 2,
                  pa.timestamp("us", tz="Europe/Berlin"))
    pq.write_table(pa.table({"u": [1, 2], "i": [10, 11], "t": ts, "w": [1.0, 1.0]}), path)
    interactions, *_ = load(spec(path))
    assert interactions["ts"].tolist() == [pd.Timestamp("2024-03-01 11:00")] * 2


def test_mapped_event_column_is_kept(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv",
                "u,i,t,w,kind\n1,10,1700000000,1,view\n2,11,1700000001,1,buy\n")
    interactions, *_ = load(spec(log, columns={**INTERACTION_COLUMNS, "event": "kind"}))
    assert interactions["event"].tolist() == ["view", "buy"]


# ------------------------------------------------------------------ bad timestamps
def test_unparsable_iso_timestamp(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv",
                "u,i,t,w\n1,10,2024-01-01,1\n2,11,2024-01-02,1\n3,10,notadate,1\n4,10,bad,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "ts", "3, 4", "unparsable timestamp", "2 row(s)", "'notadate'")


def test_unparsable_value_in_unix_seconds_column(tmp_path: Path) -> None:
    # One bad value turns the CSV column to text; valid seconds must not be reported too.
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n2,11,1700000001,1\n"
                                     "3,10,yesterday,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "ts", "3", "unparsable timestamp", "1 row(s)", "'yesterday'")


def test_unparsable_timestamp_with_explicit_unit(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n2,11,x1,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log, ts_unit="s"))
    assert_names(err, log, "ts", "2", "unparsable timestamp (expected s)")


@pytest.mark.parametrize("value", ["1700000000", "2024-01-01T00:00:00"])
def test_null_timestamp_csv(tmp_path: Path, value: str) -> None:
    log = write(tmp_path, "log.csv", f"u,i,t,w\n1,10,{value},1\n2,11,{value},1\n3,11,,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "ts", "3", "null values", "1 row(s)")


def test_null_timestamp_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    ts = pa.array([1_700_000_000, None, 1_700_000_002, None], pa.timestamp("s"))
    pq.write_table(pa.table({"u": [1, 2, 3, 4], "i": [10] * 4, "t": ts, "w": [1.0] * 4}), path)
    with pytest.raises(DataError) as err:
        load(spec(path))
    assert_names(err, path, "ts", "2, 4", "null values", "2 row(s)")


# ------------------------------------------------------------------ wrong types
def test_weight_not_a_number(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1.0\n2,11,1700000000,abc\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "weight", "2", "finite number", "'abc'")


@pytest.mark.parametrize("cell", ["", "n/a", "NA"])
def test_weight_missing_value(tmp_path: Path, cell: str) -> None:
    log = write(tmp_path, "log.csv", f"u,i,t,w\n1,10,1700000000,{cell}\n2,11,1700000000,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "weight", "1", "finite number", "(values missing)")
    assert "(values nan)" not in str(err.value)


def test_unsigned_64_bit_ids_keep_their_digits(tmp_path: Path) -> None:
    """Hashed ids stored as uint64 past int64's range were cast to int64 and wrapped to
    negative numbers: distinct still, but the publication named ids nobody has."""
    big = [2**64 - 5, 2**63 + 1]
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": pa.array(big, pa.uint64()),
                             "i": pa.array([10, 2**63 - 1], pa.uint64()),
                             "t": [1700000000, 1700000100], "w": [1.0, 1.0]}), path)
    interactions, *_ = load(spec(path))
    assert interactions["user_id"].tolist() == [str(v) for v in big]
    assert interactions["item_id"].tolist() == [10, 2**63 - 1]  # fits: stays a number


def test_float_ids_past_two_to_the_53_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": [1.0, 2.0**60], "i": [10, 11], "t": [1700000000, 1700000100],
                             "w": [1.0, 1.0]}), path)
    with pytest.raises(DataError) as err:
        load(spec(path))
    assert_names(err, path, "user_id", "2", "no longer exact")


def test_fractional_ids_are_rejected(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n2,11.5,1700000000,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "item_id", "2", "integers or strings", "11.5")


def test_null_user_id(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n,11,1700000000,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "user_id", "2", "null or blank values")


def test_string_ids_are_kept_and_matched_across_tables(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\nanna,10,1700000000,1\nbo,sku-7,1700000000,1\n")
    items = write(tmp_path, "items.csv", "i,title\n10,Ten\nsku-7,Seven\n")
    interactions, items_df, users, *_ = load(spec(log, items))
    assert interactions["item_id"].tolist() == ["10", "sku-7"]
    assert items_df["item_id"].tolist() == ["10", "sku-7"]
    assert interactions["item_id"].dtype == items_df["item_id"].dtype
    assert users["user_id"].tolist() == ["anna", "bo"]


# ------------------------------------------------------------------ invalid UTF-8
def test_invalid_utf8_in_csv_text_column(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", b"i,title\n10,Alpha\n11,Beta\n12,Caf\xe9\n13,Ok\n")
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, "title", "3", "not valid UTF-8", "1 row(s)")


def test_invalid_utf8_on_several_csv_lines_lists_them(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", b"i,title\n10,\xe9a\n11,Beta\n12,Caf\xe9\n")
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, "title", "1, 3", "not valid UTF-8", "2 row(s)")


def test_invalid_utf8_in_csv_id_column(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", b"u,i,t,w\n1,10,1700000000,1\n2,1\xff,1700000000,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "item_id", "2", "not valid UTF-8")


def test_csv_text_columns_keep_leading_zeros(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", "i,title\n10,007\n11,1984\n")
    users = write(tmp_path, "users.csv", "u,zip\n1,02134\n2,94043\n")
    _, items_df, users_df, *_ = load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS),
                                         items, users))
    assert items_df["title"].tolist() == ["007", "1984"]
    assert users_df["region"].tolist() == ["02134", "94043"]


def test_invalid_utf8_in_csv_header(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", b"i,ti\xfftle\n10,Alpha\n")
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, None, None, "not valid UTF-8", "header")


def test_invalid_utf8_in_parquet_binary_column(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    titles = pa.array([b"Alpha", b"\xff\xfe", "Gamma \u00e9".encode()], pa.binary())
    pq.write_table(pa.table({"i": [10, 11, 12], "title": titles}), items)
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, "title", "2", "not valid UTF-8", "1 row(s)")


def test_valid_utf8_in_parquet_binary_column_is_decoded(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    titles = pa.array([b"Alpha", "Caf\u00e9".encode()], pa.binary())
    pq.write_table(pa.table({"i": [10, 11], "title": titles}), items)
    _, items_df, *_ = load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert items_df["title"].tolist() == ["Alpha", "Caf\u00e9"]


def test_invalid_utf8_in_parquet_string_column(tmp_path: Path) -> None:
    # Arrow does not check string columns on read; a bad value would fail much later.
    items = tmp_path / "items.parquet"
    raw = pa.array([b"Alpha", b"Beta", b"Caf\xe9"], pa.binary())
    titles = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())
    pq.write_table(pa.table({"i": [10, 11, 12], "title": titles}), items)
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, "title", "3", "not valid UTF-8")


# ------------------------------------------------------------------ ids
def test_duplicate_item_ids(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", "i,title\n10,A\n11,B\n10,C\n12,D\n11,E\n")
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, "item_id", "3, 5", "duplicate ids", "2 row(s)")


def test_duplicate_user_ids_parquet(tmp_path: Path) -> None:
    users = tmp_path / "users.parquet"
    pq.write_table(pa.table({"u": [1, 2, 2], "zip": ["1", "2", "3"]}), users)
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), users=users))
    assert_names(err, users, "user_id", "3", "duplicate ids")


UNKNOWN_LOG = b"u,i,t,w\n1,10,1700000000,1\n1,99,1700000001,1\n2,11,1700000002,1\n3,98,17e8,1\n"


def test_unknown_items_error(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", UNKNOWN_LOG)
    with pytest.raises(DataError) as err:
        load(spec(log, write(tmp_path, "items.csv", GOOD_ITEMS)), unknown_ids="error")
    assert_names(err, log, "item_id", "2, 4", "not present in the items table", "2 row(s)",
                 "unknown_ids")


def test_unknown_users_error(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", UNKNOWN_LOG.replace(b"99", b"10").replace(b"98", b"11"))
    with pytest.raises(DataError) as err:
        load(spec(log, users=write(tmp_path, "users.csv", GOOD_USERS)), unknown_ids="error")
    assert_names(err, log, "user_id", "4", "not present in the users table", "1 row(s)")


def test_unknown_ids_dropped_and_counted(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", UNKNOWN_LOG)
    src = spec(log, write(tmp_path, "items.csv", GOOD_ITEMS),
               write(tmp_path, "users.csv", GOOD_USERS))
    interactions, _, _, dropped, _ = load(src, unknown_ids="drop")
    # Row 4 names both an unknown item and an unknown user: counted once, as an item.
    assert dropped == {"missing_ids": 0, "unknown_items": 2, "unknown_users": 0}
    assert interactions[["user_id", "item_id"]].values.tolist() == [[1, 10], [2, 11]]


def test_unknown_ids_dropped_everything_is_an_empty_table(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,98,1700000000,1\n1,99,1700000001,1\n")
    with pytest.raises(DataError, match="empty"):
        load(spec(log, write(tmp_path, "items.csv", GOOD_ITEMS)), unknown_ids="drop")


# ------------------------------------------------------------------ empty / missing
def test_empty_interactions_csv(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, None, None, "table is empty")


def test_empty_items_parquet(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"i": pa.array([], pa.int64()), "title": pa.array([], pa.string())}),
                   items)
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, None, None, "table is empty")


def test_zero_byte_csv(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", b"")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, None, None)


def test_missing_mapped_column(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t\n1,10,1700000000\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, None, None, "'w' (for weight)", "['u', 'i', 't']")


def test_a_column_named_twice_is_read_as_pandas_numbers_it(tmp_path: Path) -> None:
    """A header naming a column twice stopped ingest in pandas ("Buffer has wrong
    number of dimensions") when that name was mapped."""
    log = write(tmp_path, "log.csv", "u,i,t,w,x,x\n1,10,1700000000,1,a,b\n")
    raw = load_files(FilesSource.model_validate(
        spec(log, columns={**INTERACTION_COLUMNS, "query": "x.1"})))
    assert raw.interactions[0][1]["query"].tolist() == ["b"]
    assert any("read as 'x.1'" in n for n in raw.notes), raw.notes
    first, *_ = load(spec(log, columns={**INTERACTION_COLUMNS, "query": "x"}))
    assert first["query"].tolist() == ["a"]


def test_missing_required_column_not_mapped(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", GOOD_ITEMS)
    src = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    src["items"]["columns"] = {"item_id": "i"}  # no title
    with pytest.raises(DataError) as err:
        load(src)
    assert_names(err, items, None, None, "missing required column(s) ['title']")


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load(spec(tmp_path / "absent.csv"))
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        load(spec(write(tmp_path, "log.xlsx", "{}")))
    with pytest.raises(DataError, match="unsupported file type '.parquet.gz'"):
        load(spec(write(tmp_path, "log.parquet.gz", b"")))
    broken = write(tmp_path, "log.parquet", b"not parquet at all")
    with pytest.raises(DataError) as err:
        load(spec(broken))
    assert_names(err, broken, None, None, "cannot read Parquet")


def test_error_names_the_failing_file_among_several(tmp_path: Path) -> None:
    good = write(tmp_path, "a.csv", GOOD_INTERACTIONS)
    bad = write(tmp_path, "b.csv", "u,i,t,w\n1,10,1700000000,1\n2,10,1700000000,zz\n")
    with pytest.raises(DataError) as err:
        load(spec([good, bad]))
    assert_names(err, bad, "weight", "2")


# ------------------------------------------------------------------ every problem at once
def test_three_problems_in_one_file_are_reported_together(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n,11,1700000001,1\n"
                                     "3,10,soon,1\n4,10,1700000003,lots\n5,11,later,2\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    msg = assert_names(err, log, None, None, "3 problems")
    lines = msg.splitlines()
    assert len(lines) == 4, msg  # a heading, then one line per problem
    assert lines[1].strip() == ("column 'u' (user_id): null or blank values (ingest.missing_ids: "
                                "drop leaves such rows out): 1 row(s), first at data row(s) 2")
    assert lines[2].strip() == ("column 't' (ts): unparsable timestamp (expected s): 2 row(s), "
                                "first at data row(s) 3, 5 (values 'soon', 'later')")
    assert lines[3].strip() == ("column 'w' (weight): weight must be a finite number: 1 row(s), "
                                "first at data row(s) 4 (values 'lots')")


def test_items_problems_are_reported_together(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"i": [10, 11, 10, 12], "title": ["A", " ", "C", "D"],
                             "released": ["2020-01-01", None, "someday", "2021-05-01"],
                             "genres": [3, 1, 4, 1]}), items)  # codes, not tag lists
    src = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    src["items"]["columns"] = {**ITEM_COLUMNS, "created_ts": "released", "tags": "genres"}
    with pytest.raises(DataError) as err:
        load(src)
    msg = assert_names(err, items, None, None, "3 problems")
    assert "title" not in msg  # a blank one gets the item's id
    for fragment in ("column 'i' (item_id): duplicate ids (duplicate_ids: first keeps each "
                     "id's first row): 1 row(s), first at data row(s) 3",
                     "column 'released' (created_ts): unparsable timestamp",
                     "column 'genres' (tags): tags must be lists of strings: 4 row(s)"):
        assert fragment in msg, msg


def test_unmapped_required_column_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", "i,title\n10,A\n10,B\n")
    src = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    src["items"]["columns"] = {"item_id": "i"}  # no title
    with pytest.raises(DataError) as err:
        load(src)
    assert_names(err, items, "item_id", "2", "2 problems", "missing required column(s) "
                 "['title'] (not mapped in the source's columns)", "duplicate ids")


def test_explicit_time_unit_does_not_hide_other_problems(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n2,11,x1,-\n")
    with pytest.raises(DataError) as err:
        load(spec(log, ts_unit="s"))
    assert_names(err, log, "ts", "2", "2 problems", "unparsable timestamp (expected s)",
                 "column 'w' (weight): weight must be a finite number")


def test_tables_not_from_files_keep_contract_names() -> None:
    df = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 11], "ts": ["2024-01-01", "x"],
                       "event": ["click"] * 2, "weight": [1.0, 1.0]})
    with pytest.raises(DataError) as err:
        validate_interactions(df, "synthetic generator")
    assert str(err.value) == ("synthetic generator: column 'ts': unparsable timestamp "
                              "(expected iso): 1 row(s), first at data row(s) 2 (values 'x')")


# ------------------------------------------------------------------ nothing is written
def ingest_config(tmp_path: Path, source: dict, unknown_ids: str = "error"):
    return load_config(None, base={
        "dataset": "shop", "data_dir": str(tmp_path / "data"), "threads": 1,
        "source": source, "ingest": {"unknown_ids": unknown_ids},
    })


def leftovers(root: Path) -> list[str]:
    """Hidden temp/old folders next to stage outputs (lock files are fine)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and p.is_dir())


@pytest.mark.parametrize("case", ["bad-ts", "dup-items", "bad-utf8", "unknown-item", "empty"])
def test_failed_ingest_writes_nothing(tmp_path: Path, case: str) -> None:
    log_text = GOOD_INTERACTIONS
    items_text = GOOD_ITEMS
    if case == "bad-ts":
        log_text = b"u,i,t,w\n1,10,1700000000,1\n2,11,,1\n"
    elif case == "dup-items":
        items_text = b"i,title\n10,A\n10,B\n11,C\n"
    elif case == "bad-utf8":
        items_text = b"i,title\n10,A\n11,\xc3\x28\n"
    elif case == "unknown-item":
        log_text = b"u,i,t,w\n1,10,1700000000,1\n2,77,1700000000,1\n"
    elif case == "empty":
        log_text = b"u,i,t,w\n"
    src = spec(write(tmp_path, "log.csv", log_text), write(tmp_path, "items.csv", items_text))
    cfg = ingest_config(tmp_path, src)
    with pytest.raises(DataError):
        run_stage(cfg, "ingest")
    assert not (cfg.root / "raw").exists()
    assert leftovers(cfg.root) == []


def test_missing_source_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """Ingest hashes its source files before reading them; a mistyped path must still
    be the source's clear error (a raw FileNotFoundError until then), for both kinds."""
    items = write(tmp_path, "items.csv", GOOD_ITEMS)
    cfg = ingest_config(tmp_path, spec(tmp_path / "absent.csv", items))
    with pytest.raises(DataError, match=r"absent\.csv: file not found"):
        run_stage(cfg, "ingest")
    (tmp_path / "part-out").mkdir()  # a Spark job's output folder, named as a file
    cfg = ingest_config(tmp_path, spec(tmp_path / "part-out", items))
    with pytest.raises(DataError, match=r"part-out: is a folder; .*part-out/\*\.parquet"):
        run_stage(cfg, "ingest")
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(folder, "u.data", b"1\t10\t5\t881250949\n")
    cfg = ingest_config(tmp_path, {"kind": "movielens-100k", "path": str(folder)})
    with pytest.raises(DataError, match=r"MovieLens 100K not found \(u.item, u.user, u.genre"):
        run_stage(cfg, "ingest")
    assert not (cfg.root / "raw").exists()


def test_repeated_catalogue_rows_are_an_error_or_the_first_kept(tmp_path: Path) -> None:
    """Public catalogues repeat some ids (Amazon's metadata): an error naming the option,
    or each id's first row kept with a note, later rows still named as the file's."""
    items = write(tmp_path, "items.csv", "i,title\n10,Alpha\n11,Beta\n10,Again\n12,\n")
    log = write(tmp_path, "log.csv", GOOD_INTERACTIONS)
    with pytest.raises(DataError) as err:
        load(spec(log, items))
    assert_names(err, items, "item_id", "3", "duplicate ids", "duplicate_ids: first")
    source = spec(log, items)
    source["items"]["duplicate_ids"] = "first"
    raw = load_files(FilesSource.model_validate(source))
    _, items_df, *_ = validated_tables(raw, "error")
    assert items_df["title"].tolist() == ["Alpha", "Beta", "12"]
    assert any("1 row(s) repeat" in n and "data row(s) 3" in n for n in raw.notes), raw.notes
    # with a bad line left out first, the later duplicate is still named by its own row
    wide = write(tmp_path, "wide.csv", "i,title\n10,Alpha\n11,Beta,extra\n11,Beta\n10,Again\n")
    source = spec(log, wide)
    source["items"].update(duplicate_ids="first", bad_lines="skip")
    raw = load_files(FilesSource.model_validate(source))
    assert raw.items[1]["title"].tolist() == ["Alpha", "Beta"]
    assert any("repeat" in n and "data row(s) 4" in n for n in raw.notes), raw.notes
    # a users file's key is its user id, whatever else it maps
    users = write(tmp_path, "users.csv", "u,zip,fav\n1,85711,10\n2,94043,10\n")
    source = spec(log, users=users)
    source["users"].update(duplicate_ids="first", columns={**USER_COLUMNS, "item_id": "fav"})
    raw = load_files(FilesSource.model_validate(source))
    assert raw.users[1]["user_id"].tolist() == [1, 2]


def test_an_empty_partition_is_left_out_of_a_growing_log(tmp_path: Path) -> None:
    """An hour without events writes a part file with a header only, or no bytes at
    all (Spark does): either stopped the whole nightly ingest ('table is empty')."""
    folder = tmp_path / "log"
    folder.mkdir()
    write(folder, "part-1.csv", GOOD_INTERACTIONS)
    write(folder, "part-2.csv", "u,i,t,w\n")
    write(folder, "part-3.csv", "")
    (folder / "part-4.csv.gz").write_bytes(gzip.compress(b""))
    interactions, _, _, _, notes = load(spec(folder / "part-*.csv*"))
    assert len(interactions) == 3
    assert sum("no rows; the other files are read" in n for n in notes) == 3, notes
    write(folder, "part-5.csv", "\n  \n")  # white space only
    interactions, _, _, _, notes = load(spec(folder / "part-*.csv*"))
    assert len(interactions) == 3 and sum("no rows" in n for n in notes) == 4, notes
    with pytest.raises(DataError, match="table is empty"):  # one file, and empty: an error
        load(spec(folder / "part-2.csv"))
    for name in ("part-1.csv", "part-2.csv"):
        (folder / name).unlink()
    with pytest.raises(DataError, match="every file is empty"):
        load(spec(folder / "part-*.csv*"))


def test_failed_ingest_keeps_the_previous_good_output(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", GOOD_INTERACTIONS)
    items = write(tmp_path, "items.csv", GOOD_ITEMS)
    cfg = ingest_config(tmp_path, spec(log, items))
    manifest = run_stage(cfg, "ingest")
    raw_dir = cfg.root / "raw"
    assert manifest["counts"] == {"interactions": 3, "items": 2, "users": 2}
    before = {p.name: p.read_bytes() for p in raw_dir.iterdir()}
    assert set(before) == {"interactions.parquet", "items.parquet", "users.parquet",
                           "manifest.json"}

    items.write_bytes(b"i,title\n10,A\n11,B\n11,C\n")  # now breaks the contract
    with pytest.raises(DataError, match="duplicate ids"):
        run_stage(cfg, "ingest")
    assert {p.name: p.read_bytes() for p in raw_dir.iterdir()} == before
    assert leftovers(cfg.root) == []
    recorded = json.loads((raw_dir / "manifest.json").read_text())
    assert recorded["counts"]["interactions"] == 3


def test_ingest_with_drop_records_counts_in_manifest(tmp_path: Path) -> None:
    src = spec(write(tmp_path, "log.csv", UNKNOWN_LOG), write(tmp_path, "items.csv", GOOD_ITEMS))
    cfg = ingest_config(tmp_path, src, unknown_ids="drop")
    manifest = run_stage(cfg, "ingest")
    assert manifest["dropped"] == {"missing_ids": 0, "unknown_items": 2, "unknown_users": 0}
    assert manifest["counts"]["interactions"] == 2
    written = pq.read_table(cfg.root / "raw" / "interactions.parquet")
    assert written.num_rows == 2
    assert pa.types.is_timestamp(written.schema.field("ts").type)
    assert str(src["interactions"][0]["path"]) in manifest["source_files"]


def test_weights_of_zero_or_less_are_kept_with_a_note_saying_what_they_count_as(
        tmp_path: Path) -> None:
    """A -1 "dislike" counts as an interaction like any other: said at ingest, not
    silently."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,-1\n2,11,1700000100,0\n"
                                     "1,11,1700000200,2\n")
    manifest = run_stage(ingest_config(tmp_path, spec(log)), "ingest")
    assert manifest["counts"]["interactions"] == 3
    [note] = manifest["notes"]
    assert note.startswith("2 interactions have a weight of 0 or less") and "dislikes" in note
    manifest = run_stage(ingest_config(tmp_path, spec(write(tmp_path, "good.csv",
                                                            GOOD_INTERACTIONS))), "ingest")
    assert manifest["notes"] == []


def test_items_without_a_title_get_their_id_as_one_with_a_warning(tmp_path: Path,
                                                                    caplog) -> None:
    """The whole table was refused, so editing the file was the only way on."""
    log = write(tmp_path, "log.csv", GOOD_INTERACTIONS)
    items = write(tmp_path, "items.csv", "i,title\n10,Alpha\n11,\n12,  \n")
    with caplog.at_level("WARNING", logger="pipeline"):
        _, items_df, *_ = load(spec(log, items))
    assert items_df["title"].tolist() == ["Alpha", "11", "12"]
    assert f"{items}: column 'title': 2 item(s) without a title, first at data row(s) 2, 3" \
        in caplog.text


# ------------------------------------------------------------------ unseen shapes
def test_blank_optional_text_is_none_not_an_empty_string(tmp_path: Path) -> None:
    """A CSV's empty cells in a query, region or category column are no value: read as
    empty strings, every event with an empty query had been a search."""
    log = write(tmp_path, "log.csv", "u,i,t,w,q,r\n1,10,1700000000,1,red shoes,\n"
                                     "2,11,1700000100,1,,n\n1,11,1700000200,1,  ,\n")
    items = write(tmp_path, "items.csv", "i,title,kind\n10,Alpha,\n11,Beta,drama\n")
    users = write(tmp_path, "users.csv", "u,zip\n1,\n2,94043\n")
    source = spec(log, items, users, columns={**INTERACTION_COLUMNS, "query": "q",
                                              "region": "r"})
    source["items"]["columns"] = {**ITEM_COLUMNS, "category": "kind"}
    interactions, items_df, users_df, *_ = load(source)
    assert interactions["query"].isna().tolist() == [False, True, True]
    assert interactions["region"].isna().tolist() == [True, False, True]
    assert items_df["category"].isna().tolist() == [True, False]
    assert users_df["region"].isna().tolist() == [True, False]


def test_zero_padded_csv_ids_are_labels_and_plain_ones_numbers(tmp_path: Path) -> None:
    """"00007" and "7" are two users: read as numbers they had been merged into one.
    Ids a program writes as numbers (7, 11.0) stay numbers."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n00007,0010,1700000000,1\n7,0011,1700000100,1\n")
    items = write(tmp_path, "items.csv", "i,title\n0010,Alpha\n0011,Beta\n")
    interactions, items_df, users_df, *_ = load(spec(log, items))
    assert interactions["user_id"].tolist() == ["00007", "7"] and len(users_df) == 2
    assert interactions["item_id"].tolist() == ["0010", "0011"]
    assert items_df["item_id"].tolist() == ["0010", "0011"]
    plain = write(tmp_path, "plain.csv", "u,i,t,w\n 7,10,1700000000,1\n8 , 11.0,1700000100,1\n")
    interactions, *_ = load(spec(plain))  # spaces around ids trimmed, as numbers were
    assert interactions["user_id"].tolist() == [7, 8]
    assert interactions["item_id"].tolist() == [10, 11]
    labels = write(tmp_path, "labels.csv", "u,i,t,w\n1e3,10,1700000000,1\n1000,11,1700000100,1\n")
    assert load(spec(labels))[0]["user_id"].tolist() == ["1e3", "1000"]  # not one user
    blank = write(tmp_path, "blank.csv", "u,i,t,w\n7,10,1700000000,1\n,11,1700000100,1\n")
    with pytest.raises(DataError) as err:
        load(spec(blank))
    assert_names(err, blank, "user_id", "2", "null or blank values")


@pytest.mark.parametrize(("scale", "unit"), [(1, None), (1000, None), (1_000_000, None),
                                             (1000, "ms")])
def test_numbers_since_1970_are_read_in_the_unit_their_size_says(tmp_path: Path, scale: int,
                                                                 unit: str | None) -> None:
    rows = "".join(f"{n},10,{t * scale},1\n" for n, t in ((1, 1700000000), (2, 1700000100)))
    interactions, *_ = load(spec(write(tmp_path, "log.csv", f"u,i,t,w\n{rows}"), ts_unit=unit))
    assert interactions["ts"].tolist() == [pd.Timestamp("2023-11-14 22:13:20"),
                                           pd.Timestamp("2023-11-14 22:15:00")]


def test_milliseconds_read_as_seconds_are_reported_at_ingest(tmp_path: Path) -> None:
    """Named with the file's column and the unit asked for, at ingest: read as seconds,
    milliseconds put the log in the year 55,000 and it failed only at the report."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000000,1\n2,11,1700000100000,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log, ts_unit="s"))
    assert_names(err, log, "ts", "1, 2", "after the year 2300", "seconds", "ts_unit")


def test_milliseconds_with_a_bad_cell_are_still_read_by_their_size(tmp_path: Path) -> None:
    """One bad cell makes the CSV column text; its numbers are still milliseconds, so
    only the bad row is reported."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000000,1\n2,11,oops,1\n"
                                     "1,11,1700000100000,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    msg = assert_names(err, log, "ts", "2", "unparsable timestamp (expected ms)")
    assert "2300" not in msg


# --------------------------------------------------------------- dates far from the rest
def hourly_log(hours: int, odd: dict[int, int] | None = None) -> str:
    """``hours`` events an hour apart from 2023-11-14, the rows in ``odd`` (0-based)
    dated at the unix seconds given instead."""
    times = [1_700_000_000 + 3600 * h for h in range(hours)]
    for row, ts in (odd or {}).items():
        times[row] = ts
    return "u,i,timestamp,w\n" + "".join(f"{h % 7},{h % 11},{t},1\n"
                                         for h, t in enumerate(times))


STAMPED = {**INTERACTION_COLUMNS, "ts": "timestamp"}


def test_placeholder_dates_are_noted_with_file_column_rows(tmp_path: Path) -> None:
    """Two events at 0 and one in 2099 among 300 in two weeks stretch the log's span (and
    every half-life that is a share of it) a thousandfold: ingest says so, naming the
    file, the user's column and the rows, and still loads them."""
    log = write(tmp_path, "log.csv", hourly_log(300, {5: 0, 77: 0, 120: 4_102_358_400}))
    interactions, *_, notes = load(spec(log, columns=STAMPED))
    assert len(interactions) == 300
    [note] = notes
    assert note.startswith(f"{log}: column 'timestamp' (ts): 3 event(s) dated far outside")
    assert "data row(s) 6, 78, 121" in note
    assert "dates 1970-01-01, 1970-01-01, 2099-12-31" in note
    # sorted, the 25th and 75th percentiles (nearest) are positions 75 and 224 of 0-299:
    # with the two zeros before them and hours 5, 77 and 120 moved, hours 74 and 225
    assert "half of them from 2023-11-18 to 2023-11-24" in note
    assert "half_life_days" in note


@pytest.mark.parametrize(("hours", "odd", "noted"), [
    (300, {n: 0 for n in range(0, 300, 5)}, 60),  # a fifth of a file at 0
    (8, {3: 0}, 1),  # a small file
    (300, {0: 1_700_000_000 - 20 * 86_400}, 0),  # 20 days before, within 5 x 6 days
    (300, {0: 1_700_000_000 - 40 * 86_400}, 1),  # 40 days before: beyond 5 x 6 days
])
def test_stray_dates_by_the_middle_half(tmp_path: Path, hours: int, odd: dict[int, int],
                                        noted: int) -> None:
    """Far means more than five spans of the middle half (here 6.2 days) beyond it,
    whatever share of the file is stray, up to a quarter."""
    log = write(tmp_path, "log.csv", hourly_log(hours, odd))
    *_, notes = load(spec(log, columns=STAMPED))
    assert [int(n.split(": ")[2].split(" ")[0]) for n in notes] == ([noted] if noted else [])


@pytest.mark.parametrize("text", [
    hourly_log(300),
    "u,i,timestamp,w\n" + "".join(f"{n % 5},{n % 9},{946_684_800 + n * 2_100_000},1\n"
                                  for n in range(300)),
], ids=["two weeks", "twenty years evenly"])
def test_no_note_for_logs_without_stray_dates(tmp_path: Path, text: str) -> None:
    *_, notes = load(spec(write(tmp_path, "log.csv", text), columns=STAMPED))
    assert notes == []


def test_no_note_for_a_log_without_time(tmp_path: Path) -> None:
    """Every event of an untimed log is dated 1970-01-01: one time, nothing stray."""
    log = write(tmp_path, "log.csv", "u,i,w\n1,10,1\n2,11,1\n1,11,1\n")
    *_, notes = load(spec(log, columns={"user_id": "u", "item_id": "i", "weight": "w"}))
    assert notes == []


def test_ingest_logs_and_records_the_stray_dates_note(tmp_path: Path, caplog) -> None:
    log = write(tmp_path, "log.csv", hourly_log(300, {5: 0}))
    with caplog.at_level("WARNING", logger="pipeline"):
        manifest = run_stage(ingest_config(tmp_path, spec(log, columns=STAMPED)), "ingest")
    [note] = manifest["notes"]
    assert "1 event(s) dated far outside" in note
    assert note in caplog.text


# --------------------------------------------------- formats public logs come in
def plain_log(tmp_path: Path) -> pd.DataFrame:
    return load(spec(write(tmp_path, "plain.csv", GOOD_INTERACTIONS)))[0]


@pytest.mark.parametrize(("name", "pack"), [
    ("log.csv.gz", gzip.compress), ("log.csv.bz2", bz2.compress),
    ("log.tsv.gz", lambda b: gzip.compress(b.replace(b",", b"\t")))])
def test_compressed_text_reads_as_the_plain_file(tmp_path: Path, name: str, pack) -> None:
    packed = load(spec(write(tmp_path, name, pack(GOOD_INTERACTIONS))))[0]
    pd.testing.assert_frame_equal(packed, plain_log(tmp_path))


@pytest.mark.parametrize("name", ["log.jsonl", "log.ndjson", "log.json.gz"])
def test_json_lines_read_as_the_csv_would(tmp_path: Path, name: str) -> None:
    """One object a line, ids as text or numbers (typed as the CSV's would be), a nested
    field nobody maps left out."""
    rows = [{"u": "1", "i": 10, "t": 1700000000, "w": 1.0, "meta": {"a": [1, 2]}},
            {"u": "2", "i": 11, "t": 1700000100, "w": 2},
            {"u": "1", "i": 11, "t": 1700000200, "w": 0.5, "meta": {"a": []}}]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    got = load(spec(write(tmp_path, name, gzip.compress(text) if name.endswith(".gz")
                          else text)))[0]
    pd.testing.assert_frame_equal(got, plain_log(tmp_path))


def test_a_json_array_is_not_json_lines(tmp_path: Path) -> None:
    log = write(tmp_path, "log.json", '[{"u": 1, "i": 10, "t": 1700000000, "w": 1}]')
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, None, None, "data row 1 is not a JSON object",
                 "one object a line")


def test_a_headerless_file_with_a_two_character_delimiter(tmp_path: Path) -> None:
    """MovieLens 1M's ratings.dat: ``user::movie::rating::time``, no header row."""
    log = write(tmp_path, "ratings.dat", GOOD_INTERACTIONS.split(b"\n", 1)[1]
                .replace(b",", b"::"))
    source = spec(log)
    source["interactions"][0].update(delimiter="::", header=["u", "i", "t", "w"])
    pd.testing.assert_frame_equal(load(source)[0], plain_log(tmp_path))


def test_a_semicolon_delimiter_and_list_tags_from_json(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv", GOOD_INTERACTIONS.replace(b",", b";"))
    items = write(tmp_path, "items.jsonl", '{"i": 10, "title": "Alpha", "tags": ["a", "b"]}\n'
                                          '{"i": 11, "title": "Beta", "tags": []}\n')
    source = spec(log, items)
    source["interactions"][0]["delimiter"] = ";"
    source["items"].update(columns={**ITEM_COLUMNS, "tags": "tags"}, list_columns={"tags": "|"})
    interactions, items_df, *_ = load(source)
    pd.testing.assert_frame_equal(interactions, plain_log(tmp_path))
    assert items_df.set_index("item_id")["tags"].to_dict() == {10: ["a", "b"], 11: []}


def test_the_spare_byte_is_refused_in_a_file_with_a_long_delimiter(tmp_path: Path) -> None:
    log = write(tmp_path, "log.dat", b"1::10::1700000000::1\n2::1\x1f1::1700000100::1\n")
    source = spec(log)
    source["interactions"][0].update(delimiter="::", header=["u", "i", "t", "w"])
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, log, None, None, "0x1f", "'::'")


def test_invalid_utf8_in_a_compressed_headerless_file(tmp_path: Path) -> None:
    log = write(tmp_path, "log.csv.gz", gzip.compress(
        b"1,10,1700000000,1\n2,1\xff,1700000000,1\n"))
    source = spec(log)
    source["interactions"][0]["header"] = ["u", "i", "t", "w"]
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, log, "item_id", "2", "not valid UTF-8")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("header", ["u", "u"], "distinct"), ("delimiter", "\n", "line break"),
    ("delimiter", "", "at least 1 character"), ("encoding", "klingon", "unknown encoding")])
def test_bad_reading_settings_are_config_errors(tmp_path: Path, field: str, value: object,
                                                message: str) -> None:
    source = spec(tmp_path / "log.csv")
    source["interactions"][0][field] = value
    with pytest.raises(ValueError, match=message):
        FilesSource.model_validate(source)


def test_a_latin1_file_with_its_encoding_given(tmp_path: Path) -> None:
    """MovieLens' u.item style: '|'-separated, no header, latin-1 titles."""
    items = write(tmp_path, "u.item", b"10|Caf\xe9 (1995)\n11|Mis\xe9rables, Les (1995)\n")
    log = write(tmp_path, "log.csv", GOOD_INTERACTIONS)
    source = spec(log, items)
    source["items"].update(path=str(tmp_path / "u.item.txt"), delimiter="|",
                           header=["i", "title"])
    items.rename(tmp_path / "u.item.txt")
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, tmp_path / "u.item.txt", "title", "1, 2", "not valid UTF-8", "latin-1")
    source["items"]["encoding"] = "latin-1"
    titles = load(source)[1].set_index("item_id")["title"].to_dict()
    assert titles == {10: "Caf\u00e9 (1995)", 11: "Mis\u00e9rables, Les (1995)"}


def test_times_in_a_format_of_their_own(tmp_path: Path) -> None:
    """Goodreads writes 'Mon Aug 28 14:18:36 -0700 2017': a strftime pattern reads it, the
    zone applied; a row that does not match is named."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,Mon Aug 28 14:18:36 -0700 2017,1\n"
                                     "2,11,Tue Aug 29 01:00:00 +0000 2017,1\n")
    source = spec(log)
    source["interactions"][0]["ts_format"] = "%a %b %d %H:%M:%S %z %Y"
    assert load(source)[0]["ts"].tolist() == [pd.Timestamp("2017-08-28 21:18:36"),
                                              pd.Timestamp("2017-08-29 01:00:00")]
    write(tmp_path, "log.csv", "u,i,t,w\n1,10,Mon Aug 28 14:18:36 -0700 2017,1\n"
                               "2,11,2017-08-29,1\n")
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, log, "ts", "2", "unparsable timestamp", "%a %b %d")
    write(tmp_path, "log.csv", "u,i,t,w\n1,10,Mon Aug 28 14:18:36 -0700 2017,1\n2,11, ,1\n")
    with pytest.raises(DataError) as err:  # a blank time is a null, not a missing event
        load(source)
    assert_names(err, log, "ts", "2", "null values")
    with pytest.raises(ValueError, match="not both"):
        FilesSource.model_validate({**source, "interactions": [
            {**source["interactions"][0], "ts_unit": "s"}]})


@pytest.mark.parametrize(("name", "setting", "value"), [
    ("log.parquet", "header", ["u", "i", "t", "w"]), ("log.jsonl", "delimiter", ";"),
    ("log.jsonl.gz", "encoding", "latin-1")])
def test_text_settings_on_other_files_are_refused(tmp_path: Path, name: str, setting: str,
                                                  value: object) -> None:
    log = tmp_path / name
    log.write_bytes(b"")
    source = spec(log)
    source["interactions"][0][setting] = value
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, log, None, None, f"{setting} applies to text files only")


def test_invalid_utf8_in_json_lines_is_named(tmp_path: Path) -> None:
    items = write(tmp_path, "items.jsonl", b'{"i": 10, "title": "Alpha"}\n'
                                           b'{"i": 11, "title": "Caf\xe9"}\n')
    with pytest.raises(DataError) as err:
        load(spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items))
    assert_names(err, items, "title", "2", "not valid UTF-8")


def test_ts_format_reads_digits_as_text(tmp_path: Path) -> None:
    """01112017 is 11 January with %m%d%Y, not the number 1112017."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,01112017,1\n2,11,12312017,1\n")
    source = spec(log)
    source["interactions"][0]["ts_format"] = "%m%d%Y"
    assert load(source)[0]["ts"].tolist() == [pd.Timestamp("2017-01-11"),
                                              pd.Timestamp("2017-12-31")]


def test_a_long_delimiter_in_a_quoted_value_and_a_byte_order_mark(tmp_path: Path) -> None:
    items = write(tmp_path, "items.dat", '\ufeffi::title\n10::"Alpha::Beta"\n11::Gamma\n'
                  .encode("utf-8"))
    source = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    source["items"].update(delimiter="::", encoding="utf-8-sig")
    titles = load(source)[1].set_index("item_id")["title"].to_dict()
    assert titles == {10: "Alpha::Beta", 11: "Gamma"}


@pytest.mark.parametrize("delimiter", [",", "::"])
def test_text_not_in_its_given_encoding(tmp_path: Path, delimiter: str) -> None:
    items = write(tmp_path, "items.csv", f"i{delimiter}title\n10{delimiter}".encode()
                  + b"Caf\x81\n11" + delimiter.encode() + b"Ok\n")
    source = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    source["items"].update(delimiter=delimiter, encoding="cp1252")
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, items, None, None, "not valid cp1252")


@pytest.mark.parametrize(("values", "expected"), [
    ([3, 5, 7], [["3"], ["5"], ["7"]]),  # numbers: their text, as before
    (["a|b", None, "c"], [["a", "b"], [], ["c"]]),
    ([["a", "b"], [], ["c"]], [["a", "b"], [], ["c"]]),  # lists: as they are
])
def test_list_columns_from_parquet(tmp_path: Path, values: list, expected: list) -> None:
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"i": [10, 11, 12], "title": ["A", "B", "C"], "tags": values}),
                   items)
    source = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    source["items"].update(columns={**ITEM_COLUMNS, "tags": "tags"}, list_columns={"tags": "|"})
    assert load(source)[1]["tags"].tolist() == expected


def test_a_compressed_parquet_name_is_refused_even_with_a_delimiter(tmp_path: Path) -> None:
    log = write(tmp_path, "log.parquet.gz", b"")
    source = spec(log)
    source["interactions"][0]["delimiter"] = ","
    with pytest.raises(DataError, match="unsupported file type '.parquet.gz'"):
        load(source)


def test_category_paths_as_lists_of_lists_are_flattened(tmp_path: Path) -> None:
    """Amazon's metadata: "categories": [["Books", "Fiction"], ["Books", "Classics"]]."""
    items = write(tmp_path, "meta.jsonl",
                  '{"i": 10, "title": "A", "categories": [["Books", "Fiction"], ["Sale"]]}\n'
                  '{"i": 11, "title": "B", "categories": []}\n')
    source = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    source["items"]["columns"] = {**ITEM_COLUMNS, "tags": "categories"}
    tags = load(source)[1].set_index("item_id")["tags"].to_dict()
    assert tags == {10: ["Books", "Fiction", "Sale"], 11: []}


def test_daily_gzip_partitions_beside_json_lines(tmp_path: Path) -> None:
    """A glob of compressed CSV partitions and a JSON lines file feed one log; the JSON
    file's text ids ("10") meet the CSV's numbers."""
    for day, rows in (("01", "1,10,1767225600\n2,11,1767229200\n"), ("02", "1,11,1767312000\n")):
        (tmp_path / f"dt={day}").mkdir()
        write(tmp_path / f"dt={day}", "part-0.csv.gz", gzip.compress(f"u,i,t\n{rows}".encode()))
    write(tmp_path, "views.jsonl", '{"user": 2, "sku": "10", "when": "2026-01-02T10:00:00Z"}\n')
    source = {"kind": "files", "interactions": [
        {"path": str(tmp_path / "dt=*" / "part-*.csv.gz"), "event": "buy",
         "columns": {"user_id": "u", "item_id": "i", "ts": "t"}},
        {"path": str(tmp_path / "views.jsonl"), "event": "view",
         "columns": {"user_id": "user", "item_id": "sku", "ts": "when"}}]}
    interactions, *_ = load(source)
    assert interactions[["user_id", "item_id", "event"]].values.tolist() == [
        [1, 10, "buy"], [2, 11, "buy"], [1, 11, "buy"], [2, 10, "view"]]
    assert interactions["ts"].iloc[-1] == pd.Timestamp("2026-01-02 10:00:00")


def test_a_column_in_the_partition_path_is_read_from_it(tmp_path: Path) -> None:
    """A Spark job's daily counts keep their day in the path (``dt=2024-01-05/``), not
    in the rows: mapping ``ts`` to ``dt`` stopped ingest ("not in the file"), and left
    unmapped the log had no time, split at random. The folder's value is the column
    now (Hive's escapes undone); a name in neither file nor path is still named."""
    for day, rows in (("2024-01-05", "1,10,3\n2,11,1\n"), ("2024-01-06", "1,11,2\n")):
        folder = tmp_path / "region=EU%2FWest" / f"dt={day}"
        folder.mkdir(parents=True)
        write(folder, "part-0.csv", f"u,i,n\n{rows}")
    entry = {"path": str(tmp_path / "region=*" / "dt=*" / "part-*.csv"),
             "columns": {"user_id": "u", "item_id": "i", "ts": "dt", "weight": "n"}}
    interactions, *_ = load({"kind": "files", "interactions": [entry]})
    assert interactions["ts"].tolist() == [pd.Timestamp("2024-01-05")] * 2 + [
        pd.Timestamp("2024-01-06")]
    assert interactions["weight"].tolist() == [3.0, 1.0, 2.0]
    entry["columns"]["event"] = "region"
    assert load({"kind": "files", "interactions": [entry]})[0]["event"].unique().tolist() == [
        "EU/West"]
    entry["columns"]["ts"] = "day"
    with pytest.raises(DataError, match=r"'day' \(for ts\).*its path \['dt', 'region'\]"):
        load({"kind": "files", "interactions": [entry]})


def test_json_ids_that_are_numbers_in_some_rows_and_text_in_others(tmp_path: Path) -> None:
    """pyarrow refuses a field of two kinds; such lines are parsed one by one, the mapped
    fields kept (an unmapped field of two kinds is no matter) and the ids typed as the
    CSV's would be."""
    rows = [{"u": 1, "i": "10", "t": 1700000000, "w": 1.0, "note": 5},
            {"u": "2", "i": 11, "t": 1700000100, "w": 2, "note": "five"},
            {"u": 1, "i": 11, "t": 1700000200, "w": 0.5}]
    log = write(tmp_path, "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    pd.testing.assert_frame_equal(load(spec(log))[0], plain_log(tmp_path))
    write(tmp_path, "log.jsonl", json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n{oops\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, None, None, "data row 3 is not a JSON object")
    write(tmp_path, "log.jsonl", "".join(json.dumps({k: v for k, v in r.items() if k != "w"})
                                         + "\n" for r in rows))
    with pytest.raises(DataError) as err:  # a mapped field in no row: named as missing
        load(spec(log))
    assert_names(err, log, None, None, "mapped column(s) not in the file: 'w' (for weight)")


def test_json_field_of_lists_and_text_is_named(tmp_path: Path) -> None:
    items = write(tmp_path, "items.jsonl", '{"i": 10, "title": "A", "tags": ["x"]}\n'
                                           '{"i": "11", "title": "B", "tags": "y"}\n')
    source = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    source["items"]["columns"] = {**ITEM_COLUMNS, "tags": "tags"}
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, items, None, None, "column 'tags' holds values of kinds",
                 "['list', 'str']")


def test_items_created_ts_in_a_format_of_their_own(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", "i,title,added\n10,Alpha,28/08/2017\n11,Beta,\n")
    source = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    source["items"].update(columns={**ITEM_COLUMNS, "created_ts": "added"},
                           ts_format="%d/%m/%Y")
    created = load(source)[1].set_index("item_id")["created_ts"]
    assert created[10] == pd.Timestamp("2017-08-28") and pd.isna(created[11])
    users = write(tmp_path, "users.csv", GOOD_USERS)
    with pytest.raises(ValueError, match="ts_format"):  # a users file has no time column
        FilesSource.model_validate({**spec(tmp_path / "log.csv", users=users),
                                    "users": {"path": str(users), "columns": USER_COLUMNS,
                                              "ts_format": "%Y"}})


def test_missing_ids_are_dropped_when_asked_and_rows_keep_their_numbers(tmp_path: Path) -> None:
    """Public logs leave ids empty (Last.fm's track ids): an error by default naming the
    option, left out under ``missing_ids: drop``, and a later problem in the same file
    still names the file's own row."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n,11,1700000100,1\n"
                "2,,1700000200,1\n2,11,1700000300,1\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, "user_id", "2", "null or blank values", "missing_ids: drop")
    interactions, _, _, dropped, _ = validated_tables(load_files(FilesSource(**spec(log))),
                                                      "error", "drop")
    assert dropped["missing_ids"] == 2
    assert interactions[["user_id", "item_id"]].values.tolist() == [[1, 10], [2, 11]]
    bad = write(tmp_path, "bad.csv", "u,i,t,w\n,10,1700000000,1\n1,10,1700000000,x\n")
    with pytest.raises(DataError) as err:
        validated_tables(load_files(FilesSource(**spec(bad))), "error", "drop")
    assert_names(err, bad, "weight", "2", "'x'")
    empty = write(tmp_path, "empty.csv", "u,i,t,w\n,10,1700000000,1\n1,,1700000000,1\n")
    with pytest.raises(DataError, match="no interaction has both a user and an item id"):
        validated_tables(load_files(FilesSource(**spec(empty))), "error", "drop")
    # a partition of such rows alone is left out with them, not the whole log refused,
    # and named: its column may be the wrong one
    interactions, _, _, _, notes = validated_tables(
        load_files(FilesSource(**spec([log, empty]))), "error", "drop")
    assert len(interactions) == 2
    assert any(str(empty) in n and "every row lacks" in n for n in notes), notes


def test_dropped_ids_and_skipped_lines_together_keep_the_files_row_numbers(
        tmp_path: Path) -> None:
    """Rows left out twice over, a line of the wrong width and then an empty id: a
    later problem still names the file's own data row."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n2,11,1,1,extra\n"
                ",12,1700000100,1\n3,10,1700000200,1\n4,11,1700000300,lots\n")
    source = spec(log)
    source["interactions"][0]["bad_lines"] = "skip"
    with pytest.raises(DataError) as err:
        validated_tables(load_files(FilesSource.model_validate(source)), "error", "drop")
    assert_names(err, log, "weight", "5", "'lots'")


@pytest.mark.parametrize("kind", ["parquet", "csv", "json"])
def test_64_bit_ids_with_an_empty_one_keep_their_digits(tmp_path: Path, kind: str) -> None:
    """pandas makes an integer column with a missing value floats: 64-bit ids lost their
    last digits and were refused as inexact floats, though the file held integers."""
    big = [2**62 + 1, 2**62 + 3]
    path = tmp_path / f"log.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"u": pa.array([*big, None], pa.int64()), "i": [10, 11, 12],
                                 "t": [1700000000, 1700000100, 1700000200],
                                 "w": [1.0] * 3}), path)
    elif kind == "csv":
        write(tmp_path, path.name, f"u,i,t,w\n{big[0]},10,1700000000,1\n{big[1]},11,"
                                   "1700000100,1\n,12,1700000200,1\n")
    else:
        rows = [{"u": big[0], "i": 10}, {"u": big[1], "i": 11}, {"u": None, "i": 12}]
        write(tmp_path, path.name, "".join(json.dumps({**r, "t": 1700000000, "w": 1}) + "\n"
                                           for r in rows))
    interactions, _, _, dropped, _ = validated_tables(
        load_files(FilesSource.model_validate(spec(path))), "error", "drop")
    assert interactions["user_id"].tolist() == big and dropped["missing_ids"] == 1


def test_json_ids_past_int64_keep_their_digits(tmp_path: Path) -> None:
    """pyarrow reads a JSON integer past int64 as a double, digits lost."""
    log = write(tmp_path, "log.jsonl", "".join(
        json.dumps({"u": u, "i": 10, "t": 1700000000, "w": 1}) + "\n"
        for u in (2**64 - 5, 2**64 - 7, 5)))
    interactions, *_ = load(spec(log))
    assert interactions["user_id"].tolist() == [str(2**64 - 5), str(2**64 - 7), "5"]


def test_undecodable_byte_ids_are_named_not_a_traceback(tmp_path: Path) -> None:
    """Looking for blank ids decoded a binary column first: UnicodeDecodeError, raw."""
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": pa.array([b"a", b"\xff"], pa.binary()), "i": [10, 11],
                             "t": [1700000000, 1700000100], "w": [1.0, 1.0]}), path)
    with pytest.raises(DataError) as err:
        load(spec(path))
    assert_names(err, path, "user_id", "2", "not valid UTF-8")


def test_blank_text_ids_are_missing(tmp_path: Path) -> None:
    """A Parquet log's "" id was a user of its own; it is an empty id, as in a CSV."""
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": ["a", " ", "b"], "i": ["x", "y", ""], "t": [1700000000] * 3,
                             "w": [1.0] * 3}), path)
    with pytest.raises(DataError) as err:
        load(spec(path))
    assert_names(err, path, "user_id", "2", "null or blank values")
    interactions, _, _, dropped, _ = validated_tables(
        load_files(FilesSource.model_validate(spec(path))), "error", "drop")
    assert interactions["user_id"].tolist() == ["a"] and dropped["missing_ids"] == 2


def test_lines_of_the_wrong_width_are_an_error_or_left_out(tmp_path: Path) -> None:
    """Public CSVs carry a malformed line or two (Book-Crossing's): an error naming it
    and the option, or, under ``bad_lines: skip``, left out with a note, and a later
    problem still named by the file's own data row."""
    log = write(tmp_path, "log.csv", "u,i,t,w\n1,10,1700000000,1\n2,11,1700000100,1,extra\n"
                "3,10,1700000200,1\n4,11,1700000300,lots\n")
    with pytest.raises(DataError, match=r"Expected 4 columns, got 5.*bad_lines: skip"):
        load(spec(log))
    source = spec(log)
    source["interactions"][0]["bad_lines"] = "skip"
    raw = load_files(FilesSource.model_validate(source))
    assert [len(df) for _, df in raw.interactions] == [3]
    assert any("1 record(s) with more or fewer fields" in n and "1 line(s) in all" in n
               and "data row(s) 2" in n for n in raw.notes), raw.notes
    with pytest.raises(DataError) as err:
        validated_tables(raw, "error")
    assert_names(err, log, "weight", "4", "'lots'")


def test_an_unclosed_quote_stops_ingest_and_quote_null_reads_it(tmp_path: Path) -> None:
    """A tab-separated log whose titles hold quotes: the unclosed one took in the next
    lines, rows and all, without a word (Last.fm's track names; half such a log went).
    Now an error naming the column and rows; ``quote: null`` reads every line with the
    quote kept in the value, and ``multiline: keep`` keeps what the quote took, noted."""
    log = write(tmp_path, "log.tsv", 'u\ti\tt\tw\ttrack\n1\t10\t1700000000\t1\t"Weird\n'
                "2\t11\t1700000100\t1\tDeep Dish\n3\t10\t1700000200\t1\tFine\n")
    with pytest.raises(DataError) as err:
        load(spec(log))
    assert_names(err, log, None, "1", "looks like whole rows", "column 'track'", "quote: null")
    for setting, rows in (({"quote": None}, 3), ({"multiline": "keep"}, 1)):
        source = spec(log)
        source["interactions"][0].update(setting)
        raw = load_files(FilesSource.model_validate(source))
        assert len(raw.interactions[0][1]) == rows
        noted = [n for n in raw.notes if "over several lines" in n]
        assert len(noted) == ("multiline" in setting), raw.notes


def test_an_unclosed_quote_closed_further_on_is_named_not_skipped(tmp_path: Path) -> None:
    """The quote closes at a later one mid-line: the record it made has the wrong width,
    and ``bad_lines: skip`` had left out every line in between as one bad line."""
    lines = ['1\t10\t1700000000\t1\t"Weird Al\tsong 1'] + [
        f"{n}\t11\t1700000100\t1\tartist\tsong {n}" for n in range(2, 50)] + [
        '50\t12\t1700000200\t1\tartist\tThe "Best" of']  # opened in one column, closed in the next
    log = write(tmp_path, "log.tsv", "u\ti\tt\tw\tartist\ttrack\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match="quote: null") as err:
        load(spec(log))
    assert "bad_lines: skip leaves such lines out" not in str(err.value)  # it loses them
    assert "multiline: keep with bad_lines: skip" in str(err.value)  # one trip, not two
    source = spec(log)
    source["interactions"][0]["bad_lines"] = "skip"
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, log, None, "1", "span several lines", "quote: null", "multiline: keep")


def test_a_description_over_several_lines_is_kept(tmp_path: Path) -> None:
    """Quoted text over several lines with no rows inside (an item's description, its
    commas too) is no unclosed quote: kept by default, with a note; closed quotes on one
    line say nothing."""
    items = write(tmp_path, "items.csv", 'i,title,about\n10,"Alpha","A kettle.\nFast, quiet, '
                  'and cheap."\n11,Beta,"Yes, a pot"\n')
    raw = load_files(FilesSource.model_validate(spec(write(tmp_path, "log.csv",
                                                           GOOD_INTERACTIONS), items)))
    assert raw.items[1]["title"].tolist() == ["Alpha", "Beta"]
    assert any("over several lines, kept" in n and "'about'" in n for n in raw.notes), raw.notes
    asin = write(tmp_path, "asin.csv", 'i,title,about,price\nB01,"Alpha","A kettle.\nFast, '
                 'quiet, and, cheap.",9.5\nB02,Beta,"Yes, a pot",2\n')
    source = spec(write(tmp_path, "log3.csv", "u,i,t,w\n1,B01,1700000000,1\n"), asin)
    source["items"]["columns"] = {**ITEM_COLUMNS, "text": "about"}
    raw = load_files(FilesSource.model_validate(source))  # 'cheap.' is no price: no row
    assert any("over several lines, kept" in n for n in raw.notes), raw.notes
    quiet = write(tmp_path, "quiet.csv", 'i,title\n10,"Alpha, the first"\n11,Beta\n')
    log = write(tmp_path, "log2.csv", GOOD_INTERACTIONS)
    assert not load_files(FilesSource.model_validate(spec(log, quiet))).notes


def test_a_wide_record_over_lines_under_multiline_keep_points_to_bad_lines(
        tmp_path: Path) -> None:
    """With values over lines allowed, what gets past a record of the wrong width that
    an unclosed quote made is bad_lines: skip, not the setting already given."""
    lines = ['1\t10\t1700000000\t1\t"Weird Al\tsong 1',
             '2\t11\t1700000100\t1\tartist\tThe "Best" of',
             "3\t12\t1700000200\t1\tartist\tsong 3"]
    log = write(tmp_path, "log.tsv", "u\ti\tt\tw\tartist\ttrack\n" + "\n".join(lines) + "\n")
    source = spec(log)
    source["interactions"][0]["multiline"] = "keep"
    with pytest.raises(DataError, match="bad_lines: skip") as err:
        load(source)
    assert "multiline: keep" not in str(err.value)
    source["interactions"][0]["bad_lines"] = "skip"
    raw = load_files(FilesSource.model_validate(source))
    assert raw.interactions[0][1]["user_id"].tolist() == [3]
    assert any("1 record(s)" in n and "2 line(s) in all" in n for n in raw.notes), raw.notes


@pytest.mark.parametrize("sep", ["\t", "::"])
@pytest.mark.parametrize("marker", ["#", "%"])
def test_comment_lines_are_refused_until_named_then_left_out(tmp_path: Path, sep: str,
                                                            marker: str) -> None:
    """SNAP's edge lists open with '#' lines, KONECT's with '%'. Read with their names
    in ``header``, a comment line of the file's width became a user and an item (the
    id columns text) with no error, and ``bad_lines: skip`` advised for the others
    kept it. Now the first such line is refused, naming ``comment``; with it set the
    lines are left out, counted, and the ids stay numbers."""
    log = write(tmp_path, "edges.txt", f"{marker} Directed graph\n{marker} FromNodeId{sep}"
                f"ToNodeId\n1{sep}10\n2{sep}11\n1{sep}11\n")
    source = spec(log, columns={"user_id": "from", "item_id": "to"})
    source["interactions"][0].update(delimiter=sep, header=["from", "to"], bad_lines="skip")
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, log, None, None, "line 1 starts with", f"comment: '{marker}'")
    source["interactions"][0]["comment"] = marker
    raw = load_files(FilesSource.model_validate(source))
    interactions = raw.interactions[0][1]
    assert interactions["user_id"].tolist() == [1, 2, 1]
    assert interactions["item_id"].tolist() == [10, 11, 11]
    assert any("2 comment line(s)" in n for n in raw.notes), raw.notes
    source["interactions"][0]["comment"] = None  # said outright: the line is the file's own
    interactions = load_files(FilesSource.model_validate(source)).interactions[0][1]
    assert interactions["user_id"].tolist()[:2] == [f"{marker} FromNodeId", "1"]


def test_comment_lines_in_quoted_values_bad_bytes_and_a_partition_of_comments(
        tmp_path: Path) -> None:
    """A description's line starting with the marker is part of its value, not a
    comment (dropping it took the closing quote, and the value the rest of the file); an
    invalid byte is named by the file's column and the row numbered without comments, and
    one inside a comment line is no error; a partition of nothing but comments is empty."""
    items = write(tmp_path, "items.csv", '# catalogue\ni,title,about\n10,Alpha,"A kettle.\n'
                  '# Fast, quiet"\n11,Beta,x\n')
    source = spec(write(tmp_path, "log.csv", GOOD_INTERACTIONS), items)
    source["items"].update(comment="#", multiline="keep")
    source["items"]["columns"] = {**ITEM_COLUMNS, "text": "about"}
    raw = load_files(FilesSource.model_validate(source))
    assert raw.items[1]["text"].tolist() == ["A kettle.\n# Fast, quiet", "x"]
    bad = write(tmp_path, "bad.csv", b"# c1\n# c\xff2\nu,i,t,w\n1,10,1700000000,1\n"
                b"2,\xff1,1700000100,1\n")
    source = spec(bad)
    source["interactions"][0]["comment"] = "#"
    with pytest.raises(DataError) as err:
        load(source)
    assert_names(err, bad, "item_id", "2", "not valid UTF-8")
    folder = tmp_path / "parts"
    folder.mkdir()
    write(folder, "part-1.csv", "# written 2024-01-05\n" + GOOD_INTERACTIONS.decode())
    write(folder, "part-2.csv", "# written 2024-01-06, no events\n")
    source = spec(folder / "part-*.csv")
    source["interactions"][0]["comment"] = "#"
    interactions, *_, notes = load(source)
    assert len(interactions) == 3 and any("no rows" in n for n in notes), notes


def test_comment_lines_follow_quotes_as_pyarrow_reads_them(tmp_path: Path) -> None:
    """Counting every quote in a line took ``12" single`` (a quote mid-field, plain text
    to pyarrow) for an open value, so a comment line of the file's width after it was
    kept as a row of made-up ids; ``"C:\\\\"`` (an escaped backslash, then the closing
    quote) did the same; a file whose lines end in a lone CR was one line, and dropped
    whole as a comment."""
    log = write(tmp_path, "log.tsv", 'u\ti\tt\n1\t2\t12" single\n# made\tby\tdump.py\n'
                "3\t4\tx\n")
    source = spec(log, columns={"user_id": "u", "item_id": "i", "title": "t"})
    source["interactions"][0]["comment"] = "#"
    frame = load_files(FilesSource.model_validate(source)).interactions[0][1]
    assert frame["user_id"].tolist() == [1, 3] and frame["title"].tolist() == ['12" single', "x"]
    log = write(tmp_path, "escaped.csv", 'u,i,t\n1,2,"C:\\\\"\n# note\n3,4,x\n')
    source = spec(log, columns={"user_id": "u", "item_id": "i", "title": "t"})
    source["interactions"][0].update(comment="#", escape="\\")
    frame = load_files(FilesSource.model_validate(source)).interactions[0][1]
    assert frame["title"].tolist() == ["C:\\", "x"]
    log = write(tmp_path, "eol.csv", 'u,i,t\n1,2,C:\\dir\\\n# note\n3,4,x\n')
    source = spec(log, columns={"user_id": "u", "item_id": "i", "title": "t"})
    source["interactions"][0].update(comment="#", escape="\\")  # the line feed escaped
    frame = load_files(FilesSource.model_validate(source)).interactions[0][1]
    assert frame["title"].tolist() == ["C:dir\n# note", "x"]
    log = write(tmp_path, "colons.dat", 'u::i::t\n1::2::a\\:::"b\n# note\n3::4::x\n')
    source = spec(log, columns={"user_id": "u", "item_id": "i", "title": "t"})
    source["interactions"][0].update(comment="#", escape="\\", delimiter="::")
    frame = load_files(FilesSource.model_validate(source)).interactions[0][1]
    assert frame["title"].tolist() == ['a:::"b', "x"]  # the escape took the whole '::'
    log = write(tmp_path, "cr.csv", "# note\ru,i\r1,2\r3,4\r")
    source = spec(log, columns={"user_id": "u", "item_id": "i"})
    source["interactions"][0]["comment"] = "#"
    frame = load_files(FilesSource.model_validate(source)).interactions[0][1]
    assert frame["user_id"].tolist() == [1, 3]


def test_a_quote_escaped_with_a_backslash_is_noted_then_read(tmp_path: Path) -> None:
    """Book-Crossing's book table writes a quote inside a quoted title as \\": read
    without an escape character the value was cut at that quote and the rest run on
    (``A \\Quoted\\" title"``), silently. Now noted, naming column, row and setting;
    ``escape`` reads it whole."""
    log = write(tmp_path, "log.csv", GOOD_INTERACTIONS)
    items = write(tmp_path, "books.csv", 'i;title\n"10";"Plain"\n"11";"A \\"Quoted\\" title"\n'
                  '"12";"The 12\\" single"\n"13";"3.5"" disk, C:\\ drive"\n')
    source = spec(log, items)
    source["items"]["delimiter"] = ";"
    raw = load_files(FilesSource.model_validate(source))
    assert raw.items[1]["title"].tolist()[1] != 'A "Quoted" title'
    noted = [n for n in raw.notes if "backslash before a quote" in n]
    assert len(noted) == 1 and "'title': 2 value(s)" in noted[0], noted
    assert "data row(s) 2, 3:" in noted[0], noted  # not 4: its backslash has no quote after
    assert 'escape: "\\\\"' in noted[0], noted
    source["items"]["escape"] = "\\"
    raw = load_files(FilesSource.model_validate(source))
    assert raw.items[1]["title"].tolist()[:3] == ["Plain", 'A "Quoted" title', 'The 12" single']
    assert not [n for n in raw.notes if "backslash" in n], raw.notes


def test_text_settings_on_parquet_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": [1], "i": [10], "t": [1700000000], "w": [1.0]}), path)
    for key, value in (("quote", None), ("multiline", "keep"), ("bad_lines", "skip"),
                       ("escape", "\\"), ("comment", "#")):
        source = spec(path)
        source["interactions"][0][key] = value
        with pytest.raises(DataError, match=f"{key} applies to text files only"):
            load(source)
