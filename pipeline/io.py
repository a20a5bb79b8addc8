"""Artifact I/O: atomic stage folders, run manifests, hashes and locks.

A stage writes into a hidden sibling folder (``.name.tmp-<pid>``), writes its manifest
last, then renames the folder into place. A process killed mid-write leaves only the
hidden folder, which readers (Arrow, pandas, Dask) skip and ``make`` never sees as done.
A ``flock`` per output folder keeps two runs from writing the same stage at once; the OS
drops it when the holder dies, so there is never a stale lock to clear, and the next
writer (holding the lock) removes what a killed one left half-written.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
_VERSIONED = ("numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "lightgbm", "torch",
              "faiss-cpu", "pydantic")


class StageLockedError(RuntimeError):
    """Another process is writing the same stage output."""


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the code that runs (the repository this module lives in)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False, cwd=Path(__file__).resolve().parent)
    except OSError:
        return None
    return out.stdout.strip() or None


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StageLockedError(f"{target} is being written by another process") from None
        yield


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temp folder that replaces ``target`` only if the block completes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        for stale in target.parent.glob(f".{target.name}.*-*"):  # left by a killed writer:
            shutil.rmtree(stale, ignore_errors=True)              # we hold the lock, so no
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"  # live one is writing
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(folder: Path, **fields: Any) -> dict[str, Any]:
    """Record outputs (rows, bytes, hash) with the caller's fields; written last."""
    outputs = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            entry: dict[str, Any] = {"bytes": path.stat().st_size, "hash": file_hash(path)}
            if path.suffix == ".parquet":
                entry["rows"] = pq.ParquetFile(path).metadata.num_rows
            outputs[str(path.relative_to(folder))] = entry
    manifest = {**fields, "outputs": outputs, "versions": library_versions(),
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: all but floats. A float column of scores
    rarely repeats, and trying a dictionary first cost 40% of the write time of the
    candidate and feature tables here (and they came out smaller or at most 24% larger)."""
    return [f.name for f in schema if not pa.types.is_floating(f.type)]


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame as Parquet without the pandas index."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path, use_dictionary=dictionary_columns(table.schema))


PART = "part-{:05d}.parquet"


def table_parts(path: Path) -> list[Path]:
    """The files of a table: itself, or the parts of a partitioned one in shard order."""
    return sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]


def read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet file or partitioned table through Arrow (pandas' reader chokes on
    list columns, pandas #57411); parts are read in shard order."""
    tables = [pq.read_table(part, columns=columns) for part in table_parts(path)]
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def table_rows(path: Path) -> int:
    return sum(pq.ParquetFile(part).metadata.num_rows for part in table_parts(path))


def write_part(folder: Path, index: int, frames: pd.DataFrame | Iterable[pd.DataFrame]
               ) -> int:
    """Write shard ``index`` of the partitioned table ``folder`` from one frame or a stream
    of frames with one schema (``write_frames``). Returns the rows written."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_frames(folder / PART.format(index), frames)


def write_frames(path: Path, frames: pd.DataFrame | Iterable[pd.DataFrame]) -> int:
    """Write one Parquet file from one frame or a stream of frames with one schema (so the
    table is never held whole): under a temporary name, then renamed, so a task killed or
    retried mid-write (on any machine that shares the folder) leaves the whole file or
    none of it. Returns the rows written."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    writer, rows = None, 0
    try:
        for df in [frames] if isinstance(frames, pd.DataFrame) else frames:
            table = pa.Table.from_pandas(df, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema,
                                          use_dictionary=dictionary_columns(table.schema))
            writer.write_table(table.cast(writer.schema))
            rows += len(df)
        if writer is None:
            raise ValueError(f"no frame to write as {path}")
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return rows


def finish_parts(folder: Path, empty_like: pd.DataFrame) -> None:
    """Close a partitioned table: remove what killed writers left and, where no shard
    wrote a part, write one empty part of ``empty_like``'s columns, so a reader always
    finds the table and its schema."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".part-*"):
        stale.unlink(missing_ok=True)
    if not table_parts(folder):
        write_part(folder, 0, empty_like.iloc[:0])


def table_columns(path: Path) -> list[str]:
    """The column names of a table (its first part's: the parts share one schema)."""
    return pq.ParquetFile(table_parts(path)[0]).schema_arrow.names


def iter_requests(path: Path, key: str, rows: int, columns: list[str] | None = None
                  ) -> Iterator[pd.DataFrame]:
    """Read a table (only ``columns``, when given) in pieces of about ``rows`` rows
    (however its parts and row groups fall) without splitting a run of equal ``key``
    values, so a request's candidates always arrive together."""
    held: list[pd.DataFrame] = []
    count = 0
    for part in table_parts(path):
        for batch in pq.ParquetFile(part).iter_batches(batch_size=rows, columns=columns):
            held.append(batch.to_pandas())
            count += batch.num_rows
            if count < rows:
                continue
            df = pd.concat(held, ignore_index=True)
            keys = df[key].to_numpy()
            tail = len(keys) - 1
            while tail > 0 and keys[tail - 1] == keys[-1]:
                tail -= 1
            if tail:
                yield df.iloc[:tail].reset_index(drop=True)
            held = [df.iloc[tail:].reset_index(drop=True)]
            count = len(held[0])
    if count:
        yield pd.concat(held, ignore_index=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hand a file on unchanged: a hard link where the filesystem allows, else a copy.
    An existing ``dst`` is an error, never overwritten: it may be a hard link into a
    live publication, which must not change under its readers."""
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(src, dst)


def link_tree(src: Path, dst: Path) -> None:
    """Hand a file or a folder of files on unchanged (see ``link_or_copy``)."""
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(src, dst)
        return
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)


class RunLockedError(RuntimeError):
    """Another scheduled run of the same dataset is in progress."""


@contextmanager
def run_lock(root: Path, holder: dict[str, Any]) -> Iterator[None]:
    """One scheduled run per dataset: an exclusive ``flock`` on ``root/.run.lock``, whose
    content names the holder (``holder`` plus its pid) for whoever finds it taken."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".run.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise RunLockedError(f"another run holds {root / '.run.lock'}: "
                                 f"{fh.read().strip() or 'holder unknown'}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), **holder}) + "\n")
        fh.flush()
        yield
