"""Inverted index channel and its BM25 engine (``models/bm25.py``): BM25 by hand and
against bm25s, attributes, Chinese text, user profiles, the pruned top-k engine against
brute force, the saved files, batching. The shared channel contract runs in
``test_recall_channels.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from models import bm25
from models.base import top_k
from models.bm25 import BM25Index, bm25_weights
from models.recall.analysers import get_analyser
from models.recall.inverted_index import InvertedIndexChannel, WordExpander
from tests.conftest import recall_data_from_matrix


def titled(titles: list[str], **columns) -> pd.DataFrame:
    return pd.DataFrame({"item_id": np.arange(len(titles)), "title": titles, **columns})


def text_data(items: pd.DataFrame, n_users: int = 2):
    dense = np.zeros((n_users, len(items)))
    dense[0, 0] = 1  # the log needs one interaction
    return recall_data_from_matrix(dense, items=items)


def test_bm25_matches_hand_computed_lucene_scores() -> None:
    # N = 3 documents, lengths 3, 2, 4: avglen = 3; k1 = 1.2, b = 0.75
    items = titled(["apple banana apple", "banana cherry", "cherry cherry cherry date"])
    data = text_data(items)
    channel = InvertedIndexChannel(attributes=()).fit(data)
    got = channel.score_queries(data, ["apple", "banana cherry", "cherry"])

    def idf(df: int) -> float:
        return math.log(1 + (3 - df + 0.5) / (df + 0.5))

    def tfc(tf: int, length: int) -> float:
        return tf / (tf + 1.2 * (1 - 0.75 + 0.75 * length / 3))

    expected = np.array([
        [idf(1) * tfc(2, 3), -np.inf, -np.inf],
        [idf(2) * tfc(1, 3), idf(2) * tfc(1, 2) + idf(2) * tfc(1, 2), idf(2) * tfc(3, 4)],
        [-np.inf, idf(2) * tfc(1, 2), idf(2) * tfc(3, 4)],
    ])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def oracle_agrees(ours_items, ours_scores, ref_top_scores, ref_full) -> bool:
    """Our top list shows the reference's top scores, and the reference scores every item
    we show as we do: the two lists differ at most in which tied items they show."""
    ref_top = np.where(ref_top_scores > 0, ref_top_scores, -np.inf)
    found = ours_items >= 0
    return (np.array_equal(found, np.isfinite(ref_top))
            and np.allclose(ours_scores[found], ref_top[found], rtol=1e-5, atol=0)
            and np.allclose(ref_full[ours_items[found]], ours_scores[found], rtol=1e-5, atol=0))


def test_parity_with_bm25s_lucene() -> None:
    bm25s = pytest.importorskip("bm25s")
    rng = np.random.default_rng(7)
    vocab = np.array([f"w{i}" for i in range(150)])
    p = 1 / np.arange(1, 151)
    docs = [vocab[rng.choice(150, size=rng.integers(3, 25), p=p / p.sum())].tolist()
            for _ in range(300)]
    queries = [vocab[rng.choice(150, size=rng.integers(1, 4), p=p / p.sum())].tolist()
               for _ in range(40)]
    items = titled([" ".join(d) for d in docs])
    data = text_data(items)
    channel = InvertedIndexChannel(k1=1.5, b=0.6, attributes=(), dense_df=0.1).fit(data)
    ref = bm25s.BM25(k1=1.5, b=0.6, method="lucene", backend="numpy")
    ref.index(docs, show_progress=False)
    ref_docs, ref_scores = ref.retrieve(queries, k=10, show_progress=False)
    ours = channel.search(data, [" ".join(q) for q in queries], 10)
    dense = channel.score_queries(data, [" ".join(q) for q in queries])
    for i, q in enumerate(queries):
        full = ref.get_scores(q)
        assert oracle_agrees(ours.items[i], ours.scores[i], ref_scores[i], full), q
        distinct = np.unique(ref_scores[i]).size == 10  # no ties: the very same ids
        if distinct and (ref_scores[i] > 0).all():
            np.testing.assert_array_equal(ours.items[i], ref_docs[i])
        np.testing.assert_allclose(np.where(np.isfinite(dense[i]), dense[i], 0), full,
                                   rtol=1e-5, atol=1e-7)


def test_attribute_terms_find_items_by_category_tag_and_region() -> None:
    items = titled(["red shirt", "blue shirt", "green hat", "red hat"],
                   category=["Clothes", "Clothes", "Hats", None],
                   tags=[["summer", "cotton"], ["winter"], ["summer"], []],
                   region=pd.Series(["north", None, "south", "north"], dtype="string"))
    data = text_data(items)
    channel = InvertedIndexChannel().fit(data)
    got = channel.score_queries(data, ["category:clothes", "Category:HATS", "tag:summer",
                                       "region:north", "red region:south", "category:none"])
    hits = [set(np.flatnonzero(np.isfinite(row))) for row in got]
    assert hits == [{0, 1}, {2}, {0, 2}, {0, 3}, {0, 2, 3}, set()]
    assert {"category:clothes", "tag:cotton", "region:south"} <= set(channel.vocab)


def test_jieba_segments_chinese_and_a_chinese_query_finds_it() -> None:
    pytest.importorskip("jieba")
    tokens = get_analyser("jieba")("北京烤鸭很好吃")
    assert {"北京", "烤鸭", "好吃"} <= set(tokens)
    assert get_analyser("jieba")("Apple 手机壳") == ["apple", "手机", "壳"]
    items = titled(["北京烤鸭很好吃", "上海小笼包", "四川火锅很辣", "Café au lait"])
    data = text_data(items)
    channel = InvertedIndexChannel(analyser="jieba").fit(data)
    top = channel.search(data, ["烤鸭", "火锅", "cafe"], 2)
    assert top.items[:, 0].tolist() == [0, 2, 3]
    assert (top.items[:, 1] == -1).all()


def test_unknown_analyser_fails_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="jieba"):
        InvertedIndexChannel(analyser="klingon")
    assert get_analyser("standard")("Café, CAFÉ! naïve_x 42") == ["cafe", "cafe", "naive_x", "42"]


def category_catalogue(n_per: int = 10):
    """Items 0..n-1 are category a, n..2n-1 category b; titles share no words."""
    n = 2 * n_per
    items = titled([f"t{j}" for j in range(n)], category=["a"] * n_per + ["b"] * n_per)
    dense = np.zeros((3, n))
    dense[0, :4] = 1  # user 0: only category a
    dense[1, n_per:n_per + 3] = 1  # user 1: only category b
    dense[2, 0] = dense[2, n - 1] = 1
    return items, dense


def test_profile_of_a_category_a_user_ranks_unseen_category_a_first() -> None:
    items, dense = category_catalogue()
    data = recall_data_from_matrix(dense, items=items)
    channel = InvertedIndexChannel().fit(data)
    top = channel.retrieve(data, np.arange(3), k=6)
    assert set(top.items[0]) == set(range(4, 10))
    assert set(top.items[1][:6]) <= set(range(13, 20))
    assert not set(top.items[0]) & set(np.flatnonzero(dense[0]))
    profile = channel.profiles(data, np.array([0]))
    terms = {t for t, i in channel.vocab.items() if profile[0, i] > 0}
    assert "category:a" in terms and "category:b" not in terms
    np.testing.assert_allclose(profile.sum(), 1.0, rtol=1e-6)
    # the dense scores rank the same way
    scores = channel.score(data, np.array([0]))
    scores[0, dense[0] > 0] = -np.inf
    assert set(top_k(scores, 6).items[0]) == set(range(4, 10))


def test_recent_items_dominate_with_a_half_life() -> None:
    items, _ = category_catalogue()
    dense = np.zeros((1, 20))
    dense[0, [0, 1, 2, 10]] = 1
    ts = np.zeros((1, 20), np.int64)
    ts[0, [0, 1, 2]] = 0
    ts[0, 10] = 90 * 86_400  # the one category-b item is 90 days more recent
    data = recall_data_from_matrix(dense, ts=ts, items=items)
    flat = InvertedIndexChannel().fit(data).retrieve(data, np.array([0]), k=3)
    recent = InvertedIndexChannel(half_life_days=7).fit(data).retrieve(data, np.array([0]), k=3)
    assert set(flat.items[0]) <= set(range(10))
    assert set(recent.items[0]) <= set(range(10, 20))


def test_save_load_round_trip(tmp_path: Path) -> None:
    items, dense = category_catalogue()
    items["text"] = [f"common words {j % 3}" for j in range(len(items))]
    data = recall_data_from_matrix(dense, items=items)
    channel = InvertedIndexChannel(k1=0.9, profile_terms=5).fit(data)
    channel.save(tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == [
        "params.json", "state.json", "weights.npz"]
    assert json.loads((tmp_path / "ix" / "params.json").read_text())["k1"] == 0.9
    assert json.loads((tmp_path / "ix" / "state.json").read_text())["vocab"] == channel.vocab
    loaded = InvertedIndexChannel.load(tmp_path / "ix")
    users = np.arange(3)
    np.testing.assert_array_equal(loaded.score(data, users), channel.score(data, users))
    np.testing.assert_array_equal(loaded.retrieve(data, users, 5).items,
                                  channel.retrieve(data, users, 5).items)
    queries = ["common 1", "t3 words", "category:b"]
    np.testing.assert_array_equal(loaded.score_queries(data, queries),
                                  channel.score_queries(data, queries))


def test_batch_and_single_queries_agree() -> None:
    items, dense = category_catalogue()
    items["text"] = [f"common words {j % 3} t{j % 7}" for j in range(len(items))]
    data = recall_data_from_matrix(dense, items=items)
    channel = InvertedIndexChannel(dense_df=0.2).fit(data)
    queries = ["common", "words 2", "t1 t5 common", "nothing here", "category:a t3"]
    batch = channel.search(data, queries, 4)
    for i, q in enumerate(queries):
        one = channel.search(data, [q], 4)
        np.testing.assert_array_equal(one.items[0], batch.items[i])
        np.testing.assert_array_equal(one.scores[0], batch.scores[i])
    single = np.vstack([channel.retrieve(data, np.array([u]), 4).items for u in range(3)])
    np.testing.assert_array_equal(single, channel.retrieve(data, np.arange(3), 4).items)
    asked = channel.retrieve_queries(data, ["t0 t1 t2 common"], np.array([0]), 20)
    assert not set(asked.items[0]) & set(np.flatnonzero(dense[0]))


def random_search(seed: int, **index_args):
    """A random corpus, index, weighted queries, exclusions (odd seeds) and k."""
    rng = np.random.default_rng(seed)
    n_docs, n_terms = int(rng.integers(1, 300)), int(rng.integers(1, 50))
    lengths = rng.integers(0, 12, n_docs)
    p = 1 / np.arange(1, n_terms + 1) ** rng.uniform(0.5, 1.5)
    terms = rng.choice(n_terms, size=lengths.sum(), p=p / p.sum())
    weights = bm25_weights(terms, np.repeat(np.arange(n_docs), lengths), n_terms, n_docs,
                           1.2, 0.75)
    index = BM25Index(weights, dense_df=float(rng.choice([0.0, 0.05, 0.3, 2.0])),
                      max_dense_terms=int(rng.integers(0, 30)), **index_args)
    n_q = int(rng.integers(1, 25))
    q = (rng.random((n_q, n_terms)) < rng.uniform(0.02, 0.3)) * \
        rng.choice([1.0, 2.0, 0.37], size=(n_q, n_terms))
    queries = sp.csr_matrix(q.astype(np.float32))
    exclude = sp.csr_matrix(rng.random((n_q, n_docs)) < 0.1) if seed % 2 else None
    return weights, index, queries, exclude, int(rng.integers(1, 40))


def brute_force(weights, queries, exclude, k: int):
    """Every doc's score (excluded and unmatched ones -inf) and their ``top_k``."""
    brute = (queries @ weights).toarray()
    if exclude is not None:
        brute[exclude.toarray()] = 0
    brute[brute <= 0] = -np.inf
    return brute, top_k(brute, k)


