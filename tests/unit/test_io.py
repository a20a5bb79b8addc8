"""Atomic stage folders: a crash leaves nothing visible and keeps the previous output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io import (
    MANIFEST,
    ChunkedParquetWriter,
    StageLockedError,
    atomic_folder,
    read_table,
    write_manifest,
)


def test_success_renames_into_place_with_manifest(tmp_path: Path) -> None:
    target = tmp_path / "stage"
    with atomic_folder(target) as out:
        pd.DataFrame({"a": [1, 2]}).to_parquet(out / "t.parquet")
        write_manifest(out, stage="x")
        assert not target.exists()
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["outputs"]["t.parquet"]["rows"] == 2
    assert "pandas" in manifest["versions"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []


def test_crash_keeps_previous_output_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "stage"
    with atomic_folder(target) as out:
        (out / "v.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_folder(target) as out:
        (out / "v.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target / "v.txt").read_text() == "good"
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_second_writer_is_refused_while_first_holds_the_lock(tmp_path: Path) -> None:
    target = tmp_path / "stage"
    with atomic_folder(target), pytest.raises(StageLockedError), atomic_folder(target):
        pass


def test_chunked_writer_appends_and_writes_empty_shape(tmp_path: Path) -> None:
    writer = ChunkedParquetWriter(tmp_path / "c.parquet")
    for lo in range(0, 6, 2):
        writer.write(pd.DataFrame({"u": [lo, lo + 1], "s": [0.5, 1.5]}))
    writer.close(pd.DataFrame({"u": [0]}))
    assert read_table(tmp_path / "c.parquet")["u"].tolist() == [0, 1, 2, 3, 4, 5]
    empty = ChunkedParquetWriter(tmp_path / "e.parquet")
    empty.close(pd.DataFrame({"u": pd.Series([], dtype="int64")}))
    assert list(read_table(tmp_path / "e.parquet").columns) == ["u"]
