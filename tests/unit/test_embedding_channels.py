"""Embedding channels on data with a planted answer.

Matrix factorisation: two blocks of users each use only their own block of items, so a
user's retrievals must come from their own block; the faiss path must agree with the
exact dense path and batch with single users; the same
seed must give the same vectors; held-out pairs choose the iterations, and passing
``tuned()`` back reproduces the chosen model. Text: a query naming an item's rare title
words finds it first; the hand-rebuilt TF-IDF equals scikit-learn's. Save/load, search
against the dense query scores and the unfitted error run in the shared channel contract
(``test_recall_channels.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from models.base import HeldOut, RecallChannel, top_k
from models.metrics import hits_from_keys, recall_at_k
from models.recall.embedding import EmbeddingChannel, heldout_recall
from models.recall.text_embedding import (
    TOKEN_PATTERN,
    TextEmbeddingChannel,
    item_texts,
)
from tests.conftest import recall_data_from_matrix

N_USERS, N_ITEMS, HALF_U, HALF_I = 40, 30, 20, 15
SMALL = {"factors": 4, "regularization": 1.0, "alpha": 3.0, "iterations": 10, "threads": 1}


def blocks(seed: int = 0, density: float = 0.5) -> np.ndarray:
    """Users 0-19 use items 0-14, users 20-39 items 15-29; the last user is cold."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((N_USERS, N_ITEMS), np.float32)
    dense[:HALF_U, :HALF_I] = rng.random((HALF_U, HALF_I)) < density
    dense[HALF_U:, HALF_I:] = rng.random((N_USERS - HALF_U, N_ITEMS - HALF_I)) < density
    dense[np.arange(N_USERS - 1), np.r_[np.zeros(HALF_U), np.full(HALF_U - 1, HALF_I)]
          .astype(int)] = 1  # everyone but the cold user has at least one item
    dense[-1] = 0
    return dense


def own_block(items: np.ndarray) -> np.ndarray:
    users = np.arange(len(items))[:, None]
    return np.where(users < HALF_U, items < HALF_I, items >= HALF_I)


@pytest.fixture(scope="module")
def planted():
    dense = blocks()
    data = recall_data_from_matrix(dense)
    return dense, data, EmbeddingChannel(**SMALL).fit(data)


def test_mf_recovers_blocks_and_excludes_seen(planted) -> None:
    dense, data, channel = planted
    users = np.arange(N_USERS - 1)
    top = channel.retrieve(data, users, k=3)
    assert (top.items >= 0).all()
    assert own_block(top.items).all(), "a user was sent to the other block"
    assert not (dense[users[:, None], top.items] > 0).any(), "a fitted item came back"
    assert (np.diff(top.scores, axis=1) <= 0).all()
    kept = channel.retrieve(data, users, k=3, exclude_seen=False)
    assert (dense[users[:, None], kept.items] > 0).any()


def test_mf_cold_user_gets_nothing(planted) -> None:
    _, data, channel = planted
    cold = np.array([N_USERS - 1])
    top = channel.retrieve(data, cold, k=5)
    assert (top.items == -1).all() and np.isneginf(top.scores).all()
    assert np.isneginf(channel.score(data, cold)).all()


def test_mf_index_path_equals_dense_path_in_any_batch(planted) -> None:
    _, data, channel = planted
    users = np.arange(N_USERS)
    fast = channel.retrieve(data, users, k=10)
    dense = RecallChannel.retrieve(channel, data, users, k=10)  # score() + top_k
    np.testing.assert_array_equal(fast.items, dense.items)
    np.testing.assert_allclose(fast.scores, dense.scores, rtol=1e-5)
    single = np.vstack([channel.retrieve(data, users[u:u + 1], k=10).items
                        for u in range(N_USERS)])
    np.testing.assert_array_equal(single, fast.items)
    np.testing.assert_array_equal(channel.retrieve(data, users, k=10, chunk=3).items,
                                  fast.items)


def test_mf_ivf_with_every_list_probed_equals_exact() -> None:
    data = recall_data_from_matrix(blocks())
    users = np.arange(N_USERS)
    exact = EmbeddingChannel(**SMALL).fit(data)
    ivf = EmbeddingChannel(**SMALL, exact_below=0, nlist=4, nprobe=4).fit(data)
    assert ivf.index.kind == "ivf"
    np.testing.assert_array_equal(ivf.retrieve(data, users, 6).items,
                                  exact.retrieve(data, users, 6).items)


@pytest.mark.parametrize("model", ["als", "bpr"])
def test_mf_same_seed_same_vectors(model: str) -> None:
    data = recall_data_from_matrix(blocks())
    settings = {**SMALL, "model": model, "regularization": 0.01 if model == "bpr" else 1.0}
    a = EmbeddingChannel(**settings, seed=7).fit(data)
    b = EmbeddingChannel(**settings, seed=7).fit(data)
    np.testing.assert_array_equal(a.user_vecs, b.user_vecs)
    np.testing.assert_array_equal(a.item_vecs, b.item_vecs)
    c = EmbeddingChannel(**settings, seed=8).fit(data)
    assert not np.array_equal(a.item_vecs, c.item_vecs)