@pytest.mark.parametrize("seed", range(40))
def test_pruned_top_k_equals_brute_force(seed: int) -> None:
    """Random corpora and weighted queries with every engine path (dense head rows or
    none, MaxScore split, crowded rows, excluded items): scores equal brute force."""
    weights, index, queries, exclude, k = random_search(seed, exhaustive_docs=0)
    assert not index.exhaustive
    got = index.search(queries, k, exclude)
    brute, want = brute_force(weights, queries, exclude, k)
    np.testing.assert_array_equal(got.items < 0, want.items < 0)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
    rows, cols = np.nonzero(got.items >= 0)
    np.testing.assert_allclose(brute[rows, got.items[rows, cols]], got.scores[rows, cols],
                               rtol=1e-5)


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_small_catalogue_scores_every_doc_with_the_engine_s_lists(seed: int) -> None:
    """Up to ``exhaustive_docs`` docs, ``search`` scores every doc: the lists of brute
    force exactly, and the pruned engine's up to float rounding."""
    weights, index, queries, exclude, k = random_search(seed)
    assert index.exhaustive
    got = index.search(queries, k, exclude)
    _, want = brute_force(weights, queries, exclude, k)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_array_equal(got.scores, want.scores)
    _, engine, *_ = random_search(seed, exhaustive_docs=0)
    pruned = engine.search(queries, k, exclude)
    np.testing.assert_array_equal(got.items < 0, pruned.items < 0)
    np.testing.assert_allclose(got.scores, pruned.scores, rtol=1e-5)


