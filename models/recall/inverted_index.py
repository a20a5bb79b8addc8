"""Inverted index over item text and attributes, scored with BM25, for recall and search.

Terms. Each item is three fields: its text (title, text and tags, through the configured
analyser, see ``analysers.py``: English stemming and stop words by default), its
attribute terms (``category:x``, ``tag:y``, ``region:z``; values case-folded, inner
spaces as ``_``), and the queries that led to its clicks in the fitting data (each
search event adds its query, through ``query_analyser``; terms kept as ``q:term``,
weighted ``query_weight``): the words people type for an item that its own text lacks
(synonyms, tags in their own words), fitted per phase so nothing from an evaluated
window is indexed. A query word matches both ``term`` and ``q:term``, each as its
field's analyser makes it; user profiles (below) leave the query field out. The index
also keeps each indexed word as it was written (``surface``: word -> its terms), so that
partial and misspelt words are matched against what people typed, not against stems. One
term dictionary holds all three; the weight matrix (terms x items, CSR: row t is t's
posting list, so it doubles as the attribute value -> items index) holds the BM25 weight
of every (term, item) pair, each field weighted on its own
(``models.bm25.bm25_weights``: Lucene's BM25, lengths and average length measured per
field). A query q (term weights q_t >= 0) scores s(q, d) = sum_t q_t w(t, d); for the
text field this is Lucene's BM25 as ``bm25s`` computes it (``method="lucene"``), and a
test checks the two agree.

Queries. For search, the analysed query text; ``field:value`` pieces of it (e.g.
``category:drama``) are matched as attribute terms. A query word that no field knows
(of at least ``expand_min_chars`` characters) stands for the indexed words it may be
typed for: those it equals with one letter dropped (a typo), else those it begins (a
partial word), at most ``max_expansions``, sharing its weight equally. For
recommendation, the user's profile: sum over their fitted items i of a_ui * w(t, i),
with a_ui = 1 or, when ``half_life_days`` > 0, 2^(-age / half-life) summed over their
events with i; the ``profile_terms`` largest terms and attributes are kept and
normalised to sum 1. Profiles
for a batch of users are one sparse product (users x items @ items x terms), scores a
second one (profiles @ terms x items).

Top-k without scoring everything: ``retrieve`` and ``retrieve_queries`` go through
``models.bm25.BM25Index.search``, exact and batched, each user's seen items excluded
before ranking (see ``models/bm25.py`` for the algorithm and how it compares with
``bm25s``). Memory: the engine's weights and dense head rows and, once profiles are asked
for, an items x terms copy of the weights.

Artefacts: ``weights.npz`` (scipy), ``params.json`` and the term dictionary in
``state.json``; nothing pickled.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.recall_data import RecallData
from models.arrays import row_scaled, sparse_row_dots
from models.base import HeldOut, RecallChannel, SearchChannel, TopK, remembered
from models.bm25 import BM25Index, bm25_weights
from models.recall.analysers import fold, get_analyser
from models.recall.weights import half_life, prune_rows, seed_weights

# item column -> attribute term prefix
ATTRIBUTES = {"category": "category", "tags": "tag", "region": "region"}
_ATTRIBUTE_QUERY = re.compile(r"(category|tag|region):(\S+)", re.IGNORECASE)
QUERY_FIELD = "q:"  # the prefix of the terms of queries that led to an item's clicks
FIELDS = ("text", "attributes", "queries")  # the index's fields, in term order


def _values(value: Any) -> list[str]:
    """A cell as a list of non-empty strings: scalars, lists/arrays, nulls."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, Iterable):
        return [str(v) for v in value if v is not None and not pd.isna(v) and str(v).strip()]
    return [] if pd.isna(value) else [str(value)]


def attribute_value(value: str) -> str:
    return "_".join(fold(value).split())


class WordExpander:
    """The indexed words a query word may have been typed for: those it equals with one
    letter dropped (each word's deletions are kept, so a lookup is a dict get), else
    those it begins (a binary search in the sorted words)."""

    def __init__(self, words: Iterable[str]) -> None:
        self.sorted = sorted(set(words))
        self.dropped: dict[str, dict[str, None]] = {}  # deletion -> words, in sorted order
        for word in self.sorted:
            for i in range(len(word)):
                self.dropped.setdefault(word[:i] + word[i + 1:], {})[word] = None

    def expand(self, word: str, limit: int) -> list[str]:
        typo = list(self.dropped.get(word, ()))
        if typo:
            return typo[:limit]
        lo = bisect.bisect_left(self.sorted, word)
        hi = bisect.bisect_left(self.sorted, word + "\U0010ffff", lo)
        return [w for w in self.sorted[lo:hi] if w != word][:limit]


