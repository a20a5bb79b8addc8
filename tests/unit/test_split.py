"""Deduplication and the train / valid / test splits (``pipeline.splitting``).

The spec: deduplicate (user, item) keeping the earliest ts; ``ratio`` orders each user's
rows by ts (events at one time in a seeded random order), keeps users with n < 3 wholly
in train, else puts the last max(1, floor(0.1 n)) rows in test and the
max(1, floor(0.1 n)) before them in valid;
``leave_last`` takes exactly one of each; ``time`` cuts globally at two timestamps (>=).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import schema as S
from pipeline.config import SplitConfig
from pipeline.splitting import PARTS, deduplicate, split, tied_held_out

T0 = pd.Timestamp("2024-01-01")


def log(rows: list[tuple[object, object, float]]) -> pd.DataFrame:
    """(user, item, hours after T0) rows as an interactions table; weight tags the row."""
    users, items, hours = zip(*rows, strict=True) if rows else ((), (), ())
    return pd.DataFrame({
        S.USER: list(users),
        S.ITEM: list(items),
        S.TS: (T0 + pd.to_timedelta(list(hours), unit="h")).astype("datetime64[us]"),
        S.EVENT: "view",
        S.WEIGHT: np.arange(len(rows), dtype=np.float64),
    })


def user_log(n: int, user: object = 1) -> pd.DataFrame:
    """n interactions of one user, item i at hour i."""
    return log([(user, i, float(i)) for i in range(n)])


def counts(parts: dict[str, pd.DataFrame], user: object | None = None) -> tuple[int, ...]:
    return tuple(int((parts[p][S.USER] == user).sum()) if user is not None else len(parts[p])
                 for p in PARTS)


def random_log(seed: int, n_users: int = 200, max_n: int = 40, n_items: int = 60,
               n_hours: int = 30) -> pd.DataFrame:
    """Few distinct hours (many equal ts per user) and repeated (user, item) pairs."""
    rng = np.random.default_rng(seed)
    n = rng.integers(1, max_n + 1, n_users)
    users = np.repeat(np.arange(n_users) * 5 + 3, n)
    items = rng.integers(0, n_items, len(users))
    hours = rng.integers(0, n_hours, len(users)).astype(np.float64)
    return log(list(zip(users.tolist(), items.tolist(), hours.tolist(), strict=True)))


def naive_dedup(df: pd.DataFrame) -> pd.DataFrame:
    """A later row wins only when its ts is earlier than the kept one's: earliest ts,
    ties to the earlier log row."""
    kept: dict[tuple[object, object], int] = {}
    for pos, (u, i, ts) in enumerate(zip(df[S.USER], df[S.ITEM], df[S.TS], strict=True)):
        key = (u, i)
        if key not in kept or ts < df[S.TS].iloc[kept[key]]:
            kept[key] = pos
    return df.iloc[sorted(kept.values())]


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values([S.USER, S.ITEM]).reset_index(drop=True)


# ---------------------------------------------------------------- deduplicate
def test_dedup_keeps_the_earliest_ts() -> None:
    df = log([(1, 7, 3.0), (1, 7, 1.0), (1, 7, 5.0), (2, 7, 0.0), (1, 8, 2.0)])
    out = canonical(deduplicate(df))
    assert list(zip(out[S.USER], out[S.ITEM], out[S.WEIGHT], strict=True)) == [
        (1, 7, 1.0),  # the row at hour 1 (weight 1), not the pair's first or last in the log
        (1, 8, 4.0),
        (2, 7, 3.0),
    ]


def test_dedup_ties_on_ts_keep_the_earlier_log_row() -> None:
    df = log([(1, 7, 3.0), (1, 7, 2.0), (1, 7, 2.0), (1, 7, 2.0)])
    out = deduplicate(df)
    assert len(out) == 1
    assert out[S.WEIGHT].item() == 1.0


def test_dedup_matches_naive_loop_on_random_data() -> None:
    df = random_log(seed=3, n_users=60)
    pd.testing.assert_frame_equal(canonical(deduplicate(df)), canonical(naive_dedup(df)))


def test_dedup_applies_before_counting() -> None:
    """Three rows but two distinct items: n = 2, so the user stays wholly in train."""
    parts = split(log([(1, 7, 0.0), (1, 8, 1.0), (1, 7, 2.0)]), SplitConfig())
    assert counts(parts) == (2, 0, 0)
    assert parts["train"].loc[parts["train"][S.ITEM] == 7, S.TS].item() == T0


# ---------------------------------------------------------------- ratio
RATIO_COUNTS = {  # n -> (train, valid, test) with the default 0.1 / 0.1 and n >= 3
    1: (1, 0, 0),
    2: (2, 0, 0),
    3: (1, 1, 1),
    5: (3, 1, 1),
    10: (8, 1, 1),
    19: (17, 1, 1),  # floor(1.9) = 1
    20: (16, 2, 2),
    25: (21, 2, 2),  # floor(2.5) = 2
}


@pytest.mark.parametrize(("n", "expected"), sorted(RATIO_COUNTS.items()))
def test_ratio_counts(n: int, expected: tuple[int, int, int]) -> None:
    parts = split(user_log(n), SplitConfig())
    assert counts(parts) == expected
    # the last rows by time are test, the ones before them valid
    n_train, n_valid, _ = expected
    assert parts["train"][S.ITEM].tolist() == list(range(n_train))
    assert parts["valid"][S.ITEM].tolist() == list(range(n_train, n_train + n_valid))
    assert parts["test"][S.ITEM].tolist() == list(range(n_train + n_valid, n))


def test_ratio_counts_for_many_users_at_once() -> None:
    df = pd.concat([user_log(n, user=n) for n in RATIO_COUNTS], ignore_index=True)
    df = df.sample(frac=1.0, random_state=0)
    parts = split(df, SplitConfig())
    for n, expected in RATIO_COUNTS.items():
        assert counts(parts, user=n) == expected, n


@pytest.mark.parametrize(("valid_fraction", "test_fraction", "n", "expected"), [
    (0.2, 0.3, 20, (10, 4, 6)),
    (0.2, 0.3, 3, (1, 1, 1)),
    (0.25, 0.45, 9, (3, 2, 4)),  # floor(4.05) = 4, floor(2.25) = 2
    (0.29, 0.29, 100, (42, 29, 29)),  # 0.29 * 100 is 28.999999999999996 in floats
    (0.1, 0.14, 100, (76, 10, 14)),
])
def test_ratio_fractions_are_configurable(valid_fraction: float, test_fraction: float, n: int,
                                          expected: tuple[int, int, int]) -> None:
    cfg = SplitConfig(valid_fraction=valid_fraction, test_fraction=test_fraction)
    assert counts(split(user_log(n), cfg)) == expected


def test_min_interactions_is_configurable() -> None:
    cfg = SplitConfig(min_interactions=5)
    assert counts(split(user_log(4), cfg)) == (4, 0, 0)
    assert counts(split(user_log(5), cfg)) == (3, 1, 1)


def test_events_at_one_time_take_a_seeded_random_order_not_the_ids() -> None:
    """Events sharing a timestamp (a log stamped by the day; a page of ratings entered
    at once) went to valid and test by item id: each user's test items were the highest
    ids of their last day, whatever the log's order. Now a seeded random order: the same
    parts for a seed, the ratio's counts, and test items that are not the top ids."""
    rows = [(user, item, 0.0) for user in range(200) for item in range(10)]
    df = log(rows)
    parts = split(df, SplitConfig(strategy="ratio"), seed=3)
    assert counts(parts) == (1600, 200, 200)
    for part, frame in split(df, SplitConfig(strategy="ratio"), seed=3).items():
        pd.testing.assert_frame_equal(frame, parts[part])
    again = split(df.iloc[::-1].reset_index(drop=True), SplitConfig(strategy="ratio"), seed=3)
    for part in PARTS:  # the file's order plays no part
        assert sorted(map(tuple, again[part][[S.USER, S.ITEM]].values.tolist())) == sorted(
            map(tuple, parts[part][[S.USER, S.ITEM]].values.tolist()))
    test_items = parts["test"][S.ITEM].to_numpy()
    assert (test_items != 9).sum() > 150  # by id, every one was item 9
    assert 3.0 < test_items.mean() < 6.0  # about uniform over the ten
    other = split(df, SplitConfig(strategy="ratio"), seed=4)["test"][S.ITEM].to_numpy()
    assert (other != test_items).any()
    strings = log([("u", item, 0.0) for item in ("b", "c", "a", "d")])
    strings[S.ITEM] = strings[S.ITEM].astype("string[pyarrow]")
    parts = split(strings, SplitConfig(strategy="ratio"))
    assert counts(parts) == (2, 1, 1)
    assert sorted(pd.concat([parts[p] for p in PARTS])[S.ITEM]) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("strategy", ["ratio", "random"])
