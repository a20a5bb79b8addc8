"""Query features of search candidates (``features.search_features``) against values
worked out by hand on a small search log, and per-field BM25 against the index's score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.search_features import SEARCH_FEATURES, SearchContext
from models.recall.inverted_index import FIELDS, InvertedIndexChannel
from tests.unit.test_inverted_index import searched_data, titled

ITEMS = ["The Godfather", "Godfather Part II", "Green Hat"]
SEARCHES = [(0, "godfather"), (0, "Godfather"), (0, "godfather "), (1, "godfather"),
            (2, "green hats")]


@pytest.fixture(scope="module")
def fitted():
    data = searched_data(titled(ITEMS, category=["film", "film", "hat"]), SEARCHES)
    return data, InvertedIndexChannel().fit(data)


def test_query_features_by_hand(fitted) -> None:
    data, index = fitted
    queries = np.array(["godfather", "godfather", "The Godfather", "green", "zzz"], object)
    items = np.array([0, 1, 0, 2, 0])
    got = SearchContext(data, index).compute(queries, items)
    assert list(got.columns) == list(SEARCH_FEATURES)
    np.testing.assert_allclose(got["query_frequency"], [0.8, 0.8, 0, 0, 0])
    np.testing.assert_allclose(got["query_words"], [1, 1, 2, 1, 1])
    np.testing.assert_allclose(got["query_click_share"], [0.75, 0.25, np.nan, np.nan, np.nan])
    # "the" is a stop word; "godfather" and "green" are stems of terms seen in queries
    np.testing.assert_allclose(got["query_term_click_share"], [0.75, 0.25, 0.75, 1.0, np.nan])
    np.testing.assert_array_equal(got["title_exact_match"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(got["title_prefix_match"], [0, 1, 1, 1, 0])
    np.testing.assert_allclose(got["title_word_coverage"], [1, 1, 1, 1, 0])


def test_field_scores_add_up_to_the_index_score(fitted) -> None:
    data, index = fitted
    queries = ["godfather", "green hat category:hat", "part", "hats", "zzz"]
    items = np.array([0, 2, 1, 2, 2])
    got = SearchContext(data, index).compute(np.array(queries, object), items)
    total = sum(got[f"bm25_{field}"] for field in FIELDS).to_numpy()
    full = index.score_queries(data, queries)[np.arange(len(items)), items]
    np.testing.assert_allclose(total, np.where(np.isfinite(full), full, 0), rtol=1e-5)
    assert got.loc[1, "bm25_attributes"] > 0 and got.loc[0, "bm25_attributes"] == 0
    assert got.loc[0, "bm25_queries"] > 0 and got.loc[2, "bm25_queries"] == 0
    assert got.loc[3, "bm25_text"] > 0  # "hats" stems to the title's "hat"
    other = searched_data(titled(ITEMS, category=["hat", "film", "film"]), SEARCHES)
    index.fit(other)  # refit: item 0 is now the hat, and the items' weights are new
    items = np.array([0, 0, 1, 0, 2])
    again = sum(index.field_scores(queries, items).values())
    full = index.score_queries(other, queries)[np.arange(len(items)), items]
    np.testing.assert_allclose(again, np.where(np.isfinite(full), full, 0), rtol=1e-5)


def test_a_missing_query_matches_nothing_in_any_field(fitted) -> None:
    data, index = fitted
    items = np.array([0, 0, 1, 2])
    got = index.field_scores(["godfather", None, np.nan, "godfather"], items)
    for field in FIELDS:
        assert got[field][1] == got[field][2] == 0
    alone = index.field_scores(["godfather", "godfather"], items[[0, 3]])
    for field in FIELDS:  # the missing ones change nothing for the others
        np.testing.assert_array_equal(got[field][[0, 3]], alone[field])
    assert got["text"][0] > 0


def test_without_searches_or_an_index_features_are_missing_not_zero() -> None:
    data = searched_data(titled(ITEMS), [])
    got = SearchContext(data, None).compute(np.array(["godfather"], object), np.array([0]))
    assert np.isnan(got.loc[0, "query_click_share"])
    assert np.isnan(got.loc[0, "query_term_click_share"])
    assert got.loc[0, "query_frequency"] == 0
    assert all(np.isnan(got.loc[0, f"bm25_{field}"]) for field in FIELDS)
    assert got.loc[0, "title_word_coverage"] == 1.0


def test_a_requests_recent_clicks_carry_no_query_and_leave_the_query_features(fitted) -> None:
    data, index = fitted
    user = int(data.log["user"].iloc[0])
    newer = data.with_events(user, np.array([2, 1]), np.array([data.now + 5, 0]))
    queries = np.array(["godfather", "green hats", "hat", "zzz", "godfather"], object)
    items = np.array([0, 2, 2, 1, 1])
    assert len(newer.log) == len(data.log) + 2
    pd.testing.assert_frame_equal(SearchContext(newer, index).compute(queries, items),
                                  SearchContext(data, index).compute(queries, items),
                                  check_exact=True)