def test_the_channel_answers_alike_through_either_engine() -> None:
    """Catalogues here are small, so the channel scores every doc; the pruned engine that
    larger ones take must give its user profiles and queries the same lists, seen items
    left out."""
    rng = np.random.default_rng(3)
    n_items = 120
    items = titled([" ".join(f"w{t}" for t in rng.choice(40, 4)) for _ in range(n_items)],
                   category=rng.choice(list("abcd"), n_items).tolist())
    dense = (rng.random((25, n_items)) < 0.08).astype(float)
    data = recall_data_from_matrix(dense, items=items)
    channel = InvertedIndexChannel(dense_df=0.2).fit(data)
    users, queries = np.arange(25), ["w1 w2", "w7", "category:b w3", "w39 w0 w11", "nothing"]
    assert channel.index.exhaustive
    every = channel.retrieve(data, users, 15), channel.search(data, queries, 15)
    channel.index.exhaustive = False  # as a catalogue over bm25.EXHAUSTIVE_DOCS items
    pruned = channel.retrieve(data, users, 15), channel.search(data, queries, 15)
    for got, want in zip(pruned, every, strict=True):
        np.testing.assert_array_equal(got.items < 0, want.items < 0)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
    for user in users:
        found = pruned[0].items[user]
        assert not dense[user, found[found >= 0]].any(), "a seen item came back"