class InvertedIndexChannel(RecallChannel, SearchChannel):
    """BM25 over item text and attributes; users are queried by their profile terms.

    Parameters:
    - ``k1``, ``b``: BM25 term-frequency saturation and length normalisation.
    - ``analyser``: name in ``models.recall.analysers`` ("english", "standard", "jieba",
      ...) of the text field; ``query_analyser`` that of the field of queries (None: the
      same). A query is analysed as each field analyses its documents.
    - ``text_fields``: item columns analysed into text terms (lists are joined).
    - ``attributes``: item columns indexed as whole-value ``prefix:value`` terms
      (category -> ``category:``, tags -> ``tag:``, region -> ``region:``).
    - ``query_weight``: weight of the field of queries that led to each item's clicks
      (0: the field is left out).
    - ``expand_min_chars``, ``max_expansions``: a query word of at least this many
      characters that matches no term is expanded to the indexed words it misspells by
      one dropped letter, else to those it begins (at most this many; 0 chars: off).
    - ``profile_terms``: terms and attributes kept in a user's profile.
    - ``half_life_days`` (or else ``half_life_share`` of the log's span, a served user's
      own: ``models.recall.weights``): 0 weighs every
      fitted item alike in the profile; > 0 weighs each event 2^(-age / half-life), so
      recent items dominate.
    - ``dense_df``, ``max_dense_terms``: terms in more than this share of items (at most
      this many) get a dense row in the top-k engine (speed against memory).
    - ``batch``: queries (or users) per engine call in ``retrieve``.
    """

    name = "inverted_index"
    state = ("vocab", "surface")

    def __init__(self, k1: float = 1.2, b: float = 0.75, analyser: str = "english",
                 query_analyser: str | None = None,
                 text_fields: Iterable[str] = ("title", "text", "tags"),
                 attributes: Iterable[str] = ("category", "tags", "region"),
                 query_weight: float = 1.0, expand_min_chars: int = 3,
                 max_expansions: int = 20,
                 profile_terms: int = 30, half_life_days: float | None = None,
                 half_life_share: float = 0.0,
                 dense_df: float = 0.03, max_dense_terms: int = 192, batch: int = 512) -> None:
        for name in (analyser, query_analyser or analyser):
            get_analyser(name)  # fail early on an unknown name
        unknown = sorted(set(attributes) - set(ATTRIBUTES))
        if unknown:
            raise KeyError(f"unknown attribute column(s) {unknown}; known: {sorted(ATTRIBUTES)}")
        self.params = {"k1": k1, "b": b, "analyser": analyser,
                       "query_analyser": query_analyser, "text_fields": list(text_fields),
                       "attributes": list(attributes), "query_weight": query_weight,
                       "expand_min_chars": expand_min_chars, "max_expansions": max_expansions,
                       "profile_terms": profile_terms,
                       "half_life_days": half_life_days, "half_life_share": half_life_share,
                       "dense_df": dense_df,
                       "max_dense_terms": max_dense_terms, "batch": batch}
        self.vocab: dict[str, int] | None = None
        self.surface: dict[str, list[int]] | None = None  # word as typed -> its terms
        self.index: BM25Index | None = None
        self._item_terms: sp.csr_matrix | None = None
        self._field_weights: list[sp.csr_matrix] | None = None
        self._words: WordExpander | None = None

    # --- fitting -------------------------------------------------------------------
    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> InvertedIndexChannel:
        p = self.params
        analyse = get_analyser(p["analyser"])
        items = data.items
        n = len(items)
        text_cols = [c for c in p["text_fields"] if c in items.columns]
        text_vocab: dict[str, int] = {}
        attr_vocab: dict[str, int] = {}
        t_terms, t_docs, a_terms, a_docs = [], [], [], []
        text_cells = zip(*(items[c].tolist() for c in text_cols), strict=True) if text_cols \
            else ([] for _ in range(n))
        attr_cols = [c for c in p["attributes"] if c in items.columns]
        attr_cells = zip(*(items[c].tolist() for c in attr_cols), strict=True) if attr_cols \
            else ([] for _ in range(n))
        surface: dict[str, set[str]] = {}
        for doc, (texts, attrs) in enumerate(zip(text_cells, attr_cells, strict=True)):
            text = " ".join(v for cell in texts for v in _values(cell))
            for word, term in analyse.pairs(text):
                t_terms.append(text_vocab.setdefault(term, len(text_vocab)))
                t_docs.append(doc)
                surface.setdefault(word, set()).add(term)
            for col, cell in zip(attr_cols, attrs, strict=True):
                for value in dict.fromkeys(attribute_value(v) for v in _values(cell)):
                    if value:
                        term = f"{ATTRIBUTES[col]}:{value}"
                        a_terms.append(attr_vocab.setdefault(term, len(attr_vocab)))
                        a_docs.append(doc)
        k1, b = p["k1"], p["b"]
        q_vocab, q_terms, q_docs = self._query_field(data, surface)
        weights = sp.vstack([
            bm25_weights(np.array(t_terms, np.int64), np.array(t_docs, np.int64),
                         len(text_vocab), n, k1, b),
            bm25_weights(np.array(a_terms, np.int64), np.array(a_docs, np.int64),
                         len(attr_vocab), n, k1, b),
            bm25_weights(q_terms, q_docs, len(q_vocab), n, k1, b) * np.float32(
                p["query_weight"]),
        ]).tocsr()
        self.vocab = text_vocab
        for field in (attr_vocab, q_vocab):
            offset = len(self.vocab)
            self.vocab = {**self.vocab, **{t: i + offset for t, i in field.items()}}
        self.surface = {word: sorted(self.vocab[t] for t in terms)
                        for word, terms in sorted(surface.items())}
        self._set_index(weights)
        return self

    def _query_field(self, data: RecallData, surface: dict[str, set[str]]
                     ) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """The ``q:`` terms of the queries that led to each item's clicks, as token
        occurrences (each search event adds its analysed query), their surface words
        added to ``surface``; each distinct query is analysed once and its words repeated
        for its events by array arithmetic."""
        vocab: dict[str, int] = {}
        empty = np.zeros(0, np.int64)
        if self.params["query_weight"] <= 0 or "query" not in data.log.columns:
            return vocab, empty, empty
        analyse = get_analyser(self.params["query_analyser"] or self.params["analyser"])
        searched = data.log[data.log["query"].notna()]
        of, distinct = pd.factorize(searched["query"])
        words = []
        for q in distinct:
            terms = []
            for word, term in analyse.pairs(str(q)):
                key = f"{QUERY_FIELD}{term}"
                terms.append(vocab.setdefault(key, len(vocab)))
                surface.setdefault(word, set()).add(key)
            words.append(terms)
        lengths = np.array([len(w) for w in words], np.int64)
        flat = np.fromiter((t for w in words for t in w), np.int64, int(lengths.sum()))
        per_event = lengths[of]
        within = np.arange(per_event.sum()) - np.repeat(np.cumsum(per_event) - per_event,
                                                         per_event)
        starts = np.cumsum(lengths) - lengths
        terms = flat[np.repeat(starts[of], per_event) + within]
        docs = np.repeat(searched["item"].to_numpy(np.int64), per_event)
        return vocab, terms, docs

    def _set_index(self, weights: sp.csr_matrix) -> None:
        self.index = BM25Index(weights, self.params["dense_df"], self.params["max_dense_terms"])
        self._item_terms = self._field_weights = None
        self._words = None

    # --- queries -------------------------------------------------------------------
    def _analysers(self) -> dict[str, list[str]]:
        """Each analyser name in use and the term prefixes of the fields it analyses."""
        p = self.params
        fields = {p["analyser"]: [""]}
        fields.setdefault(p["query_analyser"] or p["analyser"], []).append(QUERY_FIELD)
        return fields

    def query_keys(self, text: str) -> list[tuple[int, float]]:
        """(term index, weight) pairs of a query text: ``field:value`` pieces as attribute
        terms; each word analysed as each field analyses its documents, counting in the
        item text and in the field of queries that led to clicks; a word no field knows
        through the indexed words it may be typed for (shares summing to one)."""
        words, keys = [], []
        for piece in text.split():
            m = _ATTRIBUTE_QUERY.fullmatch(piece)
            if m is None:
                words.append(piece)
            elif (key := f"{m.group(1).lower()}:{attribute_value(m.group(2))}") in self.vocab:
                keys.append((self.vocab[key], 1.0))
        text = " ".join(words)
        found: set[str] = set()
        missing: dict[str, int] = {}  # word -> occurrences in the analysis that has most
        for name, prefixes in self._analysers().items():
            unknown: dict[str, int] = {}
            for word, term in get_analyser(name).pairs(text):
                hits = [self.vocab[k] for prefix in prefixes if (k := prefix + term) in self.vocab]
                keys.extend((hit, 1.0) for hit in hits)
                if hits:
                    found.add(word)
                else:
                    unknown[word] = unknown.get(word, 0) + 1
            for word, count in unknown.items():
                missing[word] = max(missing.get(word, 0), count)
        min_chars = self.params["expand_min_chars"]
        for word, count in missing.items():
            if word in found or not min_chars or len(word) < min_chars:
                continue
            if self._words is None:
                self._words = WordExpander(self.surface)
            typed_for = self._words.expand(word, self.params["max_expansions"])
            keys.extend((key, count / len(typed_for))
                        for w in typed_for for key in self.surface[w])
        return keys

    def query_matrix(self, queries: list[str]) -> sp.csr_matrix:
        """Queries x terms, each term weighted by its count in the query (``query_keys``)."""
        rows, cols, values = [], [], []
        for r, text in enumerate(queries):
            for key, weight in self.query_keys(text):
                rows.append(r)
                cols.append(key)
                values.append(weight)
        m = sp.csr_matrix((np.array(values, np.float32), (rows, cols)),
                          shape=(len(queries), len(self.vocab)))
        m.sum_duplicates()
        return m

    def _by_field(self) -> list[sp.csr_matrix]:
        """Per field of ``FIELDS``, items x terms weights of that field's terms alone (the
        others' entries dropped, columns kept), in float64 as ``sparse_row_dots`` reads
        them, worked out once per index: every search's features transposed the whole
        index and read every term's name again (0.46 of ``field_scores``' 0.93 ms a served
        search on the synthetic catalogue, growing with it)."""
        if self._field_weights is None:
            field = {**dict.fromkeys(ATTRIBUTES.values(), 1), QUERY_FIELD[:-1]: 2}
            of_term = np.array([field.get(t.split(":", 1)[0], 0) if ":" in t else 0
                                for t in self.vocab], np.int64)
            by_item = self.index.weights.T.tocsr()
            rows = np.repeat(np.arange(by_item.shape[0]), np.diff(by_item.indptr))
            self._field_weights = []
            for f in range(len(FIELDS)):
                keep = of_term[by_item.indices] == f
                indptr = np.concatenate([[0], np.cumsum(np.bincount(
                    rows[keep], minlength=by_item.shape[0]))])
                self._field_weights.append(sp.csr_matrix(
                    (by_item.data[keep].astype(np.float64), by_item.indices[keep], indptr),
                    shape=by_item.shape))
        return self._field_weights

    def field_scores(self, queries: list[str], items: np.ndarray) -> dict[str, np.ndarray]:
        """BM25 of each (query, item) pair in each of ``FIELDS`` (they sum to the channel's
        score), each distinct query analysed once; no items x queries matrix, and no
        gathered pairs x terms one (``sparse_row_dots`` per field: 0.37 -> 0.20 ms a served
        search). A missing query (None, NaN) matches nothing: 0 in every field."""
        self._require_fitted()
        codes, distinct = pd.factorize(pd.Series(queries, dtype=object))
        matched = self.query_matrix(list(distinct))
        asked, items = codes >= 0, np.asarray(items, np.int64)
        scores = {name: np.zeros(len(codes)) for name in FIELDS}
        for name, weights in zip(FIELDS, self._by_field(), strict=True):
            scores[name][asked] = sparse_row_dots(matched, codes[asked], weights, items[asked])
        return scores

    @remembered
    def profiles(self, data: RecallData, users: np.ndarray) -> sp.csr_matrix:
        """Users x terms: the most weighted terms of each user's fitted items, sum 1."""
        index = self._ready(data)
        if self._item_terms is None:
            # the items' own terms only: the query field's rows come last and stay out
            own = sum(not t.startswith(QUERY_FIELD) for t in self.vocab)
            self._item_terms = index.weights[:own].T.tocsr()
        users = np.asarray(users, np.int64)
        hl = half_life(data, self.params["half_life_days"], self.params["half_life_share"],
                       users)
        seen = data.history[users].astype(np.float32)  # for users without a half-life
        if (aged := hl > 0).any():
            decayed = seed_weights(data, users[aged], hl[aged], recent_items=0,
                                   recent_weight=0.0, long_weight=1.0)
            seen = decayed if aged.all() else sp.vstack(  # rows back in ``users`` order
                [decayed, seen[~aged]]).tocsr()[np.argsort(np.argsort(~aged, kind="stable"))]
        profile = prune_rows(seen @ self._item_terms, self.params["profile_terms"])
        total = np.asarray(profile.sum(axis=1)).ravel()
        scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
        profile = row_scaled(profile, scale.astype(np.float32))
        profile.resize((len(users), len(self.vocab)))
        return profile

    def _ready(self, data: RecallData) -> BM25Index:
        self._require_fitted()
        if self.index.n_docs != data.n_items:
            raise ValueError(f"index holds {self.index.n_docs} items, data {data.n_items}")
        return self.index

    @staticmethod
    def _dense(scores: np.ndarray) -> np.ndarray:
        scores[scores <= 0] = -np.inf
        return scores

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        return self._dense(self._ready(data).scores(self.profiles(data, users)))

    def score_pairs(self, data: RecallData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``score`` at the given pairs only: each user's profile terms against the
        item's weights (pairs x profile terms work) instead of a users x catalogue block;
        NaN where ``score`` has none."""
        self._ready(data)
        unique, rows = np.unique(np.asarray(users, np.int64), return_inverse=True)
        profiles = self.profiles(data, unique)  # the items' own terms only
        values = sparse_row_dots(profiles, rows, self._item_terms, np.asarray(items))
        values[values <= 0] = np.nan
        return values

    def score_queries(self, data: RecallData, queries: list[str]) -> np.ndarray:
        return self._dense(self._ready(data).scores(self.query_matrix(list(queries))))

    def _top(self, data: RecallData, query_rows, users: np.ndarray, k: int,
             exclude_seen: bool, chunk: int) -> TopK:
        index = self._ready(data)
        size = chunk or self.params["batch"]
        parts = []
        for lo in range(0, len(users), size):
            block = users[lo:lo + size]
            exclude = data.history[block] if exclude_seen else None
            parts.append(index.search(query_rows(lo, lo + len(block)), k, exclude))
        if not parts:
            return TopK(np.empty((0, k), np.int64), np.empty((0, k), np.float32))
        return TopK(np.vstack([p.items for p in parts]), np.vstack([p.scores for p in parts]))

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        """Top-k by ``BM25Index.search`` (every item scored in a small catalogue, the
        exact pruned engine in a large one): the scores of ``score`` (to float32
        rounding), without a users x items matrix."""
        users = np.asarray(users, np.int64)
        return self._top(data, lambda lo, hi: self.profiles(data, users[lo:hi]), users, k,
                         exclude_seen, chunk)

    def retrieve_queries(self, data: RecallData, queries: list[str], users: np.ndarray,
                         k: int, exclude_seen: bool = True, chunk: int = 0) -> TopK:
        """Top-k per (query, asking user); the user's fitted items removed when asked."""
        queries = list(queries)
        return self._top(data, lambda lo, hi: self.query_matrix(queries[lo:hi]),
                         np.asarray(users, np.int64), k, exclude_seen, chunk)

    def search(self, data: RecallData, queries: list[str], k: int) -> TopK:
        """Top-k items per query text, nothing excluded."""
        return self._ready(data).search(self.query_matrix(list(queries)), k)

    # --- persistence ---------------------------------------------------------------
    def _save_extra(self, folder: Path) -> None:
        sp.save_npz(folder / "weights.npz", self.index.weights)

    def _load_extra(self, folder: Path) -> None:
        self._set_index(sp.load_npz(folder / "weights.npz").tocsr())
