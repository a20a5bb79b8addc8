"""Sources: MovieLens "latest" CSVs through the `files` source by config alone, the
MovieLens 100K loader (skipped when the data set is absent) and the synthetic generator."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import FilesSource, SyntheticSource, load_config
from pipeline.runner import run_stage
from pipeline.schema import DataError
from pipeline.sources.files import load_files
from pipeline.sources.movielens import load_movielens_100k
from pipeline.sources.synthetic import generate
from pipeline.stages.ingest import validated_tables
from tests.conftest import REPO

ML_LATEST = Path(__file__).resolve().parents[1] / "fixtures" / "ml-latest-small"
RATING_COLUMNS = {"user_id": "userId", "item_id": "movieId", "weight": "rating",
                  "ts": "timestamp"}
TAG_COLUMNS = {"user_id": "userId", "item_id": "movieId", "query": "tag", "ts": "timestamp"}
MOVIE_COLUMNS = {"item_id": "movieId", "title": "title", "tags": "genres", "category": "genres"}


def ml_latest(ratings: Path = ML_LATEST / "hand-written-ratings.csv",
              extra: list[dict] | None = None, **rating_options: object) -> dict:
    return {
        "kind": "files",
        "interactions": [
            {"path": str(ratings), "columns": RATING_COLUMNS, "event": "rating",
             **rating_options},
            {"path": str(ML_LATEST / "hand-written-tags.csv"), "columns": TAG_COLUMNS,
             "event": "tag"},
            *(extra or []),
        ],
        "items": {"path": str(ML_LATEST / "hand-written-movies.csv"), "columns": MOVIE_COLUMNS,
                  "list_columns": {"tags": "|"}},
    }


def load(source: dict, unknown_ids: str = "error"):
    raw = load_files(FilesSource.model_validate(source))
    return raw, *validated_tables(raw, unknown_ids)


def seconds(*values: int) -> list[pd.Timestamp]:
    return [pd.Timestamp(v, unit="s") for v in values]


# ------------------------------------------------------------------ MovieLens "latest"
def test_movielens_latest_by_config_alone() -> None:
    raw, interactions, items, users, dropped, notes = load(ml_latest())
    assert raw.notes == () and notes == []
    assert dropped == {"missing_ids": 0, "unknown_items": 0, "unknown_users": 0}
    assert len(interactions) == 7
    assert list(interactions.columns) == ["user_id", "item_id", "ts", "event", "weight", "query"]
    assert interactions["user_id"].dtype == "int64"
    assert interactions["item_id"].dtype == "int64"
    assert interactions["weight"].dtype == "float64"
    assert pa.types.is_timestamp(pa.from_numpy_dtype(interactions["ts"].dtype))
    assert pd.api.types.is_string_dtype(interactions["event"].dtype)

    ratings = interactions[interactions["event"] == "rating"]
    assert ratings[["user_id", "item_id"]].values.tolist() == [
        [1, 1], [1, 11], [2, 2], [2, 4973], [3, 176601]]
    assert ratings["weight"].tolist() == [4.0, 3.5, 0.5, 5.0, 4.0]
    assert ratings["ts"].tolist() == seconds(964982703, 964981247, 1445714994, 1445715100,
                                             1537109082)
    assert ratings["query"].isna().all()

    tags = interactions[interactions["event"] == "tag"]
    assert tags[["user_id", "item_id"]].values.tolist() == [[2, 4973], [3, 1]]
    assert tags["query"].tolist() == ["romantic", "pixar, animation"]
    assert tags["weight"].tolist() == [1.0, 1.0]
    assert tags["ts"].tolist() == seconds(1445714996, 1537109100)

    assert items["item_id"].tolist() == [1, 2, 11, 4973, 176601]
    assert items["title"].tolist()[2:4] == [
        "American President, The (1995)",
        "Am\u00e9lie (Fabuleux destin d'Am\u00e9lie Poulain, Le) (2001)",
    ]
    assert items["tags"].tolist() == [
        ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
        ["Adventure", "Children", "Fantasy"],
        ["Comedy", "Drama", "Romance"],
        ["Comedy", "Romance"],
        ["(no genres listed)"],
    ]
    assert items["category"].tolist()[:2] == ["Adventure|Animation|Children|Comedy|Fantasy",
                                              "Adventure|Children|Fantasy"]
    assert users["user_id"].tolist() == [1, 2, 3]  # derived from the interactions


def test_movielens_latest_iso_timestamps_match_unix_seconds(tmp_path: Path) -> None:
    unix = pd.read_csv(ML_LATEST / "hand-written-ratings.csv")
    iso = unix.assign(timestamp=pd.to_datetime(unix["timestamp"], unit="s", utc=True)
                      .dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    iso.to_csv(tmp_path / "ratings.csv", index=False)
    _, expected, *_ = load(ml_latest())
    _, got, *_ = load(ml_latest(tmp_path / "ratings.csv"))
    _, explicit, *_ = load(ml_latest(tmp_path / "ratings.csv", ts_unit="iso"))
    assert got["ts"].tolist() == expected["ts"].tolist()
    assert explicit["ts"].tolist() == expected["ts"].tolist()


def test_movielens_latest_millisecond_timestamps(tmp_path: Path) -> None:
    unix = pd.read_csv(ML_LATEST / "hand-written-ratings.csv")
    unix.assign(timestamp=unix["timestamp"] * 1000).to_csv(tmp_path / "ratings.csv", index=False)
    _, expected, *_ = load(ml_latest())
    _, got, *_ = load(ml_latest(tmp_path / "ratings.csv", ts_unit="ms"))
    assert got["ts"].tolist() == expected["ts"].tolist()


def test_movielens_latest_parquet_ratings(tmp_path: Path) -> None:
    unix = pd.read_csv(ML_LATEST / "hand-written-ratings.csv")
    pq.write_table(pa.Table.from_pandas(unix, preserve_index=False), tmp_path / "ratings.parquet")
    _, expected, *_ = load(ml_latest())
    _, got, *_ = load(ml_latest(tmp_path / "ratings.parquet"))
    pd.testing.assert_frame_equal(got, expected)


def test_file_without_ts_is_dated_once_with_a_note(tmp_path: Path) -> None:
    """No timestamp mapped: every event of the file at the epoch, not the file's row order
    as time (which would make each user's latest items their highest ids); a log mixing
    such a file with timed ones is warned about by name."""
    plays = tmp_path / "plays.csv"
    plays.write_text("userId,movieId,count\n3,2,5\n1,4973,1\n2,1,2\n")
    extra = [{"path": str(plays), "event": "play",
              "columns": {"user_id": "userId", "item_id": "movieId", "weight": "count"}}]
    raw, interactions, *_ = load(ml_latest(extra=extra))
    assert any(str(plays) in note and "1970-01-01" in note for note in raw.notes)
    played = interactions[interactions["event"] == "play"]
    assert played[["user_id", "item_id"]].values.tolist() == [[3, 2], [1, 4973], [2, 1]]
    assert played["weight"].tolist() == [5.0, 1.0, 2.0]
    assert (played["ts"] == pd.Timestamp(0)).all()

    alone = {"kind": "files", "interactions": extra}
    raw, interactions, *_ = load(alone)
    assert any("the log has no time" in note for note in raw.notes)
    assert interactions["ts"].nunique() == 1


def test_bad_values_are_named_by_the_file_own_column(tmp_path: Path) -> None:
    ratings = (ML_LATEST / "hand-written-ratings.csv").read_text().splitlines()
    ratings[2] = ratings[2].rsplit(",", 1)[0] + ",abc"
    (tmp_path / "ratings.csv").write_text("\n".join(ratings) + "\n")
    with pytest.raises(DataError) as err:
        load(ml_latest(tmp_path / "ratings.csv"))
    assert str(err.value) == (f"{tmp_path / 'ratings.csv'}: column 'timestamp' (ts): "
                              "unparsable timestamp (expected s): 1 row(s), first at data "
                              "row(s) 2 (values 'abc')")


def test_movielens_latest_ingest_writes_contract_types(tmp_path: Path) -> None:
    cfg = load_config(None, base={"dataset": "ml-latest", "data_dir": str(tmp_path),
                                  "threads": 1, "source": ml_latest()})
    manifest = run_stage(cfg, "ingest")
    assert manifest["counts"] == {"interactions": 7, "items": 5, "users": 3}
    assert manifest["notes"] == []
    raw_dir = cfg.root / "raw"
    inter = pq.read_table(raw_dir / "interactions.parquet")
    assert pa.types.is_timestamp(inter.schema.field("ts").type)
    assert pa.types.is_floating(inter.schema.field("weight").type)
    assert pa.types.is_integer(inter.schema.field("item_id").type)
    items = pq.read_table(raw_dir / "items.parquet")
    tags_type = items.schema.field("tags").type
    assert pa.types.is_list(tags_type) or pa.types.is_large_list(tags_type)
    assert items.column("tags").to_pylist()[3] == ["Comedy", "Romance"]


# ------------------------------------------------------------------ MovieLens 100K
ML_100K_CANDIDATES = (
    Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ml-100k",
    Path("/work/shared/datasets/ml-100k"),
)


@pytest.fixture(scope="module")
def ml100k():
    path = next((p for p in ML_100K_CANDIDATES if (p / "u.data").is_file()), None)
    if path is None:
        pytest.skip("MovieLens 100K not present under ../shared/datasets/ml-100k")
    raw = load_movielens_100k(path)
    return raw, validated_tables(raw, "error")


def test_ml100k_raw_files_by_config_alone_equal_its_own_source(ml100k) -> None:
    """configs/movielens-100k-files.yaml: u.data (tab, no header, no known suffix) and
    u.item ('|', latin-1) through the ``files`` source give the same log and titles as
    the MovieLens reader."""
    raw, (expected, expected_items, *_) = ml100k
    folder = Path(raw.interactions[0][0]).parent
    tree = load_config(REPO / "configs" / "movielens-100k-files.yaml").source.model_dump()
    for spec in (*tree["interactions"], tree["items"]):
        spec["path"] = folder / Path(spec["path"]).name  # wherever ../shared is here
    interactions, items, *_ = validated_tables(load_files(FilesSource.model_validate(tree)),
                                               "error")
    columns = ["user_id", "item_id", "ts", "weight", "event"]
    pd.testing.assert_frame_equal(interactions[columns], expected[columns])
    pd.testing.assert_series_equal(items.set_index("item_id")["title"],
                                   expected_items.set_index("item_id")["title"])


def test_ml100k_counts_and_validation(ml100k) -> None:
    raw, (interactions, items, users, dropped, notes) = ml100k
    assert dropped == {"missing_ids": 0, "unknown_items": 0, "unknown_users": 0} and notes == []
    assert len(interactions) == 100_000
    assert interactions["user_id"].nunique() == 943 and len(users) == 943
    assert interactions["item_id"].nunique() == 1682 and len(items) == 1682
    assert set(interactions["event"].unique()) == {"rating"}
    assert sorted(interactions["weight"].unique()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert interactions["ts"].min() == pd.Timestamp("1997-09-20 03:05:10")
    assert interactions["ts"].max() == pd.Timestamp("1998-04-22 23:10:38")
    assert raw.interactions[0][0].endswith("u.data")


def test_ml100k_items(ml100k) -> None:
    _, (_, items, *_) = ml100k
    by_id = items.set_index("item_id")
    assert by_id.loc[1, "title"] == "Toy Story (1995)"
    assert by_id.loc[543, "title"] == "Mis\u00e9rables, Les (1995)"  # latin-1 in the file
    assert by_id.loc[1104, "title"] == "C'est arriv\u00e9 pr\u00e8s de chez vous (1992)"
    assert by_id.loc[1, "tags"] == ["Animation", "Children's", "Comedy"]
    assert by_id.loc[1, "category"] == "Animation"
    assert by_id.loc[1, "text"] == "Toy Story (1995) Animation Children's Comedy"
    assert by_id.loc[1, "created_ts"] == pd.Timestamp("1995-01-01")
    assert pd.isna(by_id.loc[267, "created_ts"])  # 'unknown' has no release date
    assert all(len(t) >= 1 for t in items["tags"])


def test_ml100k_users_region_is_first_zip_char(ml100k) -> None:
    _, (_, _, users, *_) = ml100k
    by_id = users.set_index("user_id")
    assert by_id.loc[1, "region"] == "8"  # zip 85711
    assert by_id.loc[2, "region"] == "9"  # zip 94043
    assert (users["region"] == users["zip"].astype(str).str[0]).all()


def test_ml100k_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="u.data"):
        load_movielens_100k(tmp_path)


# ------------------------------------------------------------------ synthetic
SMALL = SyntheticSource(n_users=300, n_items=200, mean_interactions=15, n_regions=4,
                        regional_item_share=0.3)


@pytest.fixture(scope="module")
def synthetic():
    return validated_tables(generate(SMALL, 7), "error")


def test_synthetic_same_seed_same_tables() -> None:
    a, b = generate(SMALL, 3), generate(SMALL, 3)
    for (_, x), (_, y) in zip([*a.interactions, a.items, a.users],
                              [*b.interactions, b.items, b.users], strict=True):
        pd.testing.assert_frame_equal(x, y)


def test_synthetic_different_seed_differs() -> None:
    a, b = generate(SMALL, 3), generate(SMALL, 4)
    assert not a.interactions[0][1].equals(b.interactions[0][1])
    assert a.items[1]["title"].tolist() != b.items[1]["title"].tolist()


def test_synthetic_passes_validation(synthetic) -> None:
    interactions, items, users, dropped, notes = synthetic
    assert dropped == {"missing_ids": 0, "unknown_items": 0, "unknown_users": 0}
    assert notes == []
    assert len(items) == SMALL.n_items and len(users) == SMALL.n_users
    assert set(interactions["event"].unique()) <= {"click", "purchase", "search"}
    assert interactions["ts"].is_monotonic_increasing
    created = interactions["item_id"].map(items.set_index("item_id")["created_ts"])
    assert (created <= interactions["ts"]).all()  # no event before its item exists


def test_synthetic_search_queries_are_typed_as_people_type(synthetic) -> None:
    interactions, items, *_ = synthetic
    search = interactions[interactions["event"] == "search"]
    assert len(search) > 0.05 * len(interactions)
    assert search["query"].notna().all()
    assert interactions.loc[interactions["event"] != "search", "query"].isna().all()
    table = items.set_index("item_id")
    item_words = {w for text in items["text"] for w in text.split()}
    kinds, synonym_items = Counter(), defaultdict(set)
    for query, item in zip(search["query"], search["item_id"], strict=True):
        words, title, tags = query.split(), table.at[item, "title"].split(), \
            list(table.at[item, "tags"])
        if set(words) <= set(title):
            kinds["title"] += 1
        elif len(words) == 1 and any(len(query) == 4 and t.startswith(query) for t in title):
            kinds["prefix"] += 1
        elif len(words) == 1 and any(len(query) == 5 and any(
                t[:i] + t[i + 1:] == query for i in range(6)) for t in title):
            kinds["misspelled"] += 1
        elif query in tags:
            kinds["tag"] += 1
        else:  # a synonym of the item's topic, never in any item's text, maybe with a tag
            assert len(words[0]) == 8 and words[0] not in item_words, (query, title)
            assert len(words) == 1 or (len(words) == 2 and words[1] in tags), (query, tags)
            kinds["synonym"] += 1
            synonym_items[words[0]].add(item)
    assert set(kinds) == {"title", "prefix", "misspelled", "tag", "synonym"}
    assert kinds["title"] < 0.4 * len(search)  # a title index alone no longer finds most
    # a synonym names its whole topic: the same query leads to many different items
    assert sum(map(len, synonym_items.values())) > 2 * len(synonym_items)


def test_synthetic_popularity_is_skewed(synthetic) -> None:
    interactions, items, *_ = synthetic
    counts = interactions["item_id"].value_counts()
    top = counts.iloc[: len(items) // 10].sum() / len(interactions)
    assert top > 0.35  # uniform popularity would give about 0.10


def test_synthetic_regional_items_stay_in_their_region(synthetic) -> None:
    interactions, items, users, *_ = synthetic
    item_region = interactions["item_id"].map(items.set_index("item_id")["region"])
    user_region = interactions["user_id"].map(users.set_index("user_id")["region"])
    assert (interactions["region"] == user_region).all()
    regional = item_region.notna()
    assert regional.sum() > 100
    same = (item_region[regional] == user_region[regional]).mean()
    assert same > 0.6  # 1 / n_regions = 0.25 without the regional constraint
