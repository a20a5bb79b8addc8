"""A team's own logs: Parquet, delimited text or JSON lines tables (text compressed
or not) mapped onto the contract by config alone.

An interactions path may be a glob (``logs/dt=*/part-*.parquet``): a log that grows by
daily partitions, several files a day, is read whole, each file named in its errors.
"""

from __future__ import annotations

import codecs
import glob
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline import schema as S
from pipeline.config import DataFile, FilesSource, InteractionFile, TableFile
from pipeline.schema import DataError
from pipeline.sources import RawTables

# Contract columns holding text: read from CSV as strings, so "007" or zip "02134" keep
# their leading zeros instead of being inferred as numbers.
_TEXT_TARGETS = (S.TITLE, S.TEXT, S.CATEGORY, S.TAGS, S.REGION, S.QUERY, S.EVENT)
_ID_TARGETS = (S.USER, S.ITEM)
_INTEGER = r"^(0|-?[1-9][0-9]*)(\.0*)?$"  # as a program writes one (1 or 1.0), no padding
_DECIMAL = r"^(0|-?[1-9][0-9]*)(\.[0-9]+)?$"  # with 1.5 among them: a fractional id
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")  # text files decompressed by pyarrow
_PARQUET = (".parquet", ".pq")
_TEXT = (".csv", ".tsv", ".txt", ".dat")
_JSON = (".jsonl", ".ndjson", ".json")
_SPARE = "\x1f"  # the ASCII unit separator, for a delimiter of several characters
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_WHOLE = re.compile(_INTEGER)
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_NO_ROWS = np.empty(0, np.int64)


class Read(NamedTuple):
    """A file as read: the table, the data rows (from 0) left out (``bad_lines: skip``),
    and per text column the positions of values over several lines, with whether any of
    them holds what looks like whole rows (an unclosed quote's doing)."""

    frame: pd.DataFrame
    skipped: np.ndarray = _NO_ROWS
    spanning: Mapping[str, tuple[np.ndarray, bool]] = MappingProxyType({})
    skipped_lines: int = 0  # the lines the skipped records took (more, where one spans)
    notes: tuple[str, ...] = ()
    escaped: Mapping[str, np.ndarray] = MappingProxyType({})  # mapped values with \"