@pytest.mark.parametrize("exhaustive_docs", [0, 200])
def test_search_splits_large_batches_without_changing_results(
        exhaustive_docs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm25, "_EXHAUSTIVE_CELLS", 200 * 64)  # 64 queries a block
    rng = np.random.default_rng(3)
    terms = rng.integers(0, 30, size=2000)
    weights = bm25_weights(terms, np.repeat(np.arange(200), 10), 30, 200, 1.2, 0.75)
    index = BM25Index(weights, dense_df=0.2, exhaustive_docs=exhaustive_docs)
    queries = sp.csr_matrix((rng.random((1500, 30)) < 0.1).astype(np.float32))
    got = index.search(queries, 5)
    brute = (queries @ weights).toarray()
    brute[brute <= 0] = -np.inf
    np.testing.assert_allclose(got.scores, top_k(brute, 5).scores, rtol=1e-5)
    np.testing.assert_array_equal(index.search(queries[1100:1110], 5).items, got.items[1100:1110])


def searched_data(items: pd.DataFrame, searches: list[tuple[int, str]]):
    """Fitting data whose log holds one search event per (item, query) of ``searches``."""
    from features.recall_data import build_recall_data

    fit = pd.DataFrame({"user_id": np.arange(len(searches)) % 2,
                        "item_id": [item for item, _ in searches], "weight": 1.0,
                        "ts": pd.to_datetime(np.arange(len(searches)), unit="s"),
                        "query": pd.Series([q for _, q in searches], dtype="string")})
    users = pd.DataFrame({"user_id": [0, 1]})
    return build_recall_data(fit, items, users, np.array([0, 1]))


