"""Each ranker feature on a hand-made log where the right value is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.candidate_features import (
    FEATURES,
    FeatureContext,
    UserContexts,
    _recent_cut,
    model_scores,
    request_ranks,
)
from models.base import RecallChannel, SparseScoreChannel
from tests.conftest import recall_data_from_matrix

DAY = 86_400


@pytest.fixture
def data():
    """u0 took i0 (day 0) and i1 (day 2); u1 took i1 (day 1) and i2 (day 3); u2 is cold.
    Categories a, a, b, none; tags [x], [x, y], [y], []; i3 was created on day 1."""
    dense = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    ts = np.array([[0, 2, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]) * DAY
    items = pd.DataFrame({"item_id": range(4), "title": list("abcd"),
                          "category": ["a", "a", "b", None],
                          "tags": [["x"], ["x", "y"], ["y"], []],
                          "created_ts": pd.to_datetime([None, None, None, DAY], unit="s")})
    users = pd.DataFrame({"user_id": range(3), "region": ["n", "s", "n"]})
    return recall_data_from_matrix(dense, ts=ts, items=items, users=users)


def features_of(data, pairs: list[tuple[int, int]], recent_share: float = 0.5) -> pd.DataFrame:
    users, items = (np.array(x) for x in zip(*pairs, strict=True))
    return FeatureContext(data, recent_share).compute(users, items)


def test_user_activity_and_recency(data) -> None:
    f = features_of(data, [(0, 2), (1, 0), (2, 0)])
    np.testing.assert_array_equal(f["user_events"], [2, 2, 0])
    np.testing.assert_array_equal(f["user_days_since_last"], [1, 0, np.nan])  # now = day 3
    np.testing.assert_array_equal(f["user_days_active"], [2, 2, np.nan])


def test_item_popularity_all_time_recent_and_regional(data) -> None:
    f = features_of(data, [(0, 0), (0, 1), (1, 2), (2, 1), (1, 0), (0, 3)])
    np.testing.assert_array_equal(f["item_popularity"], np.array([1, 2, 1, 2, 1, 0]) / 4)
    # the latest half of the events (ts >= 1.5 days): u0-i1 on day 2 and u1-i2 on day 3
    np.testing.assert_array_equal(f["item_recent_popularity"], [0, .5, .5, .5, 0, 0])
    np.testing.assert_array_equal(f["item_recent_share"], [0, 0.5, 1, 0.5, 0, 0])
    # region n (u0, u2) took i0 and i1 once each (2 events); region s (u1) i1 and i2
    np.testing.assert_array_equal(f["item_region_popularity"], [.5, .5, .5, .5, 0, 0])


def test_item_age_prefers_the_creation_date_and_falls_back_to_first_sight(data) -> None:
    f = features_of(data, [(0, 0), (0, 1), (0, 3)])
    np.testing.assert_array_equal(f["item_age_days"], [3, 2, 2])  # i3: created day 1
    np.testing.assert_array_equal(f["item_days_since_last"], [3, 1, np.nan])


def test_an_item_created_after_the_cut_off_has_no_age(data) -> None:
    data.items.loc[3, "created_ts"] = pd.Timestamp(5 * DAY, unit="s")  # now is day 3
    assert np.isnan(features_of(data, [(0, 3)])["item_age_days"]).all()


def test_category_and_tag_affinity_are_shares_of_the_users_history(data) -> None:
    f = features_of(data, [(0, 0), (0, 2), (1, 0), (1, 1), (2, 1), (0, 3)])
    np.testing.assert_allclose(f["category_affinity"], [1, 0, 0.5, 0.5, 0, 0])
    # u1's tag profile: i1 gives x .25, y .25; i2 gives y .5 -> x .25, y .75;
    # i1's tags weigh .5 each -> .125 + .375. u0: x .5 + .25, y .25 -> i0 (x only): .75
    np.testing.assert_allclose(f["tag_affinity"], [0.75, 0.25, 0.25, 0.5, 0, 0])


def test_context_matches_the_users_busiest_slot(data) -> None:
    f = features_of(data, [(0, 0), (0, 1), (1, 1), (2, 0), (0, 3)])
    np.testing.assert_array_equal(f["hour_match"], [1, 1, 1, np.nan, 0])  # all at 00:00
    # weekdays: day 0 Thu, 1 Fri, 2 Sat, 3 Sun; u0 ties Thu/Sat -> Thu; u1 ties Fri/Sun -> Fri
    np.testing.assert_array_equal(f["weekday_match"], [1, 0, 0.5, np.nan, 0])


def test_a_source_without_attributes_gives_missing_not_zero_evidence() -> None:
    bare = recall_data_from_matrix(np.array([[1, 0], [0, 1]]))
    f = FeatureContext(bare).compute(np.array([0, 1]), np.array([1, 0]))
    assert f[["item_region_popularity", "category_affinity", "tag_affinity"]].isna().all().all()


class _Dense(RecallChannel):
    name = "dense"

    def fit(self, data, held_out=None):
        return self

    def score(self, data, users):
        table = np.array([[0.5, -np.inf, 2.0], [1.0, 3.0, -np.inf]], np.float32)
        return table[users]

    def save(self, folder):
        pass

    @classmethod
    def load(cls, folder):
        return cls()


class _Sparse(SparseScoreChannel, _Dense):
    name = "sparse"

    def score_sparse(self, data, users):
        return sp.csr_matrix(np.array([[0.0, 0.2, 0.0], [0.7, 0.0, 0.1]])[users])


def test_model_scores_gather_each_pair_and_mark_unscored_ones_missing() -> None:
    data = recall_data_from_matrix(np.eye(2, 3))
    got = model_scores({"d": _Dense(), "s": _Sparse()}, data, np.array([1, 0, 1, 0]),
                       np.array([1, 1, 2, 2]))
    np.testing.assert_array_equal(got["d_model_score"], [3.0, np.nan, np.nan, 2.0])
    np.testing.assert_allclose(got["s_model_score"], [np.nan, 0.2, 0.1, np.nan])


def test_request_ranks_count_within_each_request_best_first() -> None:
    frame = pd.DataFrame({"user_id": [7, 7, 7, 9, 9], "s": [0.1, 0.9, np.nan, 2.0, 2.0]})
    got = request_ranks(frame, "user_id", ["s"])["s_request_rank"]
    np.testing.assert_array_equal(got, [2, 1, np.nan, 1, 1])


def test_every_feature_is_defined_once_with_its_meaning(data) -> None:
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names)) and all(f.meaning for f in FEATURES)
    computed = features_of(data, [(0, 0)]).columns
    assert set(computed) <= set(names), set(computed) - set(names)


def test_excluded_features_leave_the_rankers_columns_and_a_typo_is_refused() -> None:
    from pipeline.stages.features import without_excluded

    columns = {"recommendation": ["fm_score", "ffm_score", "item_popularity"],
               "search": ["fm_score", "query_match"]}
    assert without_excluded(columns, ["fm_score", "query_match"]) == {
        "recommendation": ["ffm_score", "item_popularity"], "search": []}
    assert without_excluded(columns, []) == columns
    with pytest.raises(ValueError, match=r"\['fm_scor'\], which are not features"):
        without_excluded(columns, ["fm_scor", "ffm_score"])


def same_statistics(got: FeatureContext, want: FeatureContext) -> None:
    """Every statistic of two contexts equal, bit for bit (sparse ones as dense)."""
    assert vars(got).keys() == vars(want).keys()
    for name, value in vars(want).items():
        if sp.issparse(value):
            np.testing.assert_array_equal(getattr(got, name).toarray(), value.toarray(), name)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(got, name), value, name)
        elif name != "data":
            assert getattr(got, name) == value, name


@pytest.mark.parametrize("case", ["held and new items", "a cold user", "older than the log",
                                  "a random log"])
def test_a_users_new_events_update_the_statistics_as_a_refit_would(data, case) -> None:
    if case == "a random log":  # enough events for the recent cut to move
        rng = np.random.default_rng(5)
        dense = rng.random((30, 20)) < 0.3
        regions = rng.choice(["n", "s", None], 30).tolist()
        data = recall_data_from_matrix(
            dense, ts=rng.integers(0, 40 * DAY, dense.shape),
            users=pd.DataFrame({"user_id": range(30), "region": regions}))
    user, items, ts = {
        "held and new items": (0, [1, 3, 3, 2], [data.now + 5, data.now + 7 * 3600,
                                                 data.now + 9, 1 * DAY]),
        "a cold user": (2, [0, 3], [data.now + DAY // 2, data.now + DAY // 3]),
        "older than the log": (1, [0], [0]),
        "a random log": (7, [4, 11, 4, 19, 0], [data.now + 1, 3 * DAY, 17 * DAY,
                                                 data.now + 100_000, 0]),
    }[case]
    items, ts = np.array(items), np.array(ts)
    context = FeatureContext(data, 0.5)
    newer = data.with_events(user, items, ts)
    updated = UserContexts(context, newer, {user: (items, ts)})
    refit = FeatureContext(newer, 0.5)
    pairs = np.arange(data.n_items)
    users = np.full(len(pairs), user)
    pd.testing.assert_frame_equal(updated.compute(users, pairs), refit.compute(users, pairs),
                                  check_exact=True)
    same_statistics(context, FeatureContext(data, 0.5))  # the publication's is untouched


def test_request_ranks_equal_pandas_grouped_min_ranks() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    frame = pd.DataFrame({
        "case_id": rng.integers(0, 80, n),
        "ties": rng.integers(0, 6, n).astype(np.float64),
        "holes": np.where(rng.random(n) < 0.2, np.nan, rng.choice([0.0, -0.0, 1.0, np.inf], n)),
        "fm": rng.random(n).astype(np.float32)})  # model scores float64, FM's float32
    columns = ["ties", "holes", "fm"]
    grouped = frame.groupby("case_id", sort=False)
    want = pd.DataFrame({f"{c}_request_rank": grouped[c].rank(ascending=False, method="min")
                         for c in columns}, index=frame.index)
    pd.testing.assert_frame_equal(request_ranks(frame, "case_id", columns), want,
                                  check_exact=True)
    assert request_ranks(frame.iloc[:0], "case_id", columns).shape == (0, 3)


def test_the_recent_cut_is_numpys_quantile_of_the_event_times_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    for _ in range(3000):
        n, n_items = int(rng.integers(1, 60)), int(rng.integers(1, 40))
        times = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + rng.integers(1, 10**6), n))
        keys = np.sort(times * n_items + rng.integers(0, n_items, n))
        q = float(rng.choice([0.9, 0.5, 0.0, 1.0, 0.95, 0.999, rng.random()]))
        assert _recent_cut(keys, n_items, q) == np.quantile(times, q), (n, q)


def test_user_contexts_featurise_each_user_with_their_own_statistics() -> None:
    """Requests answered together: each clicking user's rows get the statistics of the
    data with their own clicks only, every other user's the publication's, in row order."""
    rng = np.random.default_rng(9)
    dense = rng.random((12, 15)) < 0.4
    data = recall_data_from_matrix(dense, ts=rng.integers(0, 40 * DAY, dense.shape))
    base = FeatureContext(data, 0.5)
    clicks = {3: ([0, 4], [data.now + 5, data.now + 5]), 8: ([4], [data.now + 5])}
    merged = data.with_events(np.repeat(list(clicks), [len(i) for i, _ in clicks.values()]),
                              np.concatenate([i for i, _ in clicks.values()]),
                              np.concatenate([t for _, t in clicks.values()]))
    contexts = UserContexts(base, merged, {user: (np.array(items), np.array(ts))
                                           for user, (items, ts) in clicks.items()})
    users = rng.permutation(np.repeat([3, 5, 8], 15))
    items = rng.integers(0, 15, len(users))
    got = contexts.compute(users, items)
    for user in (3, 5, 8):
        rows = np.flatnonzero(users == user)
        alone = data.with_events(user, *map(np.array, clicks[user])) if user in clicks else data
        want = FeatureContext(alone, 0.5).compute(users[rows], items[rows])
        pd.testing.assert_frame_equal(got.iloc[rows].reset_index(drop=True), want,
                                      check_exact=True)


@pytest.mark.parametrize("seed", range(6))
def test_clicks_answered_together_equal_each_users_refit_on_random_logs(seed) -> None:
    """Old and new times (the recent cut moves either way; each user's clock its own),
    repeated and unseen items, regions, a user with no region: each clicking user's
    every pair as its own refit."""
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(8, 20)), int(rng.integers(5, 25))
    dense = rng.random((n_users, n_items)) < 0.3
    dense[0, 0] = True
    users_table = pd.DataFrame({"user_id": range(n_users),
                                "region": rng.choice(["n", "s", None], n_users).tolist()})
    data = recall_data_from_matrix(dense, ts=rng.integers(0, 30 * DAY, dense.shape),
                                   users=users_table)
    base = FeatureContext(data, float(rng.choice([0.1, 0.3, 0.5])))
    clicking = rng.choice(n_users, int(rng.integers(1, 4)), replace=False)
    clicks = {}
    for user in clicking:
        n = int(rng.integers(1, 5))
        clicks[int(user)] = (rng.integers(0, n_items, n), rng.integers(0, data.now + 2 * DAY, n))
    merged = data.with_events(np.repeat(list(clicks), [len(i) for i, _ in clicks.values()]),
                              np.concatenate([i for i, _ in clicks.values()]),
                              np.concatenate([t for _, t in clicks.values()]))
    contexts = UserContexts(base, merged, clicks)
    users = np.repeat(np.arange(n_users), n_items)
    items = np.tile(np.arange(n_items), n_users)
    got = contexts.compute(users, items)
    for user in range(n_users):
        rows = np.flatnonzero(users == user)
        if user in clicks:
            want = FeatureContext(data.with_events(user, *clicks[user]), base.recent_share)
        else:
            want = base
        pd.testing.assert_frame_equal(got.iloc[rows].reset_index(drop=True),
                                      want.compute(users[rows], items[rows]),
                                      check_exact=True, obj=f"user {user}")