def test_a_users_parts_depend_on_their_own_events_alone(strategy: str) -> None:
    """A draw per row made every user's held-out items hang on the rows before theirs:
    one more event for user 3 changed the test items of all 49 other users, and a
    nightly run compared its metrics on another test set each night."""
    df = random_log(2, n_users=50)
    before = split(df, SplitConfig(strategy=strategy), seed=1)
    more = pd.concat([log([(3, 999, 0.0)]), df], ignore_index=True)
    after = split(more, SplitConfig(strategy=strategy), seed=1)

    def others(parts: pd.DataFrame) -> pd.DataFrame:
        rest = parts[parts[S.USER] != 3][[S.USER, S.ITEM]]
        return rest.sort_values([S.USER, S.ITEM]).reset_index(drop=True)

    for part in PARTS:
        pd.testing.assert_frame_equal(others(after[part]), others(before[part]))
    assert not others(split(df, SplitConfig(strategy=strategy), seed=2)["test"]).equals(
        others(before["test"]))
    # one new item id with letters turns the column to text (ingest types ids so):
    # "5" must get the key 5 had
    texts = more.assign(**{S.ITEM: more[S.ITEM].astype(str)})
    texts.loc[0, S.ITEM] = "B00X"
    as_text = split(texts, SplitConfig(strategy=strategy), seed=1)
    for part in PARTS:
        rest = as_text[part][as_text[part][S.USER] != 3]
        pd.testing.assert_frame_equal(others(rest.assign(**{S.ITEM: rest[S.ITEM].astype(int)})),
                                      others(before[part]))


