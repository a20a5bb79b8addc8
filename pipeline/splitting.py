"""Leak-free splits of an interaction log into train / valid / test.

Every strategy first keeps one row per (user, item), the one with the earliest ``ts``
(ties: the earlier row in the log): when the user found the item. A later event on it
is a re-consumption that a recommender never shows (served lists leave out what the
user has seen), so it is no held-out event to predict; keeping the latest had put the
pair in the user's valid or test part with its earlier events deleted, and 36% of the
synthetic log's test events were items the user had already had by the end of their
train part. Then:
- ``ratio``: per user, ordered by ts, events at one time in a seeded random order;
  users with n < min_interactions stay in train; otherwise the last
  max(1, floor(test_fraction * n)) rows are test, the max(1, floor(valid_fraction * n))
  before them valid, the rest train. Ties are common (a log stamped by the day; three
  in four of ML-100K's events share their second with another of the user's), and
  broken by item id they made each user's test items their highest ids of the last
  day or second: a pattern the sequence channel and rankers learned, not taste.
- ``leave_last``: the same with exactly one test and one valid row per user.
- ``time``: global cut-offs: ts < valid_start is train, ts >= test_start is test
  (a cut-off with a time zone is compared as naive UTC, like every ``ts``).
- ``random``: the ``ratio`` counts, drawn per user in a seeded random order: the honest
  holdout for a log without time, where any order (often the file's, sorted by user and
  item id) would make each user's "latest" items simply their highest ids.
- ``auto`` (the default): ``random`` when the log has no time (every event at one
  timestamp, as the ``files`` source gives a log without a timestamp column), else
  ``ratio``.
The ordered strategies keep each user's train strictly before (in that order) their valid
and test rows, which is what lets later stages fit on train and never see the future.
The seeded random order is a key per (seed, user, item) (``seeded_order``), not a draw
per row, so a user's held-out events depend on their own events alone: a night's new
events for some users leave everyone else's parts as they were.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.interactions import id_keys, tie_order
from pipeline import schema as S
from pipeline.config import SplitConfig
from pipeline.schema import DataError

PARTS = ("train", "valid", "test")


def deduplicate(interactions: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item): the earliest by ts, the earlier log row on ties."""
    ordered = interactions.reset_index(drop=True)
    ordered = ordered.sort_values([S.USER, S.ITEM, S.TS], kind="stable")
    return ordered.drop_duplicates([S.USER, S.ITEM], keep="first")


def seeded_order(df: pd.DataFrame, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per row from its (user, item) and the seed alone
    (``tie_order`` of the ids' hashes, as text: a log whose item ids turn from numbers
    to text when one new id has letters keeps its keys), so the same pair gets the
    same key whatever else the log holds."""
    def keys(column: pd.Series) -> np.ndarray:
        codes, uniques = pd.factorize(column)
        return id_keys(pd.Index(uniques))[codes]

    salt = np.uint64((seed + 1) * 0xD1B54A32D192ED03 % 2**64)
    return tie_order(keys(df[S.USER]) ^ salt, keys(df[S.ITEM]))


def _floor_share(fraction: float, n: np.ndarray) -> np.ndarray:
    """floor(fraction * n) without float error: 0.29 * 100 is 28.999999999999996 in floats."""
    return np.floor(fraction * n + 1e-9).astype(np.int64)


def _cutoff(value: str | None) -> pd.Timestamp:
    """A cut-off as naive UTC, like every ``ts`` after ingest (``...Z`` would not compare)."""
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tz is not None else ts


def is_timed(interactions: pd.DataFrame) -> bool:
    """Whether the log orders anything: a single timestamp (or none) orders nothing."""
    return interactions[S.TS].nunique() > 1


def resolve_strategy(cfg: SplitConfig, timed: bool) -> str:
    """The strategy ``auto`` stands for on a log with or without time (others stand for
    themselves)."""
    if cfg.strategy != "auto":
        return cfg.strategy
    return "ratio" if timed else "random"


def tied_held_out(parts: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Per held-out part, the share of its events at the same time as an event of the
    same user in another part: time did not decide which part they went to, the seeded
    order did (a log stamped by the day; ratings entered a page at a time). 0 for an
    empty part."""
    frames = [parts[name][[S.USER, S.TS]].assign(_part=i) for i, name in enumerate(PARTS)]
    log = pd.concat(frames, ignore_index=True)
    spread = log.groupby([S.USER, S.TS], sort=False)["_part"].transform("nunique") > 1
    return {name: float(spread[log["_part"] == i].mean()) if len(parts[name]) else 0.0
            for i, name in enumerate(PARTS) if name != "train"}


def require_held_out(parts: dict[str, pd.DataFrame], cfg: SplitConfig, n_items: int) -> None:
    """Stop with a clear error when the split leaves nothing to tune or evaluate on: a
    catalogue of one item (a user who has it has everything), or no user with enough
    events for a valid and a test part (every later stage would fail somewhere inside)."""
    if n_items < 2:
        raise DataError(f"the catalogue holds {n_items} item(s): there is nothing to "
                        "recommend that a user does not already have")
    empty = [name for name in PARTS[1:] if parts[name].empty]
    if empty:
        train = parts["train"]
        most = int(train.groupby(S.USER).size().max()) if len(train) else 0
        raise DataError(f"split {cfg.strategy}: the {' and '.join(empty)} part(s) are empty "
                        f"(users with fewer than split.min_interactions="
                        f"{cfg.min_interactions} events stay in train; the most any user "
                        f"has is {most}); the pipeline needs held-out events to tune and to "
                        "evaluate on")


def split(interactions: pd.DataFrame, cfg: SplitConfig, seed: int = 0,
          strategy: str | None = None) -> dict[str, pd.DataFrame]:
    """The three parts by ``strategy`` (default: what ``cfg`` resolves to on this log)."""
    df = deduplicate(interactions)
    strategy = strategy or resolve_strategy(cfg, is_timed(df))
    if strategy == "time":
        valid_start, test_start = _cutoff(cfg.valid_start), _cutoff(cfg.test_start)
        if test_start < valid_start:
            raise ValueError("split.test_start must not precede split.valid_start")
        part = np.where(df[S.TS] >= test_start, 2, np.where(df[S.TS] >= valid_start, 1, 0))
    else:
        df = df.assign(_order=seeded_order(df, seed))
        df = df.sort_values([S.USER, "_order"] if strategy == "random" else
                            [S.USER, S.TS, "_order"], kind="stable").drop(columns="_order")
        n = df.groupby(S.USER, sort=False)[S.ITEM].transform("size").to_numpy()
        from_end = n - 1 - df.groupby(S.USER, sort=False).cumcount().to_numpy()
        if strategy == "leave_last":
            n_test = n_valid = np.ones_like(n)
        else:
            n_test = np.maximum(1, _floor_share(cfg.test_fraction, n))
            n_valid = np.maximum(1, _floor_share(cfg.valid_fraction, n))
        part = np.where(from_end < n_test, 2, np.where(from_end < n_test + n_valid, 1, 0))
        part[n < cfg.min_interactions] = 0
    return {name: df.loc[part == i].reset_index(drop=True) for i, name in enumerate(PARTS)}
