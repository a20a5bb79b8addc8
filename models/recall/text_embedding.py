"""Item text embeddings (TF-IDF + truncated SVD) for content recall and query search.

An item's text is its title, text, tags and category joined. TF-IDF as scikit-learn
defines it (smoothed idf = ln((1 + n) / (1 + df)) + 1, optional sublinear tf = 1 + ln tf,
rows L2-normalised), projected on the top ``dims`` right singular vectors of the item x
term matrix (latent semantic analysis, seeded randomized SVD) and L2-normalised again,
so inner products are cosines.

A user's vector is the normalised weighted mean of their fitted items' vectors (weights
as in co-occurrence's seeds: every item ``long_weight``, decayed by
2^(-age / ``half_life_days``) when set, plus ``recent_weight`` for the last
``recent_items``), so recent taste can count more. A query is embedded like an item.
Users without fitted items, queries with no known term and items without text get
nothing. Retrieval goes through the faiss index (``models/ann.py``) in batches.

Saved as plain files: the vocabulary (JSON), idf and SVD components (.npy) and the
settings; the transform is rebuilt from them, never unpickled. LSA blurs words that occur
in a handful of items into their topic: it finds "films like this", while exact rare
words are a lexical channel's job (BM25).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

from features.recall_data import RecallData
from models.ann import EXACT_BELOW, AnnIndex
from models.base import HeldOut, RecallChannel, SearchChannel, TopK
from models.recall.item_index import ItemVectorIndex
from models.recall.weights import half_life, seed_weights

# Words of two or more letters/digits, and every CJK ideograph on its own (Chinese text is
# not space-separated, and one character is often a word).
TOKEN_PATTERN = r"(?u)[\u3400-\u9fff]|[^\W\u3400-\u9fff]{2,}"
TEXT_COLUMNS = ("title", "text", "tags", "category")


def item_texts(items: pd.DataFrame) -> list[str]:
    """Title, text, tags and category of each item, joined with spaces (missing: skipped)."""
    parts = []
    for col in TEXT_COLUMNS:
        if col not in items.columns:
            continue
        values = items[col].tolist()
        if col == "tags":
            values = [" ".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else ""
                      for v in values]
        parts.append(["" if v is None or v is pd.NA or v != v else str(v) for v in values])
    return [" ".join(p for p in row if p) for row in zip(*parts, strict=True)] if parts \
        else [""] * len(items)


def normalise_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0).astype(np.float32)


class TextEmbedder:
    """TF-IDF then SVD projection, rebuilt from plain arrays (vocabulary, idf, components)."""

    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, components: np.ndarray,
                 sublinear_tf: bool, ngram_max: int) -> None:
        self.vocabulary, self.idf, self.components = vocabulary, idf, components
        self.sublinear_tf, self.ngram_max = sublinear_tf, ngram_max
        self._counter = CountVectorizer(vocabulary=vocabulary, token_pattern=TOKEN_PATTERN,
                                        lowercase=True, ngram_range=(1, ngram_max),
                                        dtype=np.float32)

    @classmethod
    def fit(cls, texts: list[str], dims: int, min_df: int | float, max_df: float,
            max_features: int | None, sublinear_tf: bool, ngram_max: int,
            seed: int) -> TextEmbedder:
        tfidf = TfidfVectorizer(token_pattern=TOKEN_PATTERN, lowercase=True, min_df=min_df,
                                max_df=max_df, max_features=max_features,
                                sublinear_tf=sublinear_tf, ngram_range=(1, ngram_max),
                                dtype=np.float32)
        if not any(re.search(TOKEN_PATTERN, text) for text in texts):  # nothing to learn
            return cls({}, np.zeros(0, np.float32), np.zeros((0, 0), np.float32),
                       sublinear_tf, ngram_max)
        tfidf.fit(texts)
        vocabulary = {term: int(i) for term, i in tfidf.vocabulary_.items()}
        embedder = cls(vocabulary, tfidf.idf_.astype(np.float32),
                       np.zeros((0, len(vocabulary)), np.float32), sublinear_tf, ngram_max)
        x = embedder.tfidf(texts)
        n_dims = min(dims, x.shape[0] - 1, x.shape[1] - 1)
        if n_dims >= 1:
            svd = TruncatedSVD(n_components=n_dims, random_state=seed)
            svd.fit(x)
            embedder.components = svd.components_.astype(np.float32)
        else:  # too few items or terms to reduce: the TF-IDF space itself
            embedder.components = np.eye(x.shape[1], dtype=np.float32)
        return embedder

    @property
    def dims(self) -> int:
        return self.components.shape[0]

    def tfidf(self, texts: list[str]) -> sp.csr_matrix:
        """Rows L2-normalised TF-IDF, the same as the fitted ``TfidfVectorizer.transform``."""
        if not self.vocabulary:
            return sp.csr_matrix((len(texts), 0), dtype=np.float32)
        x = self._counter.transform(texts).tocsr().astype(np.float32)
        if self.sublinear_tf:
            x.data = 1.0 + np.log(x.data)
        # scaled in place: products with vocabulary-sized diagonal matrices cost a served
        # search's query 0.35 ms
        x.data *= self.idf[x.indices]
        rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        norms = np.sqrt(np.bincount(rows, x.data * x.data, minlength=x.shape[0]))
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        x.data *= inv[rows].astype(np.float32)
        return x

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (zero where no term is known), len(texts) x dims."""
        if not self.vocabulary:
            return np.zeros((len(texts), 0), np.float32)
        return normalise_rows(np.asarray(self.tfidf(texts) @ self.components.T))

    def save(self, folder: Path) -> None:
        (folder / "vocabulary.json").write_text(json.dumps(self.vocabulary, ensure_ascii=False),
                                                "utf-8")
        np.save(folder / "idf.npy", self.idf)
        np.save(folder / "components.npy", self.components)

    @classmethod
    def load(cls, folder: Path, sublinear_tf: bool, ngram_max: int) -> TextEmbedder:
        vocabulary = json.loads((folder / "vocabulary.json").read_text("utf-8"))
        return cls(vocabulary, np.load(folder / "idf.npy", allow_pickle=False),
                   np.load(folder / "components.npy", allow_pickle=False), sublinear_tf,
                   ngram_max)


