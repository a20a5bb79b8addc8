"""One contract test run over every recall channel on data with a planted answer.

Two blocks of users each use only their own block of items (a checkerboard). A channel
that learns structure must recommend the user's own block; every channel must exclude
seen items, give identical results for batch and single users, and round-trip save/load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models.base import RecallChannel, TopK, sparse_row_ranks, top_k, top_k_sparse
from models.recall import CHANNELS, channel_class
from models.recall.cooccurrence import CooccurrenceChannel, prune_rows
from models.recall.geography import GeographyChannel
from models.recall.popularity import PopularityChannel, TrendingChannel
from models.recall.preference import PreferenceChannel
from tests.conftest import recall_data_from_matrix


def checkerboard(n_users: int = 40, n_items: int = 20, seed: int = 0) -> np.ndarray:
    """Users in the first half use items of the first half, and so on; ~60% density."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_users, n_items), np.float32)
    half_u, half_i = n_users // 2, n_items // 2
    dense[:half_u, :half_i] = rng.random((half_u, half_i)) < 0.6
    dense[half_u:, half_i:] = rng.random((n_users - half_u, n_items - half_i)) < 0.6
    dense[:, 0] = 0
    dense[0, 0] = 1  # one user, one rare item: every user keeps at least one item
    return dense


def checkerboard_data(dense: np.ndarray):
    """The checkerboard with side tables that agree with it: each block of items has its
    own category and tags, each block of users its own region."""
    n_users, n_items = dense.shape
    block_i = np.where(np.arange(n_items) < n_items // 2, "a", "b")
    block_u = np.where(np.arange(n_users) < n_users // 2, "a", "b")
    items = pd.DataFrame({"item_id": np.arange(n_items), "title": [f"t{j}" for j in range(n_items)],
                          "category": block_i, "tags": [[f"{b}1", f"{b}2"] for b in block_i]})
    users = pd.DataFrame({"user_id": np.arange(n_users), "region": block_u})
    return recall_data_from_matrix(dense, items=items, users=users)


STRUCTURED = ["cooccurrence", "preference", "geography"]
SMALL = {"sequence": {"epochs": 3, "d": 16}}  # the contract, not the model, is under test


def assert_same_ranking(expected, got, tol: float = 1e-5) -> None:
    """Same scores rank by rank; items may differ only among scores tied within ``tol``
    (float noise between an index search and a dense product reorders near-ties)."""
    np.testing.assert_allclose(got.scores, expected.scores, rtol=tol, atol=tol)
    s = expected.scores
    padded = np.pad(s, ((0, 0), (1, 1)), constant_values=np.nan)
    distinct = ~(np.isclose(s, padded[:, :-2], rtol=tol, atol=tol)
                 | np.isclose(s, padded[:, 2:], rtol=tol, atol=tol))
    distinct[:, -1] = False  # the last place may tie with the first item left out
    np.testing.assert_array_equal(got.items[distinct], expected.items[distinct])


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_contract_excludes_seen_batches_and_round_trips(name: str, tmp_path: Path) -> None:
    dense = checkerboard()
    data = checkerboard_data(dense)
    users = np.arange(dense.shape[0])
    channel = channel_class(name)(**SMALL.get(name, {})).fit(data)
    top = channel.retrieve(data, users, k=8)
    seen = dense > 0
    for u in users:
        got = top.items[u][top.items[u] >= 0]
        assert not seen[u, got].any(), "a seen item was retrieved"
        assert np.all(np.diff(top.scores[u][top.items[u] >= 0]) <= 0), "not sorted by score"
    generic = RecallChannel.retrieve(channel, data, users, k=8)  # dense scores, then top-k
    assert_same_ranking(generic, top)
    singles = [channel.retrieve(data, users[u:u + 1], k=8) for u in range(5)]
    assert_same_ranking(TopK(top.items[:5], top.scores[:5]),
                        TopK(np.vstack([t.items for t in singles]),
                             np.vstack([t.scores for t in singles])))
    assert_same_ranking(top, channel.retrieve(data, users, k=8, chunk=3))
    channel.save(tmp_path / name)
    loaded = channel_class(name).load(tmp_path / name)
    assert_same_ranking(top, loaded.retrieve(data, users, k=8))


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


def test_top_k_sparse_matches_dense_top_k() -> None:
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((30, 50)) < 0.2, rng.integers(1, 5, (30, 50)), 0).astype(
        np.float32)  # small integers: plenty of ties
    expected = top_k(np.where(dense > 0, dense, -np.inf), 7)
    got = top_k_sparse(sp.csr_matrix(dense), 7)
    np.testing.assert_array_equal(got.items, expected.items)
    np.testing.assert_array_equal(got.scores, expected.scores)


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