def held_out_blocks() -> tuple[np.ndarray, np.ndarray, HeldOut]:
    """Hide one used item per (non-cold) user; return the fitting matrix and the pairs."""
    dense = blocks(density=0.6)
    rng = np.random.default_rng(1)
    fit = dense.copy()
    users, items = [], []
    for u in range(N_USERS - 1):
        used = np.flatnonzero(dense[u])
        if len(used) > 2:
            pick = rng.choice(used)
            fit[u, pick] = 0
            users.append(u)
            items.append(pick)
    return dense, fit, HeldOut(np.array(users), np.array(items))


def test_mf_tuned_from_held_out_and_passed_back_reproduces() -> None:
    _, fit, held = held_out_blocks()
    data = recall_data_from_matrix(fit)
    settings = {**SMALL, "max_iterations": 12, "patience": 3, "tune_k": 5}
    channel = EmbeddingChannel(**settings).fit(data, held)
    tuned = channel.tuned()
    assert set(tuned) == {"iterations"} and 1 <= tuned["iterations"] <= 12
    recalls = [row["recall@5"] for row in channel.trace]
    assert recalls[tuned["iterations"] - 1] == max(recalls)
    watched = channel._watch(data, held)
    assert heldout_recall(channel.user_vecs, channel.item_vecs, data.history,
                          *watched, 5) == pytest.approx(max(recalls))
    refit = EmbeddingChannel(**{**settings, **tuned}).fit(data)
    np.testing.assert_array_equal(refit.user_vecs, channel.user_vecs)
    np.testing.assert_array_equal(refit.item_vecs, channel.item_vecs)


def test_mf_tuning_samples_users_past_its_cell_budget() -> None:
    """Each evaluation ranks the whole catalogue for the watched users: past
    ``tune_cells`` (users x items) a seeded sample of them, as ``tune_users`` draws."""
    _, fit, held = held_out_blocks()
    data = recall_data_from_matrix(fit)
    every = np.unique(held.users)
    users, relevant = EmbeddingChannel(**SMALL)._watch(data, held)
    np.testing.assert_array_equal(users, every)
    budget = 3 * data.n_items + data.n_items // 2  # room for 3 users
    users, relevant = EmbeddingChannel(**SMALL, tune_cells=budget)._watch(data, held)
    assert len(users) == 3 and relevant.shape == (3, data.n_items)
    same, _ = EmbeddingChannel(**SMALL, tune_users=3)._watch(data, held)
    np.testing.assert_array_equal(users, same)  # the same seeded draw as tune_users=3
    assert len(EmbeddingChannel(**SMALL, tune_cells=1)._watch(data, held)[0]) == 1
    kept = np.isin(held.users, users)
    assert relevant.sum() == kept.sum()  # every held-out pair of a kept user, no other


def test_mf_grid_choice_is_returned_and_reproducible() -> None:
    _, fit, held = held_out_blocks()
    data = recall_data_from_matrix(fit)
    grid = {"regularization": [1.0, 1000.0], "factors": [2, 4]}
    settings = {**SMALL, "max_iterations": 6, "patience": 2, "tune_k": 5, "grid": grid}
    channel = EmbeddingChannel(**settings).fit(data, held)
    tuned = channel.tuned()
    assert set(tuned) == {"regularization", "factors", "iterations"}
    assert tuned["regularization"] == 1.0  # 1000 flattens every vector
    assert len({(r["regularization"], r["factors"]) for r in channel.trace}) == 4
    refit = EmbeddingChannel(**{**settings, **tuned}).fit(data)
    np.testing.assert_array_equal(refit.item_vecs, channel.item_vecs)


def test_mf_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        EmbeddingChannel(model="svd")
    with pytest.raises(ValueError, match="not tunable"):
        EmbeddingChannel(grid={"seed": [1, 2]})


# ---------------------------------------------------------------------- text
TOPIC_A = ["space", "rocket", "alien", "planet", "orbit"]
TOPIC_B = ["cooking", "kitchen", "recipe", "bread", "butter"]


def text_catalogue() -> pd.DataFrame:
    """Ten items per topic, titles of topic words plus one rare pair each."""
    rng = np.random.default_rng(0)
    rows = []
    for j in range(20):
        topic = TOPIC_A if j < 10 else TOPIC_B
        words = list(rng.choice(topic, 3, replace=False))
        rows.append({"item_id": j, "title": " ".join([*words, f"rare{j}x", f"odd{j}y"]),
                     "text": " ".join(rng.choice(topic, 6)), "category": "a" if j < 10 else "b",
                     "tags": [topic[0]]})
    return pd.DataFrame(rows)


