"""GroupLens MovieLens 100K, read from a local directory (its licence forbids shipping it)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import schema as S
from pipeline.schema import DataError
from pipeline.sources import RawTables

_ITEM_FIXED = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
FILES = ("u.data", "u.item", "u.user", "u.genre")


def source_files(path: Path) -> list[Path]:
    """The files the reader reads, each checked to be there: ingest hashes them first."""
    files = [path / name for name in FILES]
    if missing := [f.name for f in files if not f.is_file()]:
        raise DataError(f"{path}: MovieLens 100K not found ({', '.join(missing)} missing); "
                        "set source.path to the folder holding u.data")
    return files


def load_movielens_100k(path: Path) -> RawTables:
    """Ratings become interactions (event 'rating', weight = stars); genres become tags.

    The title plus genres is the item text, the first listed genre its category, and the
    first character of the zip code the user's region.
    """
    data, item_file, user_file, genre_file = source_files(path)
    ratings = pd.read_csv(data, sep="\t", names=[S.USER, S.ITEM, S.WEIGHT, S.TS])
    ratings[S.EVENT] = "rating"

    genres = pd.read_csv(genre_file, sep="|", names=["genre", "idx"],
                         encoding="latin-1").dropna()["genre"].tolist()
    items = pd.read_csv(item_file, sep="|", names=_ITEM_FIXED + genres,
                        encoding="latin-1")
    flags = items[genres].to_numpy(bool)
    tag_lists = [[g for g, f in zip(genres, row, strict=True) if f] for row in flags]
    items[S.TAGS] = tag_lists
    items[S.CATEGORY] = [t[0] if t else "unknown" for t in tag_lists]
    items[S.TEXT] = items["title"] + " " + [" ".join(t) for t in tag_lists]
    items[S.CREATED_TS] = pd.to_datetime(items["release_date"], format="%d-%b-%Y",
                                         errors="coerce")
    items = items[[S.ITEM, S.TITLE, S.TEXT, S.CATEGORY, S.TAGS, S.CREATED_TS]]

    users = pd.read_csv(user_file, sep="|",
                        names=[S.USER, "age", "gender", "occupation", "zip"],
                        dtype={"zip": str})  # keeps leading zeros
    users[S.REGION] = users["zip"].astype(str).str[0]
    return RawTables(
        interactions=[(str(data), ratings)],
        items=(str(path / "u.item"), items),
        users=(str(path / "u.user"), users),
    )
