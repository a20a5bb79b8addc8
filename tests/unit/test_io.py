"""Atomic stage folders: a crash leaves nothing visible and keeps the previous output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io import (
    MANIFEST,
    PART,
    StageLockedError,
    atomic_folder,
    finish_parts,
    iter_requests,
    read_table,
    table_rows,
    write_manifest,
    write_part,
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


def test_parts_are_read_in_shard_order_and_an_empty_table_keeps_its_shape(
        tmp_path: Path) -> None:
    table = tmp_path / "c.parquet"
    for index in (2, 0, 1):  # written out of order, as tasks finish
        frames = [pd.DataFrame({"u": [lo, lo + 1], "s": [0.5, 1.5]}) for lo in (4 * index,
                                                                                 4 * index + 2)]
        assert write_part(table, index, iter(frames)) == 4
    (table / ".part-00003.parquet.tmp-dead").write_bytes(b"half")  # a killed task's
    finish_parts(table, pd.DataFrame({"u": [0]}))
    assert read_table(table)["u"].tolist() == list(range(12))
    assert table_rows(table) == 12
    assert sorted(p.name for p in table.iterdir()) == [PART.format(i) for i in range(3)]
    requests = write_part(tmp_path / "r", 0, pd.DataFrame({"q": [1, 1, 2, 2, 2]})) + \
        write_part(tmp_path / "r", 1, pd.DataFrame({"q": [2, 3, 3, 4]}))
    pieces = list(iter_requests(tmp_path / "r", "q", 3))
    assert sum(map(len, pieces)) == requests
    assert [sorted(set(p["q"])) for p in pieces] == [[1], [2], [3], [4]]
    empty = tmp_path / "e.parquet"
    finish_parts(empty, pd.DataFrame({"u": pd.Series([], dtype="int64")}))
    assert list(read_table(empty).columns) == ["u"]


def test_a_failed_part_leaves_nothing(tmp_path: Path) -> None:
    def frames():
        yield pd.DataFrame({"u": [1]})
        raise RuntimeError("task killed")

    with pytest.raises(RuntimeError):
        write_part(tmp_path / "t", 0, frames())
    assert list((tmp_path / "t").iterdir()) == []
