"""ANN search: the configured IVF index against exact ``IndexFlatIP`` on the same vectors.

1M x 64 vectors drawn from a seeded Gaussian mixture (1000 unit-variance centres, noise
0.7 around them, lognormal norms: clustered and un-normalised, like learned item
embeddings), 2000 queries from the same mixture, top 100 by inner product, one thread.
Recall@100 is the share of the exact top 100 the index returns; the speed-up is exact
search time over index search time (best of a few runs each). The index is built with
``models.ann.build_index`` defaults, as a recall channel would build it; a sweep over
``nprobe`` on the same trained index shows the trade-off around it.
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from benchmarks.common import best_of, record
from models.ann import build_index

N, DIM, CENTRES, SPREAD, QUERIES, K = 1_000_000, 64, 1000, 0.7, 2000, 100
SWEEP = (4, 8, 16)


def mixture(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = centres[rng.integers(len(centres), size=n)]
    x += SPREAD * rng.standard_normal(x.shape, dtype=np.float32)
    x *= rng.lognormal(0.0, 0.2, size=(n, 1)).astype(np.float32)
    return x


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(found, truth,
                                                                               strict=True))
    return hits / truth.size


def main() -> dict:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    vectors, queries = mixture(N, centres, rng), mixture(QUERIES, centres, rng)

    exact = build_index(vectors, exact_below=N + 1, threads=1)
    exact_s, (truth, _) = best_of(lambda: exact.search(queries, K), repeats=2)
    started = time.perf_counter()
    ann = build_index(vectors, seed=0, threads=1)
    build_s = time.perf_counter() - started
    ann_s, (found, _) = best_of(lambda: ann.search(queries, K))
    recall = recall_at(found, truth)

    rows = [f"| exact IndexFlatIP | 1.000 | {exact_s:.3f} | 1.0 |",
            f"| {ann.describe()} (default) | {recall:.3f} | {ann_s:.3f} | "
            f"{exact_s / ann_s:.1f} |"]
    configured = ann.params["nprobe"]
    for nprobe in SWEEP:
        ann.index.nprobe = nprobe
        seconds, (ids, _) = best_of(lambda: ann.search(queries, K))
        rows.append(f"| nprobe={nprobe} | {recall_at(ids, truth):.3f} | {seconds:.3f} | "
                    f"{exact_s / seconds:.1f} |")
    ann.index.nprobe = configured

    summary = {"ann_recall_at_100": round(recall, 4),
               "ann_speedup_vs_exact": round(exact_s / ann_s, 1),
               "ann_index": f"{ann.describe()}, trained in {build_s:.1f}s on "
                            f"{min(N, ann.params['nlist'] * ann.params['train_per_list'])} "
                            "vectors, 1 thread",
               "ann_exact_seconds": round(exact_s, 3), "ann_seconds": round(ann_s, 3)}
    table = (f"{N} x {DIM} mixture vectors, {QUERIES} queries, top {K} by inner product, "
             "1 thread\n\n| index | recall@100 | seconds | speed-up vs exact |\n|---|---|---|---|\n"
             + "\n".join(rows))
    record("ann", "make bench-recall", summary, table)
    return summary


if __name__ == "__main__":
    main()
