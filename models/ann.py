"""Maximum-inner-product search over item vectors, with the faiss backend behind one constructor.

``build_index`` picks the backend from the catalogue size: exact ``IndexFlatIP`` below
``exact_below`` vectors (the test oracle, and on small catalogues as fast as anything),
otherwise an approximate index: IVF (``IndexIVFFlat``, inner product, coarse centroids
from seeded spherical k-means) by default, or HNSW (``IndexHNSWFlat``). HNSW is optional
because on un-normalised matrix-factorisation vectors (ML-100K) it lost 20-40% of the
exact top-100, where IVF did not.

``AnnIndex.search`` answers queries in batches and returns ids (-1 = none) and scores
(-inf = none), best first; ids are the row positions, or ``labels[row]`` when the index
was built over a subset of a larger id space (e.g. only the items seen in fitting).
``search_excluding`` asks for ``k`` plus as many as the batch's largest exclusion list,
drops the excluded ids, and can re-score the survivors exactly so that the ordering
(score descending, then id) does not depend on batch size. Saved as the faiss index file
plus a JSON of its parameters (and the labels as .npy); nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numba
import numpy as np
import scipy.sparse as sp

from models.arrays import descending_key

# faiss logs every optimised build it fails to find (avx512, avx2) at import: noise in a
# batch log, since the generic build it falls back to is the one pip ships here.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
import faiss  # noqa: E402

EXACT_BELOW = 50_000  # flat search up to here: 50k x 64 floats per query is ~1 ms
KINDS = ("ivf", "hnsw")
_INDEX_FILE, _PARAMS_FILE, _LABELS_FILE = "index.faiss", "index.json", "labels.npy"
_RESCORE_CELLS = 1 << 23  # floats gathered at once when re-scoring: 32 MB


def thread_count(threads: int = 0) -> int:
    """``threads`` if positive, else OMP_NUM_THREADS from the environment, else all cores."""
    if threads > 0:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists, but never fewer than 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query when not configured: 1/256 of them, at least 16.

    On 1M x 64 Gaussian-mixture vectors (benchmarks/bench_ann.py) this kept recall@100
    above 0.99; inner-product top lists of more spread-out vectors need more.
    """
    return max(1, min(nlist, max(16, nlist // 256)))


class AnnIndex:
    """A built faiss index and the parameters that made it."""

    def __init__(self, index: faiss.Index, params: dict[str, Any],
                 labels: np.ndarray | None = None) -> None:
        self.index = index
        self.params = params
        self.labels = labels
        self._apply_search_params()

    @property
    def kind(self) -> str:
        return self.params["kind"]

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def _apply_search_params(self) -> None:
        faiss.omp_set_num_threads(thread_count(self.params.get("threads", 0)))
        if self.kind == "ivf":
            self.index.nprobe = self.params["nprobe"]
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = self.params["ef_search"]

    def describe(self) -> str:
        p = self.params
        if p["kind"] == "ivf":
            return f"IndexIVFFlat(IP, nlist={p['nlist']}, nprobe={p['nprobe']})"
        if p["kind"] == "hnsw":
            return f"IndexHNSWFlat(IP, M={p['hnsw_m']}, efSearch={p['ef_search']})"
        return "IndexFlatIP"

    def search(self, queries: np.ndarray, k: int, batch: int = 4096) -> tuple[np.ndarray,
                                                                              np.ndarray]:
        """Top ``k`` ids and inner products per query row, best first; -1 / -inf pad."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(queries)
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        k_eff = min(k, self.size)
        if k_eff == 0:
            return ids, scores
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            dist, found = self.index.search(queries[lo:hi], k_eff)
            if self.labels is not None:
                found = np.where(found >= 0, self.labels[np.maximum(found, 0)], -1)
            ids[lo:hi, :k_eff] = found
            scores[lo:hi, :k_eff] = np.where(found >= 0, dist, -np.inf)
        return ids, scores

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / _INDEX_FILE))
        (folder / _PARAMS_FILE).write_text(json.dumps(self.params))
        if self.labels is not None:
            np.save(folder / _LABELS_FILE, self.labels)

    @classmethod
    def load(cls, folder: Path) -> AnnIndex:
        params = json.loads((folder / _PARAMS_FILE).read_text())
        labels = None
        if (folder / _LABELS_FILE).is_file():
            labels = np.load(folder / _LABELS_FILE, allow_pickle=False)
        return cls(faiss.read_index(str(folder / _INDEX_FILE)), params, labels)


def build_index(vectors: np.ndarray, labels: np.ndarray | None = None,
                exact_below: int = EXACT_BELOW, kind: str = "ivf", nlist: int = 0,
                nprobe: int = 0, hnsw_m: int = 32, ef_search: int = 128,
                ef_construction: int = 200, train_per_list: int = 64, seed: int = 42,
                threads: int = 0) -> AnnIndex:
    """Index ``vectors`` (n x d) for inner-product search; ``labels`` (n ids) name the rows.

    ``exact_below``: fewer vectors than this get exact ``IndexFlatIP``. Above it ``kind``
    chooses IVF or HNSW. IVF: ``nlist`` lists (0: ``default_nlist``), ``nprobe`` visited
    per query (0: ``default_nprobe``), centroids from spherical k-means on at most
    ``train_per_list`` x nlist vectors sampled with ``seed``. HNSW: ``hnsw_m`` links per
    node, ``ef_search`` / ``ef_construction`` beam widths. ``threads``: faiss OpenMP
    threads (0: OMP_NUM_THREADS, else all cores); single-threaded builds are
    deterministic given the seed.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown ANN kind {kind!r}; known: {list(KINDS)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    faiss.omp_set_num_threads(thread_count(threads))
    params: dict[str, Any] = {"kind": "exact", "dim": d, "threads": threads, "seed": seed}
    if n < exact_below:
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = min(nlist or default_nlist(n), n)
        nprobe = min(nprobe or default_nprobe(nlist), nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.max_points_per_centroid = train_per_list
        index.train(vectors)
        params.update(kind="ivf", nlist=nlist, nprobe=nprobe, train_per_list=train_per_list)
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        params.update(kind="hnsw", hnsw_m=hnsw_m, ef_search=ef_search,
                      ef_construction=ef_construction)
    index.add(vectors)
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        if labels.shape != (n,):
            raise ValueError(f"labels: expected {n} ids, got shape {labels.shape}")
    return AnnIndex(index, params, labels)


def search_excluding(index: AnnIndex, queries: np.ndarray, k: int,
                     exclude: sp.csr_matrix | None = None, vectors: np.ndarray | None = None,
                     batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per query with the ids in row i of ``exclude`` removed from row i.

    Each batch asks the index for k + (most ids excluded in the batch), so no dense
    queries x items block is built. With ``vectors`` (rows by id) the survivors are
    re-scored exactly, one float64 dot product per (query, id) rounded to float32, so the
    result does not depend on how queries are batched; ties go to the lower id. The
    exclusions, re-scoring and ordering run per query in ``_keep_best`` (numba): with
    numpy's masks, gathered vector blocks and lexsort they cost as much as faiss's own
    search (the large profile's recall at 20k users: 12.7 of 22.5 s).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = len(queries)
    ids = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), -np.inf, np.float32)
    if n == 0 or k == 0:
        return ids, scores
    exclude = sp.csr_matrix((n, 1), dtype=np.float32) if exclude is None else exclude.tocsr()
    excluded = np.diff(exclude.indptr)
    rescore = np.ascontiguousarray(vectors if vectors is not None else np.zeros((0, 0)),
                                   dtype=np.float32)
    labelled = index.labels is not None and len(index.labels)
    width = max(exclude.shape[1], index.size, len(rescore),  # past every id found
                int(index.labels.max()) + 1 if labelled else 0)
    lo = 0
    while lo < n:
        hi = min(lo + batch, n)
        while hi - lo > 1 and (hi - lo) * (k + excluded[lo:hi].max()) * queries.shape[1] \
                > _RESCORE_CELLS:
            hi = lo + (hi - lo) // 2
        want = min(k + int(excluded[lo:hi].max()), index.size)
        found, found_scores = index.search(queries[lo:hi], want)
        _keep_best(found, np.ascontiguousarray(found_scores, np.float32), queries, rescore,
                   vectors is not None, exclude.indptr, exclude.indices, lo, width,
                   ids[lo:hi], scores[lo:hi])
        lo = hi
    return ids, scores


@numba.njit(cache=True, nogil=True)
def _keep_best(found: np.ndarray, found_scores: np.ndarray, queries: np.ndarray,
               vectors: np.ndarray, rescore: bool, ex_indptr: np.ndarray,
               ex_indices: np.ndarray, first: int, width: int, ids: np.ndarray,
               scores: np.ndarray) -> None:
    """For each query row r of the batch (query ``first + r``): its found ids less -1 and
    its excluded ids, scored (re-scored from ``vectors`` when ``rescore``), the best
    ``ids.shape[1]`` by ``descending_key`` written to ``ids[r]`` / ``scores[r]``."""
    k = ids.shape[1]
    banned = np.full(width, -1, np.int64)
    at = np.empty(width, np.int64)  # where each kept id's score is
    keys = np.empty(found.shape[1], np.uint64)
    value = np.empty(found.shape[1], np.float32)
    bits = value.view(np.uint32)
    for r in range(found.shape[0]):
        q = first + r
        for e in range(ex_indptr[q], ex_indptr[q + 1]):
            banned[ex_indices[e]] = q
        n = 0
        for c in range(found.shape[1]):
            item = found[r, c]
            if item < 0 or banned[item] == q:
                continue
            if rescore:
                total = 0.0
                for d in range(queries.shape[1]):
                    total += np.float64(queries[q, d]) * np.float64(vectors[item, d])
                value[n] = np.float32(total)
            else:
                value[n] = found_scores[r, c]
            keys[n] = descending_key(value[n], bits[n], item)
            at[item] = n
            n += 1
        best = np.sort(keys[:n])[:k]
        for j in range(len(best)):
            item = np.int64(best[j] & np.uint64(0xFFFFFFFF))
            ids[r, j], scores[r, j] = item, value[at[item]]
