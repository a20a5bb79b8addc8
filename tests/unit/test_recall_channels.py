"""Every recall channel run through the shared contract (``recall_contract.py``), then
each channel's own behaviour on hand-made cases, and the shared top-k helpers.

A channel's contract test is a few lines: a subclass of ``RecallChannelContract`` whose
``make_channel()`` returns a small instance (the contract, not the model, is under test).
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.base import (
    HeldOut,
    NotFittedError,
    held_out_sample,
    remembered,
    scores_remembered,
    sparse_row_ranks,
    top_k,
    top_k_sparse,
)
from models.recall import CHANNELS, channel_class
from models.recall.cooccurrence import CooccurrenceChannel
from models.recall.ease import EaseChannel
from models.recall.embedding import EmbeddingChannel
from models.recall.geography import GeographyChannel
from models.recall.inverted_index import InvertedIndexChannel
from models.recall.popularity import PopularityChannel, TrendingChannel
from models.recall.preference import PreferenceChannel
from models.recall.sequence import SequenceChannel
from models.recall.text_embedding import TextEmbeddingChannel
from models.recall.weights import (
    _prune_near_bound,
    _prune_ranked,
    half_life,
    prune_rows,
    seed_weights,
)
from tests.conftest import recall_data_from_matrix
from tests.unit.recall_contract import RecallChannelContract, checkerboard, checkerboard_data

STRUCTURED = ["cooccurrence", "preference", "geography"]


class TestPopularity(RecallChannelContract):
    def make_channel(self) -> PopularityChannel:
        return PopularityChannel()


class TestTrending(RecallChannelContract):
    def make_channel(self) -> TrendingChannel:
        return TrendingChannel(half_life_days=1e-4)  # ts are seconds here: a real decay


class TestCooccurrence(RecallChannelContract):
    def make_channel(self) -> CooccurrenceChannel:
        return CooccurrenceChannel(neighbours=5, recent_items=2)


class TestPreference(RecallChannelContract):
    def make_channel(self) -> PreferenceChannel:
        return PreferenceChannel(items_per_attribute=6, top_attributes=2)


class TestGeography(RecallChannelContract):
    def make_channel(self) -> GeographyChannel:
        return GeographyChannel()


class TestInvertedIndex(RecallChannelContract):
    def make_channel(self) -> InvertedIndexChannel:
        return InvertedIndexChannel(profile_terms=5, dense_df=0.3)


class TestTextEmbedding(RecallChannelContract):
    def make_channel(self) -> TextEmbeddingChannel:
        return TextEmbeddingChannel(dims=4, threads=1)


class TestEmbedding(RecallChannelContract):
    def make_channel(self) -> EmbeddingChannel:
        return EmbeddingChannel(factors=4, regularization=1.0, iterations=3, max_iterations=3,
                                patience=1, tune_k=5, threads=1)

    def check_refit(self, tuned, refit, choice) -> None:
        assert set(choice) == {"iterations"}
        np.testing.assert_array_equal(refit.item_vecs, tuned.item_vecs)  # the same iterations


class TestEase(RecallChannelContract):
    def make_channel(self) -> EaseChannel:
        return EaseChannel(lambda_=2.0, grid=[0.5, 2.0, 8.0, 32.0])

    def check_refit(self, tuned, refit, choice) -> None:
        assert set(choice) == {"lambda_"}
        np.testing.assert_array_equal(refit.weights, tuned.weights)  # the same lambda


class TestSequence(RecallChannelContract):
    def make_channel(self) -> SequenceChannel:
        return SequenceChannel(d=16, blocks=1, max_len=8, max_epochs=3, patience=1, lr=1e-2,
                               batch_size=16, threads=1)

    def check_refit(self, tuned, refit, choice) -> None:
        assert len(refit.history) == choice["epochs"] == refit.tuned()["epochs"]
        assert all("held_out" not in h for h in refit.history), "a refit looks at nothing"


def test_every_registered_channel_runs_the_contract() -> None:
    covered = {cls().make_channel().name for cls in RecallChannelContract.__subclasses__()}
    assert not set(CHANNELS) - covered, f"no contract test for {set(CHANNELS) - covered}"


def test_not_fitted_error_names_the_channel_and_the_way_out() -> None:
    with pytest.raises(RuntimeError, match="^cooccurrence channel is not fitted: call fit"):
        CooccurrenceChannel().retrieve(recall_data_from_matrix(np.eye(2)), np.arange(2), 1)
    assert issubclass(NotFittedError, RuntimeError)


@pytest.mark.parametrize("name", STRUCTURED)
def test_structured_channels_recover_the_planted_blocks(name: str) -> None:
    dense = checkerboard()
    data = checkerboard_data(dense)
    top = channel_class(name)().fit(data).retrieve(data, np.arange(40), k=3)
    assert (top.items >= 0).sum() > 40, "retrieved almost nothing"
    half_u, half_i = 20, 10
    own_block = np.where(np.arange(40)[:, None] < half_u, top.items < half_i, top.items >= half_i)
    assert own_block[top.items >= 0].all()


def test_cooccurrence_similarity_by_hand() -> None:
    # users: u0 {0,1}, u1 {0,1}, u2 {1,2}: U0 = {u0,u1}, U1 = {u0,u1,u2}, U2 = {u2};
    # each user has 2 items, so each co-use weighs w = 1 / log2(3) under IUF.
    dense = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]])
    data = recall_data_from_matrix(dense)
    w = 1 / np.log2(3)
    s01, s12 = 2 * w / np.sqrt(2 * 3), 1 * w / np.sqrt(3 * 1)
    channel = CooccurrenceChannel(recent_items=0).fit(data)
    expected = np.array([[0, s01, 0], [s01, 0, s12], [0, s12, 0]])
    np.testing.assert_allclose(channel.similarity.toarray(), expected, rtol=1e-6)
    plain = CooccurrenceChannel(iuf=False).fit(data).similarity.toarray()
    np.testing.assert_allclose(plain, expected / w, rtol=1e-6)


def test_cooccurrence_recent_items_weigh_more() -> None:
    # Items 0-1 co-occur, items 2-3 co-occur. The user had 0 long ago and 2 just now.
    dense = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 0, 1, 0]])
    ts = np.zeros_like(dense)
    ts[4] = [0, 0, 100 * 86_400, 0]
    ts[:4] = 50 * 86_400
    data = recall_data_from_matrix(dense, ts=ts)
    user = np.array([4])
    plain = CooccurrenceChannel(recent_items=0).fit(data).retrieve(data, user, 2)
    assert plain.scores[0, 0] == plain.scores[0, 1]  # both seeds count the same
    recent = CooccurrenceChannel(recent_items=1, recent_weight=1.0).fit(data)
    assert recent.retrieve(data, user, 2).items[0].tolist() == [3, 1]
    decayed = CooccurrenceChannel(recent_items=0, half_life_days=10).fit(data)
    assert decayed.retrieve(data, user, 2).items[0].tolist() == [3, 1]


def test_prune_rows_keeps_best_per_row_with_index_tiebreak() -> None:
    m = sp.csr_matrix(np.array([[0.1, 0.5, 0.5, 0.2], [0.0, 0.0, 0.3, 0.0]], np.float32))
    pruned = prune_rows(m, 2).toarray()
    np.testing.assert_allclose(pruned, [[0, 0.5, 0.5, 0], [0, 0, 0.3, 0]], rtol=1e-6)


def by_hand_prune(m: sp.csr_matrix, keep: int) -> np.ndarray:
    """Each row's stored entries sorted by (value descending, column), the first kept."""
    out = np.zeros(m.shape)
    for r in range(m.shape[0]):
        row = m[r]
        best = sorted(zip(row.indices, row.data, strict=True), key=lambda e: (-e[1], e[0]))
        for col, value in best[:keep]:
            out[r, col] = value
    return out