class TextEmbeddingChannel(ItemVectorIndex, RecallChannel, SearchChannel):
    """Content recall and query search by cosine of LSA text embeddings.

    dims: SVD dimensions (capped by items - 1 and terms - 1). min_df, max_df,
    max_features, sublinear_tf, ngram_max: the TF-IDF vocabulary. half_life_days,
    half_life_share, recent_items, recent_weight, long_weight: the user's item weights
    (``models.recall.weights.seed_weights``; see the module
    docstring). seed: SVD and faiss k-means. threads, exact_below, ann, nlist, nprobe,
    hnsw_m, ef_search: the index (``models.ann.build_index``). batch: rows per query.
    """

    name = "text_embedding"
    state = ("item_vecs",)

    def __init__(self, dims: int = 256, min_df: int | float = 1, max_df: float = 1.0,
                 max_features: int | None = 200_000, sublinear_tf: bool = True,
                 ngram_max: int = 1, half_life_days: float | None = None,
                 half_life_share: float = 0.0, recent_items: int = 0,
                 recent_weight: float = 0.0, long_weight: float = 1.0, seed: int = 42,
                 threads: int = 0, exact_below: int = EXACT_BELOW, ann: str = "ivf",
                 nlist: int = 0, nprobe: int = 0, hnsw_m: int = 32, ef_search: int = 128,
                 batch: int = 1024) -> None:
        self.params: dict[str, Any] = {
            "dims": dims, "min_df": min_df, "max_df": max_df, "max_features": max_features,
            "sublinear_tf": sublinear_tf, "ngram_max": ngram_max,
            "half_life_days": half_life_days, "half_life_share": half_life_share,
            "recent_items": recent_items,
            "recent_weight": recent_weight, "long_weight": long_weight, "seed": seed,
            "threads": threads, "exact_below": exact_below, "ann": ann, "nlist": nlist,
            "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search, "batch": batch}
        self.embedder: TextEmbedder | None = None
        self.item_vecs: np.ndarray | None = None
        self.index: AnnIndex | None = None

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> TextEmbeddingChannel:
        p = self.params
        texts = item_texts(data.items)
        self.embedder = TextEmbedder.fit(texts, p["dims"], p["min_df"], p["max_df"],
                                         p["max_features"], p["sublinear_tf"], p["ngram_max"],
                                         p["seed"])
        self.item_vecs = self.embedder.embed(texts)
        self._index_items(np.flatnonzero(self.item_vecs.any(axis=1)))
        return self

    # ------------------------------------------------------------------ vectors
    def user_vectors(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        """Unit vectors from each user's fitted items (zero rows: nothing to go on)."""
        self._require_fitted()
        p = self.params
        users = np.asarray(users, np.int64)
        rows = np.maximum(users, 0)  # a cold user's row is zeroed below
        weights = seed_weights(data, rows,
                               half_life(data, p["half_life_days"], p["half_life_share"], rows),
                               p["recent_items"], p["recent_weight"], p["long_weight"])
        vecs = normalise_rows(np.asarray(weights @ self.item_vecs))
        vecs[users < 0] = 0
        return vecs

    def query_vectors(self, queries: list[str] | np.ndarray) -> np.ndarray:
        self._require_fitted()
        return self.embedder.embed(["" if q is None else str(q) for q in queries])

    def _dense(self, vecs: np.ndarray) -> np.ndarray:
        scores = (vecs @ self.item_vecs.T).astype(np.float32)
        scores[:, ~self.item_vecs.any(axis=1)] = -np.inf
        scores[~vecs.any(axis=1)] = -np.inf
        return scores

    def _search(self, data: RecallData, vecs: np.ndarray, users: np.ndarray, k: int,
                exclude_seen: bool, chunk: int) -> TopK:
        rows = np.flatnonzero(vecs.any(axis=1))
        exclude = None
        if exclude_seen:
            who = np.asarray(users, np.int64)[rows]
            exclude = data.history[np.maximum(who, 0)]  # a copy: zeroed in place
            exclude.data[np.repeat(who < 0, np.diff(exclude.indptr))] = 0  # unknown: none
            exclude.eliminate_zeros()  # and a stored zero excludes nothing
        return self._search_items(vecs[rows], rows, len(vecs), k, exclude, chunk)

    # ------------------------------------------------------------------ contract
    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        return self._dense(self.user_vectors(data, users))

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        return self._search(data, self.user_vectors(data, users), users, k, exclude_seen, chunk)

    def score_queries(self, data: RecallData, queries: list[str]) -> np.ndarray:
        return self._dense(self.query_vectors(queries))

    def retrieve_queries(self, data: RecallData, queries: list[str], users: np.ndarray,
                         k: int, exclude_seen: bool = True, chunk: int = 0) -> TopK:
        return self._search(data, self.query_vectors(queries), users, k, exclude_seen, chunk)

    # ------------------------------------------------------------------ storage
    def _save_extra(self, folder: Path) -> None:
        super()._save_extra(folder)
        self.embedder.save(folder)

    def _load_extra(self, folder: Path) -> None:
        super()._load_extra(folder)
        p = self.params
        self.embedder = TextEmbedder.load(folder, p["sublinear_tf"], p["ngram_max"])