def test_queries_that_led_to_clicks_find_items_their_text_lacks() -> None:
    items = titled(["red running shoe", "blue running shoe", "green hat"])
    data = searched_data(items, [(1, "Sneakers"), (1, "sneakers blue"), (2, "cap")])
    channel = InvertedIndexChannel(attributes=()).fit(data)
    got = channel.score_queries(data, ["sneakers", "cap", "running", "sneakers red"])
    assert np.isfinite(got[0]).tolist() == [False, True, False]  # only through its queries
    assert np.isfinite(got[1]).tolist() == [False, False, True]
    np.testing.assert_array_equal(got[2], channel_without_queries(data)[0])  # text as before
    assert got[3, 1] > 0 and got[3, 0] > 0  # one word from queries, one from the title
    assert "q:sneaker" in channel.vocab and "q:red" not in channel.vocab  # stemmed
    off = InvertedIndexChannel(attributes=(), query_weight=0).fit(data)
    assert not np.isfinite(off.score_queries(data, ["sneakers"])).any()
    half = InvertedIndexChannel(attributes=(), query_weight=0.5).fit(data)
    np.testing.assert_allclose(half.score_queries(data, ["cap"])[0, 2], 0.5 * got[1, 2],
                               rtol=1e-6)


def channel_without_queries(data) -> np.ndarray:
    return InvertedIndexChannel(attributes=(), query_weight=0).fit(data).score_queries(
        data, ["running"])


def test_user_profiles_leave_the_query_field_out() -> None:
    items = titled(["red running shoe", "blue running shoe", "green hat"])
    data = searched_data(items, [(1, "sneakers"), (1, "sneakers"), (2, "cap")])
    with_queries = InvertedIndexChannel(attributes=()).fit(data)
    without = InvertedIndexChannel(attributes=(), query_weight=0).fit(data)
    users = np.array([0, 1])
    got, plain = with_queries.profiles(data, users), without.profiles(data, users)
    assert got.shape == (2, len(with_queries.vocab))
    own = [with_queries.vocab[t] for t in without.vocab]
    np.testing.assert_allclose(got[:, own].toarray(), plain.toarray(), rtol=1e-6)
    assert got.sum() == pytest.approx(plain.sum())  # nothing on q: terms


def test_word_expander_finds_typos_before_prefixes() -> None:
    words = WordExpander(["kalomi", "kalosa", "kalomo", "tovine"])
    assert words.expand("kaomi", 20) == ["kalomi"]  # "kalomi" with its "l" dropped
    assert words.expand("kalo", 20) == ["kalomi", "kalomo", "kalosa"]  # a partial word
    assert words.expand("kalo", 2) == ["kalomi", "kalomo"]
    assert words.expand("zzz", 20) == []
    assert words.expand("kalomi", 20) == []  # no prefix match of itself (typo: none)