@pytest.mark.parametrize("seed", range(16))
def test_prune_rows_both_paths_keep_the_same_entries_as_sorting_by_hand(seed: int) -> None:
    """Crowded positive rows go through the histogram bound, others are ranked whole:
    the two give the very same matrix, ties (few distinct values) included."""
    rng = np.random.default_rng(seed)
    n_rows, n_cols = int(rng.integers(1, 12)), int(rng.integers(1, 2500))
    m = sp.random(n_rows, n_cols, density=rng.uniform(0.05, 1.0), format="csr",
                  random_state=seed, dtype=np.float64 if seed % 4 == 3 else np.float32)
    if seed % 2:
        m.data = rng.choice([0.25, 1.0, 1.5, 7.0], size=m.nnz).astype(m.dtype)
    keep = int(rng.integers(1, 80))
    ranked, near = _prune_ranked(m.copy(), keep), _prune_near_bound(m.copy(), keep)
    for part in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(near, part), getattr(ranked, part))
    assert near.dtype == ranked.dtype == m.dtype
    np.testing.assert_array_equal(prune_rows(m, keep).toarray(), by_hand_prune(m, keep))


def test_prune_rows_ranks_zero_and_negative_entries_too() -> None:
    m = sp.random(3, 2000, density=0.5, format="csr", random_state=1, dtype=np.float32)
    m.data[::5] = -m.data[::5]
    m.data[::7] = 0.0  # stored zeros stay entries
    np.testing.assert_array_equal(prune_rows(m, 1200).toarray(), by_hand_prune(m, 1200))


