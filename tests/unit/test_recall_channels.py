"""One contract test run over every recall channel on data with a planted answer.

Two blocks of users each use only their own block of items (a checkerboard). A channel
that learns structure must recommend the user's own block; every channel must exclude
seen items, give identical results for batch and single users, and round-trip save/load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from models.base import top_k
from models.recall import CHANNELS, channel_class
from models.recall.cooccurrence import CooccurrenceChannel, prune_rows
from models.recall.popularity import PopularityChannel


def checkerboard(n_users: int = 40, n_items: int = 20, seed: int = 0) -> sp.csr_matrix:
    """Users in the first half use items of the first half, and so on; ~60% density."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_users, n_items), np.float32)
    half_u, half_i = n_users // 2, n_items // 2
    dense[:half_u, :half_i] = rng.random((half_u, half_i)) < 0.6
    dense[half_u:, half_i:] = rng.random((n_users - half_u, n_items - half_i)) < 0.6
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_contract_excludes_seen_batches_and_round_trips(name: str, tmp_path: Path) -> None:
    history = checkerboard()
    channel = channel_class(name)().fit(history)
    top = channel.retrieve(history, k=8)
    seen = history.toarray() > 0
    for u in range(history.shape[0]):
        got = top.items[u][top.items[u] >= 0]
        assert not seen[u, got].any(), "a seen item was retrieved"
        assert np.all(np.diff(top.scores[u][top.items[u] >= 0]) <= 0), "not sorted by score"
    single = np.vstack([channel.retrieve(history[u:u + 1], k=8).items for u in range(5)])
    np.testing.assert_array_equal(single, top.items[:5])
    chunked = channel.retrieve(history, k=8, chunk=3)
    np.testing.assert_array_equal(chunked.items, top.items)
    channel.save(tmp_path / name)
    loaded = channel_class(name).load(tmp_path / name)
    np.testing.assert_array_equal(loaded.retrieve(history, k=8).items, top.items)


def test_cooccurrence_recovers_the_planted_blocks() -> None:
    history = checkerboard()
    top = CooccurrenceChannel().fit(history).retrieve(history, k=3)
    half_u, half_i = 20, 10
    own_block = np.where(np.arange(40)[:, None] < half_u, top.items < half_i, top.items >= half_i)
    assert own_block[top.items >= 0].all()


def test_cooccurrence_cosine_by_hand() -> None:
    # users: u0 {0,1}, u1 {0,1}, u2 {1,2}: U0 = {u0,u1}, U1 = {u0,u1,u2}, U2 = {u2}
    history = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], np.float32))
    channel = CooccurrenceChannel().fit(history)
    s01, s12 = 2 / np.sqrt(2 * 3), 1 / np.sqrt(3 * 1)
    expected = np.array([[0, s01, 0], [s01, 0, s12], [0, s12, 0]])
    np.testing.assert_allclose(channel.similarity.toarray(), expected, rtol=1e-6)
    # user {0} scores item 1 with s(0,1); item 2 was never co-used with 0: not retrieved
    top = channel.retrieve(sp.csr_matrix(np.array([[1, 0, 0]], np.float32)), k=3)
    assert top.items[0].tolist() == [1, -1, -1]
    np.testing.assert_allclose(top.scores[0][0], s01, rtol=1e-6)


def test_prune_rows_keeps_best_per_row_with_index_tiebreak() -> None:
    m = sp.csr_matrix(np.array([[0.1, 0.5, 0.5, 0.2], [0.0, 0.0, 0.3, 0.0]], np.float32))
    pruned = prune_rows(m, 2).toarray()
    np.testing.assert_allclose(pruned, [[0, 0.5, 0.5, 0], [0, 0, 0.3, 0]], rtol=1e-6)


def test_popularity_ranks_by_user_count_and_skips_unused_items() -> None:
    history = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0]], np.float32))
    top = PopularityChannel().fit(history).retrieve(sp.csr_matrix((1, 4), dtype=np.float32), 4)
    assert top.items[0].tolist() == [0, 1, 2, -1]  # ties (1 and 2) by item index
    np.testing.assert_array_equal(top.scores[0][:3], [3, 1, 1])


def test_top_k_ties_and_padding() -> None:
    scores = np.array([[1.0, 3.0, 3.0, -np.inf]], np.float32)
    top = top_k(scores, 6)
    assert top.items[0].tolist() == [1, 2, 0, -1, -1, -1]


def test_unknown_channel_name_fails_loudly() -> None:
    with pytest.raises(KeyError, match="known"):
        channel_class("bogus")
