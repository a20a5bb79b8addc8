"""Sources turn a config into raw tables; ``ingest`` validates them against the contract.

Each source returns its tables still tagged with where they came from, so validation
errors can name the file and the row within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipeline.config import Config, FilesSource, MovieLens100kSource, SyntheticSource


@dataclass
class RawTables:
    """Tables as a source produced them, each with its origin (file path or generator).

    A mapped file's origin is a ``schema.Origin``: still its path, and also its own names
    for the contract's columns, which validation errors then use.
    """

    interactions: list[tuple[str, pd.DataFrame]]
    items: tuple[str, pd.DataFrame] | None = None
    users: tuple[str, pd.DataFrame] | None = None
    notes: tuple[str, ...] = ()


def load_source(cfg: Config) -> RawTables:
    """Dispatch on ``source.kind``; adding a source means adding one branch here."""
    src = cfg.source
    if isinstance(src, SyntheticSource):
        from pipeline.sources.synthetic import generate

        return generate(src, cfg.seed)
    if isinstance(src, MovieLens100kSource):
        from pipeline.sources.movielens import load_movielens_100k

        return load_movielens_100k(src.path)
    if isinstance(src, FilesSource):
        from pipeline.sources.files import load_files

        return load_files(src)
    raise TypeError(f"unknown source {src!r}")  # pragma: no cover - pydantic rejects it first