def test_seed_weights_decay_by_age_add_recent_and_sum_repeats() -> None:
    day = 86_400
    # user 0: item 1 twenty days before the cut-off, item 0 at it; user 1 is cold
    dense = np.array([[1, 1, 0], [0, 0, 0]])
    ts = np.array([[20 * day, 0, 0], [0, 0, 0]])
    data = recall_data_from_matrix(dense, ts=ts)
    users = np.array([0, 1])
    decayed = seed_weights(data, users, 10.0 * day, recent_items=0, recent_weight=0.0,
                           long_weight=2.0).toarray()
    np.testing.assert_allclose(decayed, [[2.0, 2.0 * 0.25, 0], [0, 0, 0]], rtol=1e-6)
    recent = seed_weights(data, users, 0.0, recent_items=1, recent_weight=3.0,
                          long_weight=1.0).toarray()
    np.testing.assert_allclose(recent, [[4.0, 1.0, 0], [0, 0, 0]])


@pytest.mark.parametrize("unit", [1, 86_400, 20 * 365 * 86_400 // 30])
def test_half_lives_as_shares_of_the_span_look_the_same_on_any_time_scale(unit: int) -> None:
    """A log of 30 units (seconds, days, or two decades): the default half-lives are
    shares of its span, so the weights are the same and never underflow; days set by
    hand still win."""
    dense = np.array([[1, 1, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0]])
    ts = np.array([[0, 15 * unit, 30 * unit, 0], [0, 0, 0, 30 * unit], [0, 0, 0, 0]])
    items = pd.DataFrame({"item_id": range(4), "title": list("abcd"), "category": list("xxyy")})
    data = recall_data_from_matrix(dense, ts=ts, items=items)
    assert data.span == 30 * unit
    assert half_life(data, None, 0.1) == 3 * unit
    assert half_life(data, 2.0, 0.1) == 2 * 86_400
    weights = seed_weights(data, np.array([0, 1]), half_life(data, None, 0.1), 0, 0.0,
                           1.0).toarray()
    np.testing.assert_allclose(weights, [[2.0 ** -10, 2.0 ** -5, 1, 0], [2.0 ** -10, 0, 0, 1]],
                               rtol=1e-6)
    for channel in (PreferenceChannel(), PreferenceChannel(half_life_days=1.0)):
        scores = channel.fit(data).score(data, np.array([0, 1, 2]))  # user 2's are all old
        assert not np.isnan(scores).any() and np.isfinite(scores[2, [0, 1]]).all()
        channel.retrieve(data, np.array([0, 1, 2]), 4)  # the shared checks pass
    trend = TrendingChannel().fit(data).counts
    np.testing.assert_allclose(trend, [2 * 2.0 ** -10, 2.0 ** -5 + 2.0 ** -10, 1, 1], rtol=1e-5)


def test_popularity_ranks_by_user_count_and_skips_unused_items() -> None:
    dense = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    data = recall_data_from_matrix(dense)
    top = PopularityChannel().fit(data).retrieve(data, np.array([3]), 4)
    assert top.items[0].tolist() == [0, 1, 2, -1]  # ties (1 and 2) by item index
    np.testing.assert_array_equal(top.scores[0][:3], [3, 1, 1])


def test_trending_prefers_recent_events() -> None:
    dense = np.array([[1, 1], [1, 0], [0, 1]])
    ts = np.array([[0, 30 * 86_400], [0, 0], [0, 30 * 86_400]])
    data = recall_data_from_matrix(dense, ts=ts)
    cold = np.array([0])
    assert PopularityChannel().fit(data).score(data, cold)[0].tolist() == [2, 2]
    trend = TrendingChannel(half_life_days=7).fit(data).score(data, cold)[0]
    np.testing.assert_allclose(trend, [2 * 2 ** (-30 / 7), 2], rtol=1e-5)


def test_top_k_ties_and_padding() -> None:
    scores = np.array([[1.0, 3.0, 3.0, -np.inf]], np.float32)
    top = top_k(scores, 6)
    assert top.items[0].tolist() == [1, 2, 0, -1, -1, -1]


def test_top_k_breaks_ties_at_the_cut_off_by_lower_index() -> None:
    scores = np.array([[5.0] + [2.0] * 40 + [7.0]], np.float32)
    assert top_k(scores, 4).items[0].tolist() == [41, 0, 1, 2]
    assert top_k(np.full((3, 100), 1.0, np.float32), 3).items.tolist() == [[0, 1, 2]] * 3


def test_top_k_ranks_scores_as_the_float32_values_it_returns() -> None:
    # 1 + 1e-12 is 1.0 in float32: a tie, listed by lower index, not by the float64 order
    top = top_k(np.array([[1.0, 1.0 + 1e-12, 2.0, -0.0, 0.0]]), 5)
    assert top.items[0].tolist() == [2, 0, 1, 3, 4]
    assert top.scores.dtype == np.float32 and top.scores[0, :3].tolist() == [2.0, 1.0, 1.0]
    assert np.signbit(top.scores[0, 3]) and not np.signbit(top.scores[0, 4])  # kept as given


def test_top_k_equals_a_full_sort_by_score_then_index() -> None:
    """Rows with ties inside and across the cut-off, short rows, and plain ones: the fast
    path (all ties inside the partition) and the redone rows agree with sorting."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, (40, 200)).astype(np.float32)  # many ties
    scores[::3] = rng.standard_normal((14, 200))  # no ties
    scores[5, 7:] = -np.inf  # fewer than k scores
    columns = np.broadcast_to(np.arange(200), scores.shape)
    order = np.lexsort((columns, -scores), axis=1)[:, :20]
    expected = np.where(np.isneginf(np.take_along_axis(scores, order, 1)), -1, order)
    np.testing.assert_array_equal(top_k(scores, 20).items, expected)


def test_unknown_channel_name_fails_loudly() -> None:
    with pytest.raises(KeyError, match="known"):
        channel_class("bogus")


def test_preference_by_hand() -> None:
    # Items 0, 1 are category a; 2, 3 category b. Popularity 3, 1, 2, 1; best of a is 3,
    # best of b is 2, so an item's standing is popularity / best of its category.
    dense = np.array([[1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 1]])
    items = pd.DataFrame({"item_id": range(4), "title": list("wxyz"),
                          "category": ["a", "a", "b", "b"]})
    data = recall_data_from_matrix(dense, items=items)
    channel = PreferenceChannel(half_life_days=0).fit(data)
    only_a = channel.score(data, np.array([0]))[0]  # affinity a = 1
    np.testing.assert_allclose(only_a, [3 / 3, 1 / 3, -np.inf, -np.inf], rtol=1e-6)
    mixed = channel.score(data, np.array([3]))[0]  # affinity a = b = 1/2
    np.testing.assert_allclose(mixed, [0.5 * 3 / 3, 0.5 * 1 / 3, 0.5 * 2 / 2, 0.5 * 1 / 2],
                               rtol=1e-6)
    assert channel.retrieve(data, np.array([3]), 4).items[0].tolist() == [0, 2, -1, -1]


def test_geography_by_hand() -> None:
    dense = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    users = pd.DataFrame({"user_id": range(4), "region": ["r1", "r1", "r2", None]})
    data = recall_data_from_matrix(dense, users=users)
    channel = GeographyChannel().fit(data)
    assert channel.regions == ["r1", "r2"]
    np.testing.assert_array_equal(channel.counts, [[2, 1, 0], [0, 0, 1]])
    top = channel.retrieve(data, np.arange(4), 3).items
    assert top[1].tolist() == [1, -1, -1]  # r1 without the seen item 0
    assert top[2].tolist() == [-1, -1, -1]  # r2 has only the user's own item
    assert top[3].tolist() == [-1, -1, -1]  # no region: nothing (user 3's item is not counted)
    moved = replace(data, users=users.assign(region=["r2", "r1", "r2", "r1"]))
    assert channel.retrieve(moved, np.arange(4), 3).items[3].tolist() == [0, -1, -1]  # now r1
    assert channel.retrieve(data, np.arange(4), 3).items[3].tolist() == [-1, -1, -1]
    sent = pickle.loads(pickle.dumps(channel))  # as the Dask engine scatters it
    assert channel._user_regions is not None and sent._user_regions is None
    np.testing.assert_array_equal(sent.retrieve(data, np.arange(4), 3).items, top)


def test_top_k_sparse_matches_dense_top_k() -> None:
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((30, 50)) < 0.2, rng.integers(1, 5, (30, 50)), 0).astype(
        np.float32)  # small integers: plenty of ties
    expected = top_k(np.where(dense > 0, dense, -np.inf), 7)
    got = top_k_sparse(sp.csr_matrix(dense), 7)
    np.testing.assert_array_equal(got.items, expected.items)
    np.testing.assert_array_equal(got.scores, expected.scores)


def test_top_k_sparse_drops_the_excluded_and_the_non_positive_as_a_dense_mask_would() -> None:
    # negative, zero, signed-zero and tied scores; unsorted columns; an excluded NaN
    # stays listed (as NaN) for check_top_k to stop the channel
    rng = np.random.default_rng(9)
    dense = rng.choice(np.array([-2.0, -0.0, 0.0, 1.0, 2.0, 3.0], np.float32), (30, 50))
    dense[4, 7] = np.nan
    excluded = rng.random((30, 50)) < 0.3
    excluded[4, 7] = True
    scores = sp.csr_matrix(dense)
    scores = sp.csr_matrix((scores.data, scores.indices, scores.indptr), shape=dense.shape)
    perm = rng.permutation(len(scores.data))  # the columns of each row out of order
    for r in range(30):
        lo, hi = scores.indptr[r], scores.indptr[r + 1]
        order = lo + np.argsort(perm[lo:hi])
        scores.indices[lo:hi], scores.data[lo:hi] = scores.indices[order], scores.data[order]
    masked = np.where(excluded | ~(dense > 0), -np.inf, dense)
    masked[4, 7] = np.nan
    expected = top_k(masked, 50)  # deep enough to reach the negatives
    got = top_k_sparse(scores, 50, sp.csr_matrix(excluded), positive=True)
    np.testing.assert_array_equal(got.items, expected.items)
    np.testing.assert_array_equal(got.scores, expected.scores)
    assert got.items[4, 0] == 7 and np.isnan(got.scores[4, 0])


def test_sparse_row_ranks_orders_signed_floats_like_a_lexsort() -> None:
    rng = np.random.default_rng(5)
    values = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 1e-30, 0.5, 3.0, np.inf],
                                 np.float32), size=(40, 60))
    m = sp.csr_matrix(np.where(rng.random((40, 60)) < 0.5, values, 0))
    m.data[::7] = -0.0  # explicit signed zeros, tied with any stored +0.0
    for matrix in (m, m.astype(np.float64)):
        rows, order, rank = sparse_row_ranks(matrix.copy())
        expected = np.lexsort((matrix.indices, -(matrix.data + 0.0), rows))
        np.testing.assert_array_equal(order, expected)
        np.testing.assert_array_equal(rank, np.arange(len(order)) - matrix.indptr[rows[order]])


class Counted:
    """A channel-like object whose scores say which user each row is for."""

    def __init__(self) -> None:
        self.calls = 0

    @remembered
    def score(self, data: object, users: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.asarray(users, np.float32)[:, None] * np.array([[1.0, 10.0]], np.float32)


def test_remembered_scores_are_computed_once_per_data_and_users_in_any_order() -> None:
    counted, data, other = Counted(), object(), object()
    counted.score(data, np.array([3, 1]))
    counted.score(data, np.array([3, 1]))
    assert counted.calls == 2  # nothing is kept outside ``scores_remembered``
    with scores_remembered():
        first = counted.score(data, np.array([3, 1, 2]))
        first[:] = -1  # callers may change what they get
        again = counted.score(data, np.array([1, 2, 3]))
        assert counted.calls == 3
        np.testing.assert_array_equal(again, [[1, 10], [2, 20], [3, 30]])
        np.testing.assert_array_equal(counted.score(data, np.array([2, 3, 1])),
                                      [[2, 20], [3, 30], [1, 10]])
        counted.score(other, np.array([1, 2, 3]))  # other data, other scores
        counted.score(data, np.array([1, 2]))  # other users, other scores
        assert counted.calls == 5
    counted.score(data, np.array([1, 2, 3]))
    assert counted.calls == 6


def test_channels_retrieve_and_score_pairs_alike_with_their_scores_remembered() -> None:
    data = checkerboard_data(checkerboard())
    users = np.array([5, 0, 3])
    items = np.array([1, 2, 7])
    for channel in (CooccurrenceChannel().fit(data), InvertedIndexChannel().fit(data)):
        alone = channel.retrieve(data, users, 4), channel.score_pairs(data, users, items)
        with scores_remembered():
            kept = channel.retrieve(data, users, 4), channel.score_pairs(data, users, items)
        np.testing.assert_array_equal(kept[0].items, alone[0].items)
        np.testing.assert_array_equal(kept[0].scores, alone[0].scores)
        np.testing.assert_array_equal(kept[1], alone[1])


def test_the_held_out_sample_is_the_usable_pairs_of_a_seeded_set_of_users() -> None:
    """What EASE, ALS/BPR and the sequence channel tune on: padding codes left out,
    repeats once, at most ``limit`` users (the same ones for a seed), and only their
    pairs."""
    held = HeldOut(np.array([3, 3, 1, -1, 7, 1, 5, 2]), np.array([4, 4, 0, 2, 1, -1, 9, 9]))
    users, pairs = held_out_sample(held, 10, 10, seed=0)
    assert users.tolist() == [1, 2, 3, 5, 7]
    assert pairs.tolist() == [10, 29, 34, 59, 71]
    picked, kept = held_out_sample(held, 10, 2, seed=0)
    assert len(picked) == 2 and set(picked) <= set(users)
    assert (np.sort(np.unique(kept // 10)) == picked).all()
    assert set(kept) == {p for p in pairs.tolist() if p // 10 in picked}
    again = held_out_sample(held, 10, 2, seed=0)[0]
    assert again.tolist() == picked.tolist()
    assert len({tuple(held_out_sample(held, 10, 2, seed=s)[0]) for s in range(20)}) > 1
    # cells caps users x items: 30 cells of a 10-item catalogue are 3 users
    assert len(held_out_sample(held, 10, None, seed=0, cells=30)[0]) == 3
    assert len(held_out_sample(held, 10, 2, seed=0, cells=30)[0]) == 2
    assert held_out_sample(held, 10, None, seed=0)[0].tolist() == users.tolist()