def file_format(path: Path, delimiter: str | None = None) -> tuple[str, str]:
    """``path``'s format by its name, "parquet", "text" or "json", and its own suffix
    under a compression suffix (``logs.csv.gz``: text, ``.csv``); any other name is text
    where a ``delimiter`` is given (MovieLens 100K's ``u.data``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _COMPRESSED
    inner = (suffixes[-2] if len(suffixes) > 1 else "") if compressed else (
        suffixes[-1] if suffixes else "")
    if inner in _PARQUET and not compressed:  # Parquet compresses inside; never as .gz
        return "parquet", inner
    if inner in _TEXT or (delimiter is not None and inner not in (*_PARQUET, *_JSON)):
        return "text", inner
    if inner in _JSON:
        return "json", inner
    raise DataError(f"{path}: unsupported file type {''.join(Path(path).suffixes)!r} (use "
                    f"{', '.join((*_PARQUET, *_TEXT, *_JSON))}; the text ones also as "
                    f"{', '.join(_COMPRESSED)}; any other name with a delimiter given)")


def read_any(path: Path, spec: DataFile) -> Read:
    """Read ``path``, a Parquet, delimited text or JSON lines file (``file_format``), as
    ``spec`` says; invalid UTF-8 is reported by column and row.

    ``spec.columns`` (contract column -> the file's) says which of a text file's columns
    are read as strings rather than inferred (text, and the times a ``ts_format`` reads)
    and which as ids (``_ids_as_read``, as JSON string ids are too). ``delimiter``,
    ``header``, ``encoding``, ``quote``, ``escape``, ``comment``, ``multiline`` and
    ``bad_lines`` apply to text files only.
    """
    columns, delimiter, header, encoding = (dict(spec.columns), spec.delimiter, spec.header,
                                            spec.encoding)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind, inner = file_format(path, delimiter)
    given = [name for name, value in (("delimiter", delimiter), ("header", header),
                                      ("escape", spec.escape), ("comment", spec.comment))
             if value is not None]
    given += [name for name, value, default in (("quote", spec.quote, '"'),
                                                ("multiline", spec.multiline, "error"),
                                                ("bad_lines", spec.bad_lines, "error"))
              if value != default]
    if codecs.lookup(encoding).name != "utf-8":
        given.append("encoding")
    if kind != "text" and given:
        why = {"parquet": "a Parquet file names and types its own columns",
               "json": "JSON lines are UTF-8 and name every field"}[kind]
        raise DataError(f"{path}: {', '.join(given)} applies to text files only: {why}")
    if kind != "parquet" and _no_bytes(path):  # a partition written while nothing happened
        return Read(_no_rows(columns))
    if kind == "parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{path}: cannot read Parquet: {err}") from None
        _check_utf8(path, table)
        return Read(_frame(table, _sources(columns, _ID_TARGETS)))
    if kind == "json":
        ids = _sources(columns, _ID_TARGETS)
        try:
            table = pajson.read_json(str(path))
        except pa.ArrowInvalid as err:
            if "changed from" not in str(err):  # not a field of two kinds
                raise DataError(f"{path}: cannot read JSON lines (one object a line): {err}"
                                ) from None
            table = _mixed_json_lines(path, columns)
        if any(pa.types.is_floating(table.schema.field(name).type)
               and (pc.max(pc.abs(table[name])).as_py() or 0) > 2**53 for name in ids
               if name in table.column_names):
            # pyarrow reads an integer past int64 as a double, digits lost; Python's
            # parser keeps it whole (and fractional ids are then reported as such)
            table = _mixed_json_lines(path, columns)
        _check_utf8(path, table)
        return Read(_frame(_typed_ids(table, ids), ids))
    text = (S.TS, S.CREATED_TS) if getattr(spec, "ts_format", None) else ()
    return _read_text(path, inner, spec, delimiter or ("\t" if inner == ".tsv" else ","),
                      text)


def _no_rows(columns: Mapping[str, str]) -> pd.DataFrame:
    """An empty table of the mapped columns: what a partition with no events reads as."""
    return pd.DataFrame({name: pd.Series(dtype=object) for name in dict.fromkeys(columns.values())})


def _mixed_json_lines(path: Path, columns: dict[str, str]) -> pa.Table:
    """The mapped fields of JSON lines that pyarrow refuses because a field holds numbers
    in some rows and text in others (ids written by a program that did not care): each
    line parsed by Python, slower, and a field of both kinds kept as text."""
    names = list(dict.fromkeys(columns.values()))
    values: dict[str, list] = {name: [] for name in names}
    seen: set[str] = set()  # a field no row has stays missing, for ``_mapped`` to name
    for number, line in enumerate(_text_bytes(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:  # bad JSON or bad UTF-8
            raise DataError(f"{path}: data row {number} is not a JSON object (JSON lines: "
                            f"one object a line): {err}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: data row {number} is not a JSON object (JSON lines: "
                            "one object a line)")
        for name in names:
            values[name].append(row.get(name))
        seen.update(row.keys() & values.keys())
    arrays = {}
    for name, column in ((n, c) for n, c in values.items() if n in seen):
        kinds = {type(v) for v in column if v is not None}
        if str in kinds and kinds & {int, float} or kinds == {int} and not all(
                v is None or _INT64_MIN <= v <= _INT64_MAX for v in column):
            column = [None if v is None else str(v) for v in column]  # past 64 bits too
        try:
            arrays[name] = pa.array(column)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            raise DataError(f"{path}: column '{name}' holds values of kinds that cannot "
                            f"share a column: {sorted(k.__name__ for k in kinds)}") from None
    return pa.table(arrays)


def _read_text(path: Path, inner: str, spec: DataFile, sep: str, text: tuple[str, ...]
               ) -> Read:
    """A delimited text file (``read_any``). pyarrow splits on one character, so a
    delimiter of several is read as a spare one (``_spared``), put back in the
    values afterwards. Records of the wrong width are left out under ``bad_lines:
    skip``, read on one thread so that pyarrow numbers them; one that spans lines is an
    unclosed quote's doing, reported as such (``_unclosed``). Comment lines are taken out
    before pyarrow reads the text (it has no such option: ``_without_comments``), and
    an invalid byte is then located in the text read, its rows numbered without them."""
    columns, header = dict(spec.columns), spec.header
    if spec.quote is not None and spec.quote in sep:
        raise DataError(f"{path}: quote {spec.quote!r} is in the delimiter {sep!r}")
    if "comment" not in spec.model_fields_set:
        _refuse_comment_lines(path, spec.encoding)
    data, encoding, notes = (_without_comments(path, spec, sep) if spec.comment is not None
                             else (None, spec.encoding, ()))
    if data is not None and not data.strip():  # a partition of nothing but comments
        return Read(_no_rows(columns), notes=notes)
    if len(sep) > 1:
        source, encoding = _spared(path, data, sep, spec, encoding), "utf-8"
    else:  # a path: decompressed by suffix
        source = str(path) if data is None else pa.BufferReader(data)
    ids = _sources(columns, _ID_TARGETS)
    as_text = (*_sources(columns, (*_TEXT_TARGETS, *text)), *ids)
    skipped: list[int] = []  # the records left out, numbered from 1 as pyarrow does
    spans: list[int] = []  # those of them over several lines
    lines = 0  # the lines those records took

    def skip(row: pacsv.InvalidRow) -> str:
        nonlocal lines
        skipped.append(row.number)
        lines += len(row.text.splitlines()) or 1
        if "\n" in row.text or "\r" in row.text:
            spans.append(row.number)
        return "skip"

    options = pacsv.ParseOptions(delimiter=_SPARE if len(sep) > 1 else sep,
                                 quote_char=spec.quote or False,
                                 escape_char=spec.escape or False,
                                 invalid_row_handler=skip if spec.bad_lines == "skip" else None)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(as_text, pa.string()))
    try:
        read = pacsv.ReadOptions(column_names=header, encoding=encoding,
                                 use_threads=spec.bad_lines != "skip")
        table = pacsv.read_csv(source, read_options=read, parse_options=options,
                               convert_options=convert)
        if len(sep) > 1:
            table = pa.table([pc.replace_substring(column, _SPARE, sep)
                              if pa.types.is_string(column.type) else column
                              for column in table.columns], names=table.column_names)
        table, renamed = _distinct_names(table, path, columns)
        table = _typed_ids(table, ids)
        frame = _frame(table, ids)  # names decode here: in the try
    except (UnicodeDecodeError, pa.ArrowInvalid) as err:
        raise _unreadable(path, inner, spec, sep, encoding, err, data) from None
    # a record's number counts the header line; a data row's (from 0) does not
    first = 1 if header else 2
    if spans and spec.multiline == "error":
        rows = S.Origin(str(path)).data_rows(np.asarray(spans) - first)
        raise DataError(f"{path}: {len(spans)} record(s) of the wrong width span several "
                        f"lines, first at data row(s) {rows}: {_unclosed(spec, wide=True)}")
    escaped = (_escaped(table, spec.quote, columns) if spec.quote is not None
               and spec.escape is None else {})
    return Read(frame, np.asarray(skipped, np.int64) - first,
                _spanning(table, sep, ids) if spec.quote is not None else {}, lines,
                notes + renamed, escaped)


def _refuse_comment_lines(path: Path, encoding: str) -> None:
    """A first line starting as comment lines do (``#``, ``%``) is refused while
    ``comment`` is unset: read as the header it names no column the user maps, and
    read as data (``header`` given) it is a row of made-up ids, an id column of numbers
    turned to text, and no error at all where it has the file's width."""
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(4096)
    first = head.split(b"\n", 1)[0].decode(encoding, errors="replace").lstrip("\ufeff")
    marker = first[:1]
    if marker in ("#", "%"):
        raise DataError(f"{path}: line 1 starts with {marker!r}, as a comment line does "
                        f"({first[:60]!r}): set comment: {marker!r} to leave lines starting "
                        "with it out (with header: [...] where that line named the "
                        "columns), or comment: null to read it as the file's own line")


def _escaped(table: pa.Table, quote: str, columns: Mapping[str, str]
             ) -> dict[str, np.ndarray]:
    """Per mapped text column, the positions of values holding a backslash with a quote
    after it: what a quote escaped as ``\\"`` leaves when ``escape`` is unset. The quote
    ends the value there and the rest is read on (``"The 12\\" single"`` reads as
    ``The 12\\ single"``), so the value is off by a character or two, and no error
    says so."""
    out = {}
    for name in dict.fromkeys(columns.values()):
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            found = pc.fill_null(pc.match_substring_regex(table[name],
                                                          r"\\.*" + re.escape(quote)), False)
            positions = np.flatnonzero(found.to_numpy(zero_copy_only=False))
            if len(positions):
                out[name] = positions
    return out


def _distinct_names(table: pa.Table, path: Path, columns: Mapping[str, str]
                    ) -> tuple[pa.Table, tuple[str, ...]]:
    """The table with a column name the header repeats numbered as pandas numbers it
    (``x``, ``x.1``), so each can be mapped; with a note where a mapped name is one
    (an unmapped repeat, such as a trailing delimiter's empty name, says nothing)."""
    names: list[str] = []
    for name in table.column_names:
        new, n = name, 0
        while new in names:
            n += 1
            new = f"{name}.{n}"
        names.append(new)
    if names == table.column_names:
        return table, ()
    pairs = [(old, new) for old, new in zip(table.column_names, names, strict=True)
             if old != new]
    mapped = set(columns.values())
    if not any(old in mapped or new in mapped for old, new in pairs):
        return table.rename_columns(names), ()
    renamed = ", ".join(repr(new) for _, new in pairs)
    return table.rename_columns(names), (f"{path}: the header names some columns more than "
                                         f"once; the later ones are read as {renamed}",)


_BYTE_SAFE = ("utf-8", "latin-1", "iso8859-1", "cp1252", "ascii")  # ASCII bytes are ASCII
_LINE_END = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")  # after \n, \r\n or a lone \r


def _without_comments(path: Path, spec: DataFile, sep: str
                      ) -> tuple[bytes, str, tuple[str, ...]]:
    """The file's bytes without the lines starting with ``spec.comment`` outside a
    quoted value (a description's line may start so: ``_state_after``), their encoding,
    and a note counting them. Lines end at \\n, \\r\\n or a lone \\r, as pyarrow's
    do. Worked on the bytes in UTF-8, latin-1 and cp1252 (the encodings public logs come
    in, where a byte that reads as ASCII is that character); other encodings are
    decoded first and handed on as UTF-8."""
    raw = _text_bytes(path)
    marker, quote, escape = spec.comment, spec.quote or "", spec.escape or ""
    if codecs.lookup(spec.encoding).name in _BYTE_SAFE:
        data: bytes | str = raw.removeprefix(codecs.BOM_UTF8)
        encoding = spec.encoding
        try:
            mark, q, esc, delimiter = (c.encode(encoding) for c in (marker, quote, escape, sep))
        except UnicodeEncodeError:
            raise DataError(f"{path}: comment {marker!r}, quote, escape or delimiter has a "
                            f"character that {encoding} cannot write") from None
    else:
        try:
            data = raw.decode(spec.encoding).removeprefix("\ufeff")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: text is not valid {spec.encoding}: {err}") from None
        encoding = "utf-8"
        mark, q, esc, delimiter = marker, quote, escape, sep
    # bytes split at \n, \r\n and \r alone, as pyarrow does (12x the regex's speed on
    # 3M lines); text's splitlines would split at \x1c, \x85 and others too
    lines = (data.splitlines(keepends=True) if isinstance(data, bytes) else
             [line for line in _LINE_END.split(data) if line])
    if (not q or q not in data) and (not esc or esc not in data):  # 7x the loop's speed
        kept = [line for line in lines if not line.startswith(mark)]
    else:
        kept, state = [], _RECORD_START
        for line in lines:
            if state != _RECORD_START or not line.startswith(mark):
                kept.append(line)
                state = _state_after(line, state, q, esc, delimiter)
    joined = data[:0].join(kept)
    text = joined if isinstance(joined, bytes) else joined.encode()
    notes = (f"{path}: {len(lines) - len(kept)} comment line(s) (starting with {marker!r}) "
             "left out; data rows are numbered without them",) if len(kept) < len(lines) else ()
    return text, encoding, notes


_RECORD_START, _QUOTED, _MID_FIELD = 0, 1, 2  # where a line leaves the record it is in


def _state_after(line: bytes | str, state: int, quote: bytes | str, escape: bytes | str,
                 delimiter: bytes | str) -> int:
    """Where the record stands at the end of ``line`` (which keeps its line ending),
    read as pyarrow reads it: a quote opens a value only at the start of a field, a
    doubled one inside stays in it, the escape character takes the next one as it is
    (a whole delimiter of several characters, as ``_spared`` leaves it). An open quote
    (``_QUOTED``) or an escaped line feed or lone CR (``_MID_FIELD``) carries the record
    on into the next line, which is then no comment whatever it starts with."""
    if (not quote or quote not in line) and (not escape or escape not in line):
        return _RECORD_START if state == _MID_FIELD else state  # a line ending ends it
    inside, at_start, i, n = state == _QUOTED, state == _RECORD_START, 0, len(line)
    while i < n:
        if escape and line.startswith(escape, i):
            j = i + len(escape)
            if line.startswith(delimiter, j):
                i = j + len(delimiter)
            elif not inside and (line[j:] in ("\n", "\r", b"\n", b"\r")):
                return _MID_FIELD  # the line ending escaped: the field goes on
            else:
                i = j + 1
            at_start = False
        elif inside:
            if line.startswith(quote, i):
                if line.startswith(quote, i + 1):
                    i += 2
                    continue
                inside = False
            i += 1
        elif at_start and quote and line.startswith(quote, i):
            inside, at_start, i = True, False, i + 1
        elif line.startswith(delimiter, i):
            at_start, i = True, i + len(delimiter)
        else:
            at_start, i = False, i + 1
    return _QUOTED if inside else _RECORD_START


def _spared(path: Path, data: bytes | None, sep: str, spec: DataFile, encoding: str
            ) -> pa.BufferReader:
    """The text (``data``, else the file's) with each ``sep`` of several characters as
    the spare one (0x1f), re-encoded as UTF-8: the whole file in memory, decoded and
    again encoded."""
    raw = _text_bytes(path) if data is None else data
    try:
        decoded = raw.decode(encoding)
    except UnicodeDecodeError as err:
        if codecs.lookup(encoding).name == "utf-8":
            _raise_utf8_location(path, sep, spec.columns, spec.header, data)
        raise DataError(f"{path}: text is not valid {encoding}: {err}") from None
    if _SPARE in decoded:
        raise DataError(f"{path}: holds the character 0x1f, which stands in for the "
                        f"delimiter {sep!r} while reading; convert the file")
    return pa.BufferReader(decoded.replace(sep, _SPARE).encode())


def _unreadable(path: Path, inner: str, spec: DataFile, sep: str, encoding: str,
                err: Exception, data: bytes | None = None) -> DataError:
    """What a text file pyarrow could not read has wrong: its encoding (by column and
    line, for UTF-8, in ``data`` where that was read instead of the file), a record an
    unclosed quote ran on over, or a line's width."""
    undecodable = isinstance(err, UnicodeDecodeError) or "utf8" in str(err).lower()
    if undecodable and codecs.lookup(encoding).name == "utf-8":
        _raise_utf8_location(path, sep, spec.columns, spec.header, data)
    if undecodable:
        return DataError(f"{path}: text is not valid {encoding}: {err}")
    message = f"{path}: cannot parse {inner[1:].upper() or 'text'}: {err}"
    if "\n" in str(err) or "\r" in str(err):  # the record shown spans lines
        return DataError(f"{message}\n{_unclosed(spec, wide=True)}")
    if "Expected" in str(err) and spec.bad_lines == "error":  # "Expected 4 columns, got 5"
        return DataError(f"{message} (bad_lines: skip leaves such lines out)")
    return DataError(message)


def _unclosed(spec: DataFile, wide: bool = False) -> str:
    """What to do about what an unclosed quote ran on over, given what is set: values
    over lines are kept under ``multiline: keep``; a record of the wrong width over
    lines is left out under that and ``bad_lines: skip`` both."""
    needed = [] if spec.multiline == "keep" else ["multiline: keep"]
    if wide and spec.bad_lines == "error":
        needed.append("bad_lines: skip")
    other = (f"{' with '.join(needed)} to leave such records out" if wide else
             "multiline: keep where values do span lines")
    return (f"a quote ({spec.quote!r}) opened and never closed takes in the lines after it; "
            f"set quote: null where quotes are plain characters in this file, or {other}")


def _spanning(table: pa.Table, sep: str, ids: list[str]
              ) -> dict[str, tuple[np.ndarray, bool]]:
    """Each text column's values over several lines, and whether a line of any reads as
    one of this file's rows, as a row taken in by an unclosed quote does: exactly its
    number of fields, each id field filled (a whole number where the file's ids are)
    and a number in each numeric column, or empty. A description's line with commas in
    it seldom is one."""
    id_fields = {table.column_names.index(name): pa.types.is_integer(table.schema.field(
        name).type) for name in ids if name in table.column_names}
    numeric = [i for i, field in enumerate(table.schema)
               if pa.types.is_integer(field.type) or pa.types.is_floating(field.type)]

    def row_like(line: str) -> bool:
        fields = [field.strip() for field in line.split(sep)]
        return len(fields) == table.num_columns and all(
            fields[i] and (not whole or _WHOLE.fullmatch(fields[i]))
            for i, whole in id_fields.items()) and all(
            not fields[i] or _NUMBER.fullmatch(fields[i]) for i in numeric)

    out = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa.types.is_string(column.type):
            continue
        broken = pc.fill_null(pc.match_substring_regex(column, "[\r\n]"), False)
        positions = np.flatnonzero(broken.to_numpy(zero_copy_only=False))
        if len(positions):
            values = pc.filter(column, broken).to_pylist()
            out[name] = positions, any(row_like(line) for value in values
                                       for line in value.splitlines()[1:])
    return out


def _frame(table: pa.Table, ids: list[str]) -> pd.DataFrame:
    """The table as pandas, an integer id column with a missing id as nullable integers:
    pandas makes it floats otherwise, and 64-bit ids lose their last digits."""
    frame = table.to_pandas()
    for name in ids:
        if (name in table.column_names and table[name].null_count
                and pa.types.is_integer(table.schema.field(name).type)):
            frame[name] = table[name].to_pandas(types_mapper=pd.ArrowDtype)
    return frame


def _no_bytes(path: Path) -> bool:
    """Whether a text or JSON file holds nothing but white space, once decompressed."""
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(4096)
        return not head.removeprefix(b"\xef\xbb\xbf").strip() and not stream.read(1)


def _text_bytes(path: Path) -> bytes:
    """A text file's bytes, decompressed where its suffix says so."""
    with pa.input_stream(str(path), compression="detect") as stream:
        return stream.read()


def _typed_ids(table: pa.Table, ids: list[str]) -> pa.Table:
    """The id columns read as text typed as a program would have written them."""
    for name in ids:
        if name in table.column_names and pa.types.is_string(table.schema.field(name).type):
            table = table.set_column(table.column_names.index(name), name,
                                     _ids_as_read(table[name]))
    return table


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


def _raise_utf8_location(path: Path, delimiter: str, columns: Mapping[str, str],
                         header: list[str] | None = None, data: bytes | None = None) -> None:
    """Name the column of the first invalid byte (and the contract's, where ``columns``
    maps it) and the lines holding any (header = 0; a file without one gives its column
    names in ``header``, and its first line is data row 1), in ``data`` where the text
    read is not the file's (comment lines left out)."""
    text = _text_bytes(path) if data is None else data
    lines = ([b""] if header else []) + text.split(b"\n")
    bad: list[tuple[int, int]] = []  # (line number, offset of the first bad byte)
    for number, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            bad.append((number, err.start))
    if not bad:
        raise DataError(f"{path}: text is not valid UTF-8")
    line_no, offset = bad[0]
    names = header or lines[0].decode("utf-8", "replace").split(delimiter)
    col_idx = lines[line_no][:offset].count(delimiter.encode())
    own = names[col_idx] if col_idx < len(names) else f"#{col_idx}"
    contract = {source: target for target, source in columns.items()}.get(own, own)
    column = f"column '{own}'" + (f" ({contract})" if contract != own else "")
    hint = "; a file in another encoding says so in its encoding setting (latin-1, ...)"
    if line_no == 0:
        raise DataError(f"{path}: {column}: text is not valid UTF-8 in the header line{hint}")
    rows = ", ".join(str(n) for n, _ in bad[:5])
    raise DataError(f"{path}: {column}: text is not valid UTF-8: {len(bad)} row(s), "
                    f"first at data row(s) {rows}{hint}")


def _check_utf8(path: Path, table: pa.Table) -> None:
    """String columns of Parquet and JSON are not UTF-8-checked on read (a bad value
    fails later, on access): validate them here and name the column and rows."""
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
    """The mapped columns under the contract's names; one the file lacks is taken from a
    ``name=value`` folder of its path (``_path_keys``), else an error naming it."""
    keys = _path_keys(path)
    missing = {target: source for target, source in columns.items()
               if source not in df.columns and source not in keys}
    if missing:
        raise DataError(f"{path}: mapped column(s) not in the file: "
                        + ", ".join(f"{s!r} (for {t})" for t, s in missing.items())
                        + f"; file has {list(df.columns)}"
                        + (f", its path {sorted(keys)}" if keys else ""))
    return pd.DataFrame({target: df[source] if source in df.columns else
                         pd.Series([keys[source]] * len(df), index=df.index, dtype=object)
                         for target, source in columns.items()})


def _path_keys(path: Path) -> dict[str, str | None]:
    """The ``name=value`` folders of a partitioned log's path (Hive's and Spark's
    ``logs/dt=2024-01-05/part-0.parquet``), values unescaped: a column the writer moved
    into the path, such as the day of a log whose rows carry no time of their own.
    Hive's folder for a missing value gives a missing one."""
    keys: dict[str, str | None] = {}
    for part in Path(path).parent.parts:
        name, equals, value = part.partition("=")
        if equals and name:
            keys[name] = None if value == "__HIVE_DEFAULT_PARTITION__" else unquote(value)
    return keys


def _split_lists(df: pd.DataFrame, list_columns: dict[str, str]) -> pd.DataFrame:
    """Each ``list_columns`` column's delimited text as lists (a null: none, a number: its
    text); values that are lists already (JSON, Parquet) as they are."""
    for column, delimiter in list_columns.items():
        if column in df.columns:
            df[column] = [list(v) if isinstance(v, list | np.ndarray) else
                          [] if pd.isna(v) else
                          [t for t in str(v).split(delimiter) if t]
                          for v in df[column].astype(object)]
    return df


def _sources(columns: dict[str, str], targets: tuple[str, ...]) -> list[str]:
    """The file's columns mapped onto ``targets``."""
    return [source for target, source in columns.items() if target in targets]


def matching_files(path: Path) -> list[Path]:
    """The files a configured path names: itself, or every match of a glob pattern
    (``logs/dt=*/part-*.parquet``: a log that grows by partitions), in name order."""
    if not any(ch in str(path) for ch in "*?["):
        if path.is_dir():  # a Spark or Hive job's output folder
            raise DataError(f"{path}: is a folder; name its files with a pattern, such as "
                            f"{path / '*.parquet'} or {path / '*/*.parquet'} for partitions")
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return [path]
    found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if not found:
        raise DataError(f"{path}: no file matches this pattern")
    return found


def _interactions(spec: InteractionFile, notes: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """Each file of the spec as its own table, so errors name the partition. A log
    without time gets one timestamp (the Unix epoch) for every event: the file's row
    order, usually by user and item id, is no order of events (``pipeline.ordering``)."""
    tables = []
    for path in matching_files(spec.path):
        origin, df = _read(path, spec, notes)
        if S.TS not in df.columns:
            df[S.TS] = pd.Timestamp(0).as_unit("us")
        if S.EVENT not in df.columns:  # a mapped event column wins over the file's constant
            df[S.EVENT] = spec.event
        if S.WEIGHT not in df.columns:
            df[S.WEIGHT] = 1.0
        tables.append((origin, df))
    return tables


def _table(spec: TableFile, key: str, notes: list[str]) -> tuple[str, pd.DataFrame]:
    """An items or users file (``key``: its id column), each id's first row alone under
    ``duplicate_ids: first``."""
    origin, df = _read(spec.path, spec, notes)
    if spec.duplicate_ids == "first" and key in df.columns:
        later = df[key].duplicated() & ~S.absent_ids(df[key])
        if later.any():
            notes.append(f"{spec.path}: {int(later.sum())} row(s) repeat an earlier row's "
                         f"{key}, first at data row(s) "
                         f"{origin.data_rows(np.flatnonzero(later))}: the first row of each "
                         "id kept (duplicate_ids: first)")
            kept = np.flatnonzero(~later.to_numpy())
            origin, df = origin.keeping(kept), df.iloc[kept].reset_index(drop=True)
    return origin, _split_lists(df, spec.list_columns)


def _read(path: Path, spec: DataFile, notes: list[str]) -> tuple[S.Origin, pd.DataFrame]:
    """``path``'s mapped columns and their origin, which carries what validation reads
    from the spec (the mapping, how times are written where the file has a time column,
    ``TimedFile``) and numbers rows as the file does where lines were left out; with
    notes on those lines and on values over several lines. Those that hold what looks
    like whole rows are an error unless ``multiline: keep``: an unclosed quote takes in
    rows without a parse error."""
    read = read_any(path, spec)
    notes += read.notes
    origin = S.Origin(str(path), spec.columns, getattr(spec, "ts_unit", None),
                      getattr(spec, "ts_format", None))
    if len(read.skipped):
        notes.append(f"{path}: {len(read.skipped)} record(s) with more or fewer fields "
                     f"than the header left out (bad_lines: skip), {read.skipped_lines} "
                     f"line(s) in all, first at data row(s) "
                     f"{S.Origin(str(path)).data_rows(read.skipped)}")
        origin = origin.keeping(np.setdiff1d(np.arange(len(read.frame) + len(read.skipped)),
                                             read.skipped))
    where = [f"column '{name}': {len(positions)} value(s), first at data row(s) "
             f"{origin.data_rows(positions)}{', some reading as whole rows' * rows}"
             for name, (positions, rows) in read.spanning.items()]
    if spec.multiline == "error" and any(rows for _, rows in read.spanning.values()):
        raise DataError("\n  ".join([f"{path}: values over several lines that hold what "
                                      "looks like whole rows:", *where])
                        + f"\n{_unclosed(spec)}")
    notes += [f"{path}: values over several lines, kept: {line}" for line in where]
    notes += [f"{path}: column '{name}': {len(positions)} value(s) hold a backslash before "
              f"a quote, first at data row(s) {origin.data_rows(positions)}: where the file "
              'escapes quotes so, set escape: "\\\\" (such a value is read cut at the '
              "quote, the rest run on)" for name, positions in read.escaped.items()]
    return origin, _mapped(read.frame, spec.columns, path)


def load_files(src: FilesSource) -> RawTables:
    notes: list[str] = []
    interactions = [table for spec in src.interactions for table in _interactions(spec, notes)]
    untimed = [str(spec.path) for spec in src.interactions if S.TS not in spec.columns]
    if untimed and len(untimed) < len(src.interactions):
        notes.append(f"{', '.join(untimed)}: no timestamp mapped, so their events are dated "
                     "1970-01-01, before every timed event; map a time column to each file")
    elif untimed:
        notes.append("no timestamp mapped: the log has no time (one timestamp for every "
                     "event), so the split is random per user and nothing reads event order")
    return RawTables(
        interactions=interactions,
        items=_table(src.items, S.ITEM, notes) if src.items else None,
        users=_table(src.users, S.USER, notes) if src.users else None,
        notes=tuple(notes),
    )