def test_ts_before_the_order_of_ties() -> None:
    """Item 1 is newest, so it is test even though its id is smallest; 4 and 2 tie on
    ts, so either is valid."""
    df = log([(1, 1, 9.0), (1, 4, 5.0), (1, 2, 5.0), (1, 9, 0.0)])
    parts = split(df, SplitConfig())
    assert parts["train"][S.ITEM].tolist()[0] == 9
    assert {parts["train"][S.ITEM].tolist()[1], *parts["valid"][S.ITEM]} == {2, 4}
    assert parts["test"][S.ITEM].tolist() == [1]


def test_tied_held_out_counts_the_events_time_did_not_order() -> None:
    """By hand: user 1's train ends at t=5; valid holds 5 (tied with train) and 6 (tied
    with test's 6); test holds 6 (tied) and 7. User 2's parts hold times 3, 4 and 4 (valid
    and test tied with each other), user 3's 1, 2 and 3 (nothing tied)."""
    parts = {
        "train": log([(1, 1, 1.0), (1, 2, 5.0), (2, 7, 3.0), (3, 1, 1.0)]),
        "valid": log([(1, 3, 5.0), (1, 4, 6.0), (2, 9, 4.0), (3, 2, 2.0)]),
        "test": log([(1, 5, 6.0), (1, 6, 7.0), (2, 8, 4.0), (3, 3, 3.0)]),
    }
    assert tied_held_out(parts) == {"valid": 0.75, "test": 0.5}
    assert tied_held_out({**parts, "test": parts["test"].iloc[:0]}) == {
        "valid": 0.25, "test": 0.0}
    # on a whole split: ML-100K's shape, a page of ratings at one time
    rows = [(u, i, float(i // 4)) for u in range(30) for i in range(20)]
    shares = tied_held_out(split(log(rows), SplitConfig(strategy="ratio"), seed=1))
    # 20 events, times 0..4 in fours: train 16 (up to t=3), valid 2 and test 2 at t=4
    assert shares == {"valid": 1.0, "test": 1.0}
    rows = [(u, i, float(i // 2)) for u in range(30) for i in range(20)]
    shares = tied_held_out(split(log(rows), SplitConfig(strategy="ratio"), seed=1))
    assert shares == {"valid": 0.0, "test": 0.0}  # in twos, the cuts fall between times


# ---------------------------------------------------------------- random, auto
def untimed_log(n_users: int = 50, n_items: int = 40, seed: int = 0) -> pd.DataFrame:
    """A count log as the files source gives it without a timestamp column: sorted by
    user and item id, every event at one timestamp."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), 0.0) for u in range(n_users)
            for i in np.sort(rng.choice(n_items, rng.integers(1, 30), replace=False))]
    return log(rows)


def test_a_log_without_time_gets_a_seeded_random_holdout_with_the_ratio_counts() -> None:
    df = untimed_log()
    auto = split(df, SplitConfig(), seed=7)
    assert_frames = pd.testing.assert_frame_equal
    for name in PARTS:  # auto is random here, and the seed fixes it
        assert_frames(auto[name], split(df, SplitConfig(strategy="random"), seed=7)[name])
        assert_frames(auto[name], split(df, SplitConfig(), seed=7)[name])
    ratio = split(df, SplitConfig(strategy="ratio"))
    for user in df[S.USER].unique():  # the same counts per user as ratio
        assert counts(auto, user) == counts(ratio, user)
    # not the file's order: the held-out items are not each user's highest ids
    held = pd.concat([auto["valid"], auto["test"]])
    n_held = held.groupby(S.USER).size()
    highest = df.groupby(S.USER, group_keys=False)[S.ITEM].apply(
        lambda items: items.nlargest(n_held.get(items.name, 0)))
    assert len(held) == len(highest) > 50
    assert held[S.ITEM].mean() < highest.mean() - 3
    other = split(df, SplitConfig(), seed=8)
    assert not other["test"].equals(auto["test"])
    # every row lands in exactly one part
    together = pd.concat([auto[p] for p in PARTS])
    assert len(together) == len(deduplicate(df))


def test_auto_keeps_ratio_on_a_timed_log() -> None:
    df = random_log(3)
    for name, part in split(df, SplitConfig(), seed=5).items():
        pd.testing.assert_frame_equal(part, split(df, SplitConfig(strategy="ratio"),
                                                  seed=5)[name])


# ---------------------------------------------------------------- leave_last
@pytest.mark.parametrize(("n", "expected"), [
    (1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (5, (3, 1, 1)), (25, (23, 1, 1)),
])
def test_leave_last_counts(n: int, expected: tuple[int, int, int]) -> None:
    parts = split(user_log(n), SplitConfig(strategy="leave_last"))
    assert counts(parts) == expected
    if n >= 3:
        assert parts["valid"][S.ITEM].tolist() == [n - 2]
        assert parts["test"][S.ITEM].tolist() == [n - 1]


# ---------------------------------------------------------------- time
def time_cfg(valid_hour: float, test_hour: float, fmt: str = "") -> SplitConfig:
    def iso(hour: float) -> str:
        return (T0 + pd.Timedelta(hours=hour)).isoformat() + fmt
    return SplitConfig(strategy="time", valid_start=iso(valid_hour), test_start=iso(test_hour))


def test_time_cutoffs_are_inclusive_at_the_boundary() -> None:
    eps = 1 / 3600 / 1e6  # one microsecond, in hours
    hours = [0.0, 10 - eps, 10.0, 20 - eps, 20.0, 30.0]
    df = log([(1, i, h) for i, h in enumerate(hours)])
    parts = split(df, time_cfg(10, 20))
    assert parts["train"][S.ITEM].tolist() == [0, 1]
    assert parts["valid"][S.ITEM].tolist() == [2, 3]
    assert parts["test"][S.ITEM].tolist() == [4, 5]


def test_time_ignores_per_user_counts() -> None:
    """Global cut-offs: a one-interaction user lands wherever their timestamp falls."""
    parts = split(log([(1, 1, 25.0), (2, 1, 15.0)]), time_cfg(10, 20))
    assert counts(parts) == (0, 1, 1)


def test_time_deduplicates_first() -> None:
    """Had in train, the item is no test event when the user has it again."""
    parts = split(log([(1, 1, 1.0), (1, 1, 25.0)]), time_cfg(10, 20))
    assert counts(parts) == (1, 0, 0)


def test_time_equal_cutoffs_leave_valid_empty() -> None:
    parts = split(log([(1, 1, 5.0), (1, 2, 10.0)]), time_cfg(10, 10))
    assert counts(parts) == (1, 0, 1)


def test_time_test_before_valid_raises() -> None:
    with pytest.raises(ValueError, match="test_start must not precede"):
        split(user_log(3), time_cfg(20, 10))


def test_time_cutoffs_with_a_time_zone_compare_as_utc() -> None:
    """Timestamps are naive UTC after ingest; an ISO cut-off ending in Z or +02:00 works."""
    df = log([(1, i, float(h)) for i, h in enumerate([5, 10, 15, 20, 25])])
    expected = counts(split(df, time_cfg(10, 20)))
    assert counts(split(df, time_cfg(10, 20, fmt="Z"))) == expected
    shifted = SplitConfig(strategy="time", valid_start="2024-01-01T12:00:00+02:00",
                          test_start="2024-01-01T22:00:00+02:00")
    assert counts(split(df, shifted)) == expected


def test_time_config_needs_both_cutoffs() -> None:
    with pytest.raises(ValueError, match="needs split.valid_start"):
        SplitConfig(strategy="time", valid_start="2024-01-01")


# ---------------------------------------------------------------- properties on random logs
PER_USER = [SplitConfig(), SplitConfig(strategy="leave_last"),
            SplitConfig(valid_fraction=0.3, test_fraction=0.2, min_interactions=4)]
ALL = [*PER_USER, time_cfg(10, 22)]


@pytest.mark.parametrize("cfg", PER_USER, ids=lambda c: c.strategy)
@pytest.mark.parametrize("seed", [0, 1])
def test_no_leakage_per_user(cfg: SplitConfig, seed: int) -> None:
    """For every user, train's latest ts <= valid's earliest, valid's latest <= test's
    earliest: no part holds an event later than one of a part after it (events at one
    time may fall either side)."""
    parts = split(random_log(seed), cfg)
    labelled = pd.concat([parts[p].assign(part=i) for i, p in enumerate(PARTS)],
                         ignore_index=True)
    assert not labelled.duplicated([S.USER, S.ITEM]).any()
    bounds = labelled.groupby([S.USER, "part"])[S.TS].agg(["min", "max"]).unstack("part")
    for earlier, later in ((0, 1), (1, 2), (0, 2)):
        both = bounds[("max", earlier)].notna() & bounds[("min", later)].notna()
        assert (bounds.loc[both, ("max", earlier)] <= bounds.loc[both, ("min", later)]).all()
    # every user with n >= min_interactions has at least one row in each part
    n = labelled.groupby(S.USER).size()
    has = labelled.groupby(S.USER)["part"].nunique()
    assert (has[n >= cfg.min_interactions] == 3).all()
    assert (has[n < cfg.min_interactions] == 1).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_no_leakage_time(seed: int) -> None:
    cfg = time_cfg(10, 22)
    parts = split(random_log(seed), cfg)
    valid_start, test_start = pd.Timestamp(cfg.valid_start), pd.Timestamp(cfg.test_start)
    assert (parts["train"][S.TS] < valid_start).all()
    assert parts["valid"][S.TS].between(valid_start, test_start, inclusive="left").all()
    assert (parts["test"][S.TS] >= test_start).all()
    assert all(len(parts[p]) for p in PARTS)


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: c.strategy)
def test_union_of_parts_is_the_deduplicated_input(cfg: SplitConfig) -> None:
    df = random_log(seed=5)
    parts = split(df, cfg)
    union = pd.concat([parts[p] for p in PARTS], ignore_index=True)
    assert not union.duplicated([S.USER, S.ITEM]).any()
    assert len(union) < len(df)  # the random log really had duplicates
    pd.testing.assert_frame_equal(canonical(union), canonical(naive_dedup(df)))
    assert list(union.columns) == list(df.columns)
    assert union[S.TS].dtype == df[S.TS].dtype


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: c.strategy)
def test_same_input_shuffled_gives_the_same_split(cfg: SplitConfig) -> None:
    # no two rows share (user, item, ts), where only log order could choose between them
    df = random_log(seed=7).drop_duplicates([S.USER, S.ITEM, S.TS]).reset_index(drop=True)
    expected = split(df, cfg)
    for seed in (1, 2):
        shuffled = df.sample(frac=1.0, random_state=seed)
        shuffled.index = np.random.default_rng(seed).permutation(len(shuffled)) + 10_000
        got = split(shuffled, cfg)
        for p in PARTS:
            pd.testing.assert_frame_equal(got[p], expected[p])
    # and running twice on the same input changes nothing
    again = split(df, cfg)
    for p in PARTS:
        pd.testing.assert_frame_equal(again[p], expected[p])


def test_split_does_not_modify_its_input() -> None:
    df = random_log(seed=9, n_users=20)
    before = df.copy()
    split(df, SplitConfig())
    pd.testing.assert_frame_equal(df, before)


def test_a_split_with_nothing_held_out_stops_with_a_clear_error() -> None:
    """One item, or no user with enough events: a DataError saying why at the split,
    not a numpy error deep inside recall (as a one-item log gave)."""
    from pipeline.schema import DataError
    from pipeline.splitting import require_held_out

    parts = split(log([(u, 1, float(u)) for u in range(5)]), SplitConfig())
    with pytest.raises(DataError, match="catalogue holds 1 item"):
        require_held_out(parts, SplitConfig(), 1)
    with pytest.raises(DataError, match=r"valid and test part\(s\) are empty.*most any user "
                                        r"has is 1"):
        require_held_out(parts, SplitConfig(), 3)
    require_held_out(split(user_log(10), SplitConfig()), SplitConfig(), 10)  # fine