def test_unknown_query_words_count_for_the_words_they_may_be_typed_for() -> None:
    items = titled(["kalomi shoe", "kalosa hat", "tovine coat"])
    data = searched_data(items, [(2, "warm")])
    channel = InvertedIndexChannel(attributes=()).fit(data)
    got = channel.score_queries(data, ["kaomi", "kalo", "ka", "wam", "kalomi"])
    assert np.isfinite(got[0]).tolist() == [True, False, False]  # a typo of kalomi
    assert np.isfinite(got[1]).tolist() == [True, True, False]  # both words it begins
    np.testing.assert_allclose(got[1, :2], got[4, 0] / 2, rtol=1e-6)  # one share each
    assert not np.isfinite(got[2]).any()  # shorter than expand_min_chars
    assert np.isfinite(got[3]).tolist() == [False, False, True]  # via the query field
    off = InvertedIndexChannel(attributes=(), expand_min_chars=0).fit(data)
    assert not np.isfinite(off.score_queries(data, ["kaomi", "kalo"])).any()


def test_english_analyser_stems_and_drops_stop_words() -> None:
    english = get_analyser("english")
    assert english("The Runner runs, RUNNING to the cafés") == ["runner", "run", "run", "cafe"]
    assert english.pairs("the runs") == [("runs", "run")]  # the word as written is kept
    assert english("the and of") == []
    assert get_analyser("standard")("The runs") == ["the", "runs"]


def test_documents_and_queries_meet_through_the_same_stemmer() -> None:
    items = titled(["Running Shoes", "A Shoe Rack", "The Runner"])
    data = text_data(items)
    channel = InvertedIndexChannel(attributes=()).fit(data)
    got = channel.score_queries(data, ["runs", "shoe", "the a", "runner"])
    assert np.isfinite(got[0]).tolist() == [True, False, False]  # runs ~ running, not runner
    assert np.isfinite(got[1]).tolist() == [True, True, False]  # shoes ~ shoe
    assert not np.isfinite(got[2]).any()  # stop words find nothing
    assert np.isfinite(got[3]).tolist() == [False, False, True]
    plain = InvertedIndexChannel(attributes=(), analyser="standard").fit(data)
    assert not np.isfinite(plain.score_queries(data, ["runs"])).any()  # no stemming


def test_partial_and_misspelt_words_match_what_was_written_not_the_stem() -> None:
    items = titled(["Running Shoes", "Rusty Nails"])
    channel = InvertedIndexChannel(attributes=()).fit(text_data(items))
    assert channel.surface["running"] == [channel.vocab["run"]]
    got = channel.score_queries(text_data(items), ["runni", "runnng", "rust"])
    assert np.isfinite(got[0]).tolist() == [True, False]  # "runni" begins "running"
    assert np.isfinite(got[1]).tolist() == [True, False]  # "running" less one letter
    assert np.isfinite(got[2]).tolist() == [False, True]  # "rusty" less one letter


def test_each_field_analyses_queries_as_it_analysed_its_documents(tmp_path: Path) -> None:
    items = titled(["Running Shoes", "Green Hat"])
    data = searched_data(items, [(1, "runs")])
    channel = InvertedIndexChannel(attributes=(), query_analyser="standard").fit(data)
    assert "q:runs" in channel.vocab and "q:run" not in channel.vocab
    got = channel.score_queries(data, ["runs", "running"])
    assert np.isfinite(got[0]).tolist() == [True, True]  # title by stem, queries as typed
    assert np.isfinite(got[1]).tolist() == [True, False]
    channel.save(tmp_path / "ix")
    loaded = InvertedIndexChannel.load(tmp_path / "ix")
    assert loaded.surface == channel.surface
    np.testing.assert_array_equal(loaded.score_queries(data, ["runs", "runnin"]),
                                  channel.score_queries(data, ["runs", "runnin"]))
    with pytest.raises(KeyError, match="klingon"):
        InvertedIndexChannel(query_analyser="klingon")