def text_data(n_users: int = 6):
    items = text_catalogue()
    dense = np.zeros((n_users, len(items)))
    dense[0, [0, 1, 2]] = 1  # topic A
    dense[1, [10, 11, 12]] = 1  # topic B
    return recall_data_from_matrix(dense, items=items)


def test_text_query_with_rare_title_words_ranks_that_item_first() -> None:
    data = text_data()
    channel = TextEmbeddingChannel().fit(data)
    queries = np.array([f"rare{j}x odd{j}y" for j in range(20)] + ["nothing known"], object)
    scores = channel.score_queries(data, queries)
    np.testing.assert_array_equal(scores[:20].argmax(axis=1), np.arange(20))
    assert np.isneginf(scores[20]).all()
    top = channel.retrieve_queries(data, queries, np.full(21, 5), k=3)
    np.testing.assert_array_equal(top.items[:20, 0], np.arange(20))
    assert (top.items[20] == -1).all()


def test_text_query_excludes_the_asking_users_items() -> None:
    data = text_data()
    channel = TextEmbeddingChannel().fit(data)
    queries = np.array(["rare1x odd1y"], object)
    mine = channel.retrieve_queries(data, queries, np.array([0]), k=5)  # user 0 has item 1
    other = channel.retrieve_queries(data, queries, np.array([1]), k=5)
    assert other.items[0, 0] == 1 and 1 not in mine.items[0]
    assert not np.isin(mine.items[0], [0, 1, 2]).any()


def test_text_users_get_their_topic_and_cold_users_nothing() -> None:
    data = text_data()
    channel = TextEmbeddingChannel(recent_items=1, recent_weight=1.0).fit(data)
    top = channel.retrieve(data, np.array([0, 1, 5]), k=4)
    assert (top.items[0] < 10).all() and (top.items[1] >= 10).all()
    assert not np.isin(top.items[0], [0, 1, 2]).any()
    assert (top.items[2] == -1).all() and np.isneginf(top.scores[2]).all()
    assert np.isneginf(channel.score(data, np.array([5]))).all()
    dense = RecallChannel.retrieve(channel, data, np.array([0, 1]), k=4)
    np.testing.assert_array_equal(dense.items, top.items[:2])


def test_text_hand_built_tfidf_equals_sklearn() -> None:
    data = text_data()
    channel = TextEmbeddingChannel(dims=5).fit(data)
    texts = item_texts(data.items) + ["space rocket rocket unknownword", "中文 搜索"]
    reference = TfidfVectorizer(token_pattern=TOKEN_PATTERN, sublinear_tf=True,
                                dtype=np.float32).fit(item_texts(data.items))
    np.testing.assert_allclose(channel.embedder.tfidf(texts).toarray(),
                               reference.transform(texts).toarray(), atol=1e-6)
    assert channel.embedder.dims == 5
    np.testing.assert_allclose(np.linalg.norm(channel.item_vecs, axis=1), 1, atol=1e-5)


def test_text_is_deterministic_for_a_seed() -> None:
    data = text_data()
    a = TextEmbeddingChannel(dims=4, seed=3).fit(data).item_vecs
    b = TextEmbeddingChannel(dims=4, seed=3).fit(data).item_vecs
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [1, 3, 10, 40, 60])
def test_heldout_recall_counts_what_the_top_k_lists_would_hold(k: int) -> None:
    # scores with ties (few distinct values), NaN, seen items and an unfitted item,
    # against the lists ``top_k`` builds and the hits ``hits_from_keys`` finds in them
    rng = np.random.default_rng(k)
    n_users, n_items = 30, 50
    user_vecs = rng.integers(-2, 3, (n_users, 3)).astype(np.float32)
    item_vecs = rng.integers(-2, 3, (n_items, 3)).astype(np.float32)
    item_vecs[7] = np.nan
    fitted = rng.random((n_users, n_items)) < 0.1
    fitted[:, 11] = False  # nobody fitted item 11
    fitted[4] = False  # a user without fitted items
    history = sp.csr_matrix(fitted, dtype=np.float32)
    users = rng.permutation(n_users)[:20]
    relevant = sp.csr_matrix(rng.random((20, n_items)) < 0.2, dtype=np.float32)
    scores = user_vecs[users] @ item_vecs.T
    scores[:, history.getnnz(axis=0) == 0] = -np.inf
    scores[history[users].toarray() > 0] = -np.inf
    scores[history[users].getnnz(axis=1) == 0] = -np.inf
    rel = relevant.tocoo()
    hits = hits_from_keys(top_k(scores, k).items,
                          np.sort(rel.row.astype(np.int64) * n_items + rel.col), n_items)
    want = recall_at_k(hits, relevant.getnnz(axis=1), k).mean()
    got = heldout_recall(user_vecs, item_vecs, history, users, relevant, k)
    assert got == pytest.approx(want, rel=1e-12) and want > 0
