"""CTR-style benchmark sets for the FM/FFM benchmark.

ML-100K: every rating is a sample, label = rating >= 4. Fields: user, item, age bucket,
gender, occupation, zip digit (first character of the zip code), release decade, genres
(multi-valued), hour and weekday of the rating (UTC). Split by time over the whole log:
the first 80% of ratings (ordered by timestamp, then user, then item) fit, the next 10%
validate, the last 10% test. Encoders are fitted on the fitting part only.

Synthetic: the embedded generator's log (``pipeline.sources.synthetic``, default
settings); each event is a positive and gets one negative, an item drawn by popularity in
the fitting part (``models.negatives.sample_negatives``) with the positive's user and
time. Same 80/10/10 time split; fields user, item, category, tags, item region, user
region, age, gender, item age in days, hour, weekday.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.negatives import sample_negatives

if TYPE_CHECKING:
    from pipeline.config import SyntheticSource

ML100K = Path(os.environ.get("ML100K_PATH", Path(__file__).resolve().parents[2] / "shared"
                             / "datasets" / "ml-100k"))
LABEL = "label"


@dataclass
class CtrSet:
    """Three time-ordered parts, the field spec (``features.fields``) and the label name."""

    name: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    fields: dict[str, Any]


def time_split(df: pd.DataFrame, order: list[str], shares: tuple[float, float] = (0.8, 0.1)
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Global split by position in time order: first ``shares[0]``, next ``shares[1]``, rest."""
    df = df.sort_values(order, kind="stable").reset_index(drop=True)
    a = int(round(len(df) * shares[0]))
    b = int(round(len(df) * (shares[0] + shares[1])))
    return df.iloc[:a].reset_index(drop=True), df.iloc[a:b].reset_index(drop=True), \
        df.iloc[b:].reset_index(drop=True)


def _time_parts(seconds: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    ts = pd.to_datetime(seconds.astype("int64"), unit="s", utc=True)
    return ts.dt.hour.to_numpy(np.int64), ts.dt.weekday.to_numpy(np.int64)


def ml100k_ctr(path: Path = ML100K) -> CtrSet:
    """The ML-100K CTR set (raises ``pipeline.schema.DataError`` when u.data is absent)."""
    from pipeline import schema as S
    from pipeline.sources.movielens import load_movielens_100k

    raw = load_movielens_100k(Path(path))
    ratings = raw.interactions[0][1]
    items = raw.items[1] if raw.items else None
    users = raw.users[1] if raw.users else None
    assert items is not None and users is not None
    df = ratings[[S.USER, S.ITEM, S.WEIGHT, S.TS]].copy()
    df[LABEL] = (df[S.WEIGHT] >= 4).astype(np.float32)
    df["hour"], df["weekday"] = _time_parts(df[S.TS])
    year = pd.to_datetime(items[S.CREATED_TS]).dt.year
    item_cols = pd.DataFrame({S.ITEM: items[S.ITEM].to_numpy(),
                              "release_decade": (year // 10 * 10).astype("Int64"),
                              "genres": items[S.TAGS].to_numpy()})
    user_cols = pd.DataFrame({S.USER: users[S.USER].to_numpy(), "age": users["age"].to_numpy(),
                              "gender": users["gender"].to_numpy(),
                              "occupation": users["occupation"].to_numpy(),
                              "zip_digit": users[S.REGION].to_numpy()})
    df = df.merge(item_cols, on=S.ITEM, how="left").merge(user_cols, on=S.USER, how="left")
    train, valid, test = time_split(df, [S.TS, S.USER, S.ITEM])
    fields: dict[str, Any] = {
        "user": {"kind": "categorical", "column": S.USER},
        "item": {"kind": "categorical", "column": S.ITEM},
        "age": {"kind": "numeric", "bins": 8},
        "gender": "categorical",
        "occupation": "categorical",
        "zip_digit": "categorical",
        "release_decade": "categorical",
        "genres": "multi",
        "hour": "categorical",
        "weekday": "categorical",
    }
    return CtrSet("ml-100k", train, valid, test, fields)


def synthetic_ctr(seed: int = 0, source: SyntheticSource | None = None) -> CtrSet:
    """The synthetic CTR set of ``source`` (a ``SyntheticSource``; None: the default one),
    one popularity negative each."""
    from pipeline import schema as S
    from pipeline.config import SyntheticSource
    from pipeline.sources.synthetic import generate

    raw = generate(source or SyntheticSource(), seed)
    log = raw.interactions[0][1]
    assert raw.items is not None and raw.users is not None
    items, users = raw.items[1], raw.users[1]
    pos = pd.DataFrame({S.USER: log[S.USER].to_numpy(), S.ITEM: log[S.ITEM].to_numpy(),
                        S.TS: log[S.TS].astype("datetime64[s]").astype("int64").to_numpy()})
    train, valid, test = time_split(pos, [S.TS, S.USER, S.ITEM])
    rng = np.random.default_rng(seed)
    n_items = int(items[S.ITEM].max()) + 1
    popularity = np.bincount(train[S.ITEM].to_numpy(), minlength=n_items) + 1.0
    parts = []
    for part in (train, valid, test):
        users_neg, items_neg = sample_negatives(part[S.USER].to_numpy(), part[S.ITEM].to_numpy(),
                                                n_items, 1, rng, popularity=popularity)
        neg = pd.DataFrame({S.USER: users_neg, S.ITEM: items_neg, S.TS: part[S.TS].to_numpy()})
        both = pd.concat([part.assign(**{LABEL: 1.0}), neg.assign(**{LABEL: 0.0})],
                         ignore_index=True)
        parts.append(both.sample(frac=1.0, random_state=seed).reset_index(drop=True))
    created = items[S.CREATED_TS].astype("datetime64[s]").astype("int64")
    item_cols = pd.DataFrame({S.ITEM: items[S.ITEM].to_numpy(),
                              "category": items[S.CATEGORY].to_numpy(),
                              "tags": items[S.TAGS].to_numpy(),
                              "item_region": items[S.REGION].to_numpy(dtype=object),
                              "created": created.to_numpy()})
    user_cols = users.rename(columns={S.REGION: "user_region"})
    out = []
    for part in parts:
        part = part.merge(item_cols, on=S.ITEM, how="left").merge(user_cols, on=S.USER,
                                                                   how="left")
        part["item_age_days"] = (part[S.TS] - part["created"]) / 86_400.0
        part["hour"], part["weekday"] = _time_parts(part[S.TS])
        part[LABEL] = part[LABEL].astype(np.float32)
        out.append(part)
    fields: dict[str, Any] = {
        "user": {"kind": "categorical", "column": S.USER},
        "item": {"kind": "categorical", "column": S.ITEM},
        "category": "categorical",
        "tags": "multi",
        "item_region": "categorical",
        "user_region": "categorical",
        "age": {"kind": "numeric", "bins": 8},
        "gender": "categorical",
        "item_age_days": {"kind": "numeric", "bins": 10},
        "hour": "categorical",
        "weekday": "categorical",
    }
    return CtrSet("synthetic", out[0], out[1], out[2], fields)
