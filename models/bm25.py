"""BM25 weights and an exact, batched top-k search engine over them.

Weights. ``bm25_weights`` turns one field's token occurrences into a terms x docs CSR
matrix (row t is t's posting list) holding the BM25 weight of every (term, doc) pair:

    w(t, d) = idf(t) * tf / (tf + k1 * (1 - b + b * len(d) / avglen))
    idf(t)  = log(1 + (N - df + 0.5) / (df + 0.5))          (Lucene's, never negative)

with tf the term's count in the field, len and avglen measured over the field, N the
number of docs. A query q (term weights q_t >= 0, counts for a text query) scores
s(q, d) = sum_t q_t w(t, d): Lucene's BM25 as ``bm25s`` computes it (``method="lucene"``),
and a test checks the two agree.

Top-k without scoring everything (``BM25Index.search``): exact, batched, no per-query
Python loop. Terms in more than ``dense_df`` of the docs (at most ``max_dense_terms`` of
them) are "head" terms with a dense row; the others are "tail" terms, whose complete
postings are scored for all queries of a batch by one sparse product.
1. A lower bound theta of each query's k-th best score, from k distinct docs whose exact
   (or lower-bounded) scores are known: the top tail entries by histogram selection
   (``kth_bound``), and each head term's best docs (kept from indexing).
2. MaxScore split of each query's head terms: the smallest upper bounds (q_t * max_d w)
   whose sum stays below theta cannot lift a doc above theta on their own.
3. Queries whose head terms are all of that kind: candidates are the tail entries with
   partial + bound >= theta; head weights are looked up in the dense rows, exact scores
   kept where >= theta. Docs outside the tail postings score below theta.
4. Other queries (and those with too many candidates): exact dense scores (head rows
   summed, tail entries added), maxima over blocks of 256 docs give a tighter theta,
   only blocks reaching it are read.
Every doc scoring at or above the k-th best score is thus scored exactly; ties are
broken by lower doc index, as ``models.base.top_k`` does.

A catalogue of at most ``exhaustive_docs`` docs (``EXHAUSTIVE_DOCS`` by default) skips all
of this: one sparse product scores every doc and ``models.base.top_k`` picks the best.
The bounds cost more than they save there (random Zipf corpora of 20k terms and 30 tokens
a doc; queries of 30 or 3 terms, one or 1,024 at a time; top-100 and top-300; one thread;
ms a query, engine against every doc scored: 10,000 docs 0.14-0.86 against 0.16-0.31;
16,384 docs 0.15-1.29 against 0.26-0.49; 30,000 docs 0.14-1.24 against 0.38-0.74; 100,000
docs 0.20-1.97 against 1.4-2.4. Up to 16,384 the engine wins only many short queries at
top-100, by a tenth of a millisecond; with ``top_k`` ranking distinct keys: before, the
mostly -inf rows of the scored path partitioned ten times slower, and the threshold was
8,192). On ML-100K's 1,682 items the users' profiles took 0.85 ms a user through the
engine and 0.06 ms scored whole (one served user: 1.44 -> 0.21 ms), and on
synthetic-10k's 10,000 items 1.0 against 0.31 ms, the same lists up to float32 rounding
of near ties (there, 22 of 2,000 users' lists had two neighbours swapped, 2e-7 apart).

Why our own engine rather than ``bm25s``: measured on this machine (2 cores, busy with
other jobs, load average 4-5; one thread each side; ``python -m benchmarks.bench_bm25``:
1M synthetic documents of 30-80 Zipf tokens, 1000 queries of 2-5 tokens from the same
law, top-100, best of 5 alternating runs), this engine answered 915 queries/s against 438
for bm25s 0.3.16's numba backend (ratio 2.09), with every query's top-10 identical up to
ties (bm25s's full scores as oracle), and indexed in 14 s against 60 s. It also needs no
numba (a bench-only dependency here), takes weighted multi-term profiles as queries, and
excludes each user's seen items exactly. Memory: the weight matrix (8 bytes per
posting) and the dense head rows (4 bytes x docs x head terms: 149 terms, 600 MB on that
corpus; ``dense_df=0.05`` halves it for about 10% less speed).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from models.arrays import sorted_unique
from models.base import TopK, top_k

_EPS = 1e-5  # relative slack on every pruning comparison (float32 sums in other orders)
_BINS = 1024  # histogram resolution of the k-th-score bounds
_BLOCK = 256  # docs per block in the dense path's block maxima
_SEEDS = 256  # best docs kept per head term, for the first bound
_DENSE_ROWS = 8  # queries scored densely at once
_BATCH = 1024  # queries per internal batch (bounds the histograms and the tail product)
_TINY = np.finfo(np.float32).tiny
EXHAUSTIVE_DOCS = 16384  # catalogues up to this size: every doc scored (module doc)
_EXHAUSTIVE_CELLS = 1 << 20  # queries x docs scored at once on that path


def bm25_weights(terms: np.ndarray, docs: np.ndarray, n_terms: int, n_docs: int,
                 k1: float, b: float) -> sp.csr_matrix:
    """BM25 weights (terms x docs, float32) of one field from its token occurrences.

    ``terms`` and ``docs`` hold one entry per token (repeats are the term frequency);
    arithmetic follows bm25s's Lucene variant operation by operation (float32 idf, float64
    term-frequency part, float32 result), so the weights agree with it to float32 rounding.
    """
    terms = np.asarray(terms, np.int64)
    docs = np.asarray(docs, np.int64)
    tf = sp.csr_matrix((np.ones(len(terms), np.float32), (terms, docs)),
                       shape=(n_terms, n_docs))
    tf.sum_duplicates()
    tf.sort_indices()
    if tf.nnz == 0:
        return sp.csr_matrix((n_terms, n_docs), dtype=np.float32)
    df = np.diff(tf.indptr)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    length = np.bincount(docs, minlength=n_docs)
    avg = np.float64(len(terms) / n_docs)
    freq = tf.data.astype(np.float64)
    norm = k1 * ((1 - b) + b * length[tf.indices] / avg)
    rows = np.repeat(np.arange(n_terms), df)
    data = (idf[rows] * (freq / (norm + freq))).astype(np.float32)
    return sp.csr_matrix((data, tf.indices.astype(np.int32), tf.indptr), shape=tf.shape)


def segment_offsets(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each of consecutive segments of the given lengths."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def kth_bound(counts: np.ndarray, values: np.ndarray, k: int,
              mask: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Lower bound of each row's k-th largest value (0 where a row has fewer than k).

    Rows are consecutive segments of ``values`` (all > 0) with the given ``counts``. Each
    row's values are binned into ``_BINS`` equal bins below its maximum; the bound is the
    lower edge of the bin where the count from the top reaches k. With ``mask``, also the
    entries in the bins down to that one (each row's top k and what shares their bins).
    """
    n_rows = len(counts)
    bound = np.zeros(n_rows)
    if len(values) == 0:
        return bound, np.zeros(0, bool) if mask else None
    starts = np.cumsum(counts) - counts
    filled = counts > 0
    top = np.zeros(n_rows, np.float32)
    top[filled] = np.maximum.reduceat(values, starts[filled])
    scale = np.zeros(n_rows, np.float32)
    scale[filled] = np.float32(_BINS - 1) / top[filled]
    level = values * np.repeat(scale, counts)
    np.minimum(level, _BINS - 1, out=level)
    kind = np.int32 if n_rows * _BINS < 2**31 else np.int64
    base = np.arange(n_rows, dtype=kind) * _BINS + (_BINS - 1)
    key = np.repeat(base, counts)
    key -= level.astype(kind)  # row * _BINS + bin, bin 0 holding the maxima
    hist = np.bincount(key, minlength=n_rows * _BINS).reshape(n_rows, _BINS).cumsum(axis=1)
    full = counts >= k
    cut = np.where(full, np.argmax(hist >= k, axis=1), _BINS - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        edge = (_BINS - 1 - cut) / scale.astype(np.float64)  # values in bin <= cut are >= it
    bound[full] = edge[full] * (1 - _EPS)
    if not mask:
        return bound, None
    return bound, key <= np.repeat(base - (_BINS - 1) + cut, counts)


def _keys(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    return rows.astype(np.int64) * n_cols + cols


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0 or len(keys) == 0:
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


class BM25Index:
    """Posting lists with BM25 weights (terms x docs) and exact batched top-k search.

    Queries are sparse matrices (queries x terms) of non-negative term weights.
    """

    def __init__(self, weights: sp.csr_matrix, dense_df: float = 0.03,
                 max_dense_terms: int = 192, exhaustive_docs: int = EXHAUSTIVE_DOCS) -> None:
        self.weights = sp.csr_matrix(weights, dtype=np.float32)
        self.weights.sort_indices()
        n_terms, n_docs = self.weights.shape
        self.exhaustive = n_docs <= exhaustive_docs
        df = np.diff(self.weights.indptr)
        self.upper = np.zeros(n_terms, np.float32)  # max weight per term
        has = df > 0
        self.upper[has] = np.maximum.reduceat(self.weights.data, self.weights.indptr[:-1][has])
        head = np.flatnonzero(df > dense_df * n_docs)
        head = np.sort(head[np.argsort(-df[head], kind="stable")][:max_dense_terms])
        self.head_pos = np.full(n_terms, -1, np.int64)
        self.head_pos[head] = np.arange(len(head))
        self.n_blocks = -(-n_docs // _BLOCK)
        self.width = self.n_blocks * _BLOCK  # dense rows padded to whole blocks
        self.dense = np.zeros((len(head), self.width), np.float32)
        if len(head):
            self.dense[:, :n_docs] = self.weights[head].toarray()
        n_seeds = min(_SEEDS, n_docs)
        self.seeds = np.zeros((len(head), n_seeds), np.int64)
        if len(head) and n_seeds:
            part = np.argpartition(-self.dense[:, :n_docs], n_seeds - 1, axis=1)[:, :n_seeds]
            vals = np.take_along_axis(self.dense, part, axis=1)
            order = np.lexsort((part, -vals), axis=1)
            self.seeds = np.take_along_axis(part, order, axis=1).astype(np.int64)

    @property
    def n_terms(self) -> int:
        return self.weights.shape[0]

    @property
    def n_docs(self) -> int:
        return self.weights.shape[1]

    def _queries(self, queries: sp.spmatrix) -> sp.csr_matrix:
        q = sp.csr_matrix(queries, dtype=np.float32, copy=True)
        if q.shape[1] != self.n_terms:
            raise ValueError(f"queries have {q.shape[1]} term columns, the index {self.n_terms}")
        q.sum_duplicates()
        if (q.data < 0).any():
            raise ValueError("query term weights must be >= 0")
        q.eliminate_zeros()
        return q

    def scores(self, queries: sp.spmatrix) -> np.ndarray:
        """Dense scores (queries x docs, float32), 0 where no term matches."""
        return np.asarray((self._queries(queries) @ self.weights).toarray(), np.float32)

    def search(self, queries: sp.spmatrix, k: int,
               exclude: sp.spmatrix | None = None) -> TopK:
        """Exact top-k docs per query (score desc, then doc asc; -1 / -inf padding), docs
        with score 0 never returned; ``exclude`` (queries x docs, nonzero = drop) removes
        docs before ranking. See the module docstring for the algorithm."""
        q = self._queries(queries)
        n_q = q.shape[0]
        items = np.full((n_q, k), -1, np.int64)
        scores = np.full((n_q, k), -np.inf, np.float32)
        if k <= 0 or n_q == 0 or self.n_docs == 0:
            return TopK(items, scores)
        ex = None if exclude is None else sp.csr_matrix(exclude)
        if self.exhaustive:
            step = max(1, _EXHAUSTIVE_CELLS // self.n_docs)
            for lo in range(0, n_q, step):
                hi = min(lo + step, n_q)
                found = self._scored(q[lo:hi], k, None if ex is None else ex[lo:hi])
                items[lo:hi], scores[lo:hi] = found.items, found.scores
            return TopK(items, scores)
        for lo in range(0, n_q, _BATCH):
            hi = min(lo + _BATCH, n_q)
            part = None if ex is None else ex[lo:hi]
            rows, docs, vals = _Search(self, q[lo:hi], k, part).run()
            order = np.lexsort((docs, -vals, rows))
            rows, docs, vals = rows[order] + lo, docs[order], vals[order]
            rank = segment_offsets(np.bincount(rows - lo, minlength=hi - lo))
            keep = rank < k
            items[rows[keep], rank[keep]] = docs[keep]
            scores[rows[keep], rank[keep]] = vals[keep]
        return TopK(items, scores)

    def _scored(self, q: sp.csr_matrix, k: int, exclude: sp.csr_matrix | None) -> TopK:
        """``search`` by scoring every doc: the exhaustive path of a small catalogue."""
        scores = (q @ self.weights).toarray()
        if exclude is not None:
            scores[exclude.nonzero()] = 0  # stored zeros exclude nothing
        scores[scores <= 0] = -np.inf
        return top_k(scores, k)


class _Search:
    """One batch of ``BM25Index.search``: candidates with exact scores >= each bound."""

    def __init__(self, index: BM25Index, q: sp.csr_matrix, k: int,
                 exclude: sp.spmatrix | None) -> None:
        self.ix, self.k, self.n_q = index, k, q.shape[0]
        n_docs = index.n_docs
        q_rows = np.repeat(np.arange(self.n_q), np.diff(q.indptr))
        is_head = index.head_pos[q.indices] >= 0
        tail_counts = np.bincount(q_rows[~is_head], minlength=self.n_q)
        tail_q = sp.csr_matrix((q.data[~is_head], q.indices[~is_head],
                                np.concatenate([[0], np.cumsum(tail_counts)])), shape=q.shape)
        tail = (tail_q @ index.weights).tocsr()
        self.ex_keys = np.zeros(0, np.int64)
        if exclude is not None:
            ex = (sp.csr_matrix(exclude) != 0).astype(np.float32)  # stored zeros dropped
            ex.sort_indices()
            ex_rows = np.repeat(np.arange(ex.shape[0]), np.diff(ex.indptr))
            self.ex_keys = _keys(ex_rows, ex.indices, n_docs)
            self.exclude = ex
            tail = (tail - tail.multiply(ex)).tocsr()
            tail.eliminate_zeros()
        else:
            self.exclude = None
        self.tail = tail
        self.tail_counts = np.diff(tail.indptr)
        # head terms of each query, largest bound first
        h_row, h_term = q_rows[is_head], q.indices[is_head]
        h_q = q.data[is_head].astype(np.float64)
        h_bound = h_q * index.upper[h_term]
        order = np.lexsort((-h_bound, h_row))
        self.h_row, self.h_q, self.h_bound = h_row[order], h_q[order], h_bound[order]
        self.h_pos = index.head_pos[h_term[order]]
        self.h_count = np.bincount(self.h_row, minlength=self.n_q)
        self.h_start = np.cumsum(self.h_count) - self.h_count

    def head_sum(self, rows: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """Sum over each row's head terms of q_t * w(t, doc), for (row, doc) pairs."""
        out = np.zeros(len(rows))
        if len(rows) == 0:
            return out
        n, start = self.h_count[rows], self.h_start[rows]
        flat_dense = self.ix.dense.reshape(-1)
        for slot in range(int(n.max())):  # a query's first head term, its second, ...
            has = n > slot
            every = bool(has.all())
            at = (start if every else start[has]) + slot
            flat = self.h_pos[at] * self.ix.width + (docs if every else docs[has])
            vals = self.h_q[at] * flat_dense[flat]
            if every:
                out += vals
            else:
                out[has] += vals
        return out

    def theta(self) -> np.ndarray:
        """A lower bound of each query's k-th best score, from k distinct docs."""
        k, tail = self.k, self.tail
        _, top = kth_bound(self.tail_counts, tail.data, k, mask=True)
        pos = np.flatnonzero(top)
        rows = np.searchsorted(tail.indptr, pos, side="right") - 1
        exact = tail.data[pos] + self.head_sum(rows, tail.indices[pos].astype(np.int64))
        theta, _ = kth_bound(np.bincount(rows, minlength=self.n_q), exact, k)
        n_seeds = min(k, self.ix.seeds.shape[1])
        if len(self.h_row) and n_seeds:
            s_rows = np.repeat(self.h_row, n_seeds)
            s_docs = self.ix.seeds[self.h_pos, :n_seeds].reshape(-1)
            keys = sorted_unique(_keys(s_rows, s_docs, self.ix.n_docs))
            keys = keys[~_member(keys, self.ex_keys)]
            s_rows, s_docs = keys // self.ix.n_docs, keys % self.ix.n_docs
            head_only = self.head_sum(s_rows, s_docs).astype(np.float32)
            ok = head_only > 0
            seeded, _ = kth_bound(np.bincount(s_rows[ok], minlength=self.n_q), head_only[ok], k)
            theta = np.maximum(theta, seeded)
        return theta

    def run(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        theta = self.theta()
        # MaxScore: the smallest head bounds whose sum stays below theta are non-essential
        suffix = np.cumsum(self.h_bound[::-1])[::-1]
        after_row = np.concatenate([suffix, [0.0]])[self.h_start + self.h_count]
        suffix = suffix - after_row[self.h_row]
        minor = suffix * (1 + _EPS) < theta[self.h_row] * (1 - _EPS)
        minor_bound = np.bincount(self.h_row[minor], weights=self.h_bound[minor],
                                  minlength=self.n_q)
        dense = np.bincount(self.h_row[~minor], minlength=self.n_q) > 0
        # sparse path: candidates are tail entries that can still reach theta
        low = theta * (1 - _EPS) - minor_bound * (1 + _EPS)
        low = np.where(dense, np.inf, np.maximum(low, _TINY)).astype(np.float32)
        tail = self.tail
        pos = np.flatnonzero(tail.data >= np.repeat(low, self.tail_counts))
        rows = np.searchsorted(tail.indptr, pos, side="right") - 1
        crowded = np.bincount(rows, minlength=self.n_q) > max(self.ix.n_docs / 32, 1)
        if crowded.any():
            pos, rows = pos[~crowded[rows]], rows[~crowded[rows]]
            dense |= crowded
        docs = tail.indices[pos].astype(np.int64)
        vals = tail.data[pos] + self.head_sum(rows, docs)
        keep = vals >= theta[rows] * (1 - _EPS)
        parts = [(rows[keep], docs[keep], vals[keep].astype(np.float32))]
        dense_rows = np.flatnonzero(dense)
        for lo in range(0, len(dense_rows), _DENSE_ROWS):
            parts.append(self.dense_block(dense_rows[lo:lo + _DENSE_ROWS], theta))
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))

    def dense_block(self, rows: np.ndarray, theta: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact dense scores for a few queries; only blocks that can reach theta are read."""
        ix, n = self.ix, len(rows)
        at = np.concatenate([np.arange(s, s + c) for s, c in
                             zip(self.h_start[rows], self.h_count[rows], strict=True)])
        head_q = sp.csr_matrix((self.h_q[at].astype(np.float32), self.h_pos[at],
                                np.concatenate([[0], np.cumsum(self.h_count[rows])])),
                               shape=(n, len(ix.dense)))
        scores = np.asarray(head_q @ ix.dense) if len(ix.dense) else np.zeros((n, ix.width),
                                                                                np.float32)
        part = self.tail[rows]
        scores[np.repeat(np.arange(n), np.diff(part.indptr)), part.indices] += part.data
        if self.exclude is not None:
            ex = self.exclude[rows]
            scores[np.repeat(np.arange(n), np.diff(ex.indptr)), ex.indices] = 0
        block_max = np.maximum.reduceat(scores, np.arange(0, ix.width, _BLOCK), axis=1)
        bound = theta[rows] * (1 - _EPS)
        if self.k <= ix.n_blocks:
            kth = -np.partition(-block_max, self.k - 1, axis=1)[:, self.k - 1]
            bound = np.maximum(bound, kth * (1 - _EPS))
        bound = np.maximum(bound, _TINY).astype(np.float32)
        r, blk = np.nonzero(block_max >= bound[:, None])
        blocks = scores.reshape(n, ix.n_blocks, _BLOCK)[r, blk]
        b_i, off = np.nonzero(blocks >= bound[r][:, None])
        return rows[r[b_i]], blk[b_i].astype(np.int64) * _BLOCK + off, blocks[b_i, off]
