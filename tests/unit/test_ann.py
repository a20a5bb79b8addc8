"""The faiss wrapper against its oracle: exact search must equal brute-force numpy, the
approximate indexes must keep most of the exact top list, and everything round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from models.ann import AnnIndex, build_index, default_nlist, default_nprobe, search_excluding


def clustered(n: int, d: int = 16, clusters: int = 40, spread: float = 0.5,
              seed: int = 0) -> np.ndarray:
    """A Gaussian mixture: unit-variance centres, ``spread`` noise around them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(clusters, size=n)] + spread * rng.standard_normal((n, d))
    return x.astype(np.float32)


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1]
                          for a, b in zip(found, truth, strict=True)]))


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ x.T.astype(np.float64)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def test_exact_index_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((50, 16)).astype(np.float32)
    index = build_index(x)
    assert index.kind == "exact" and index.describe() == "IndexFlatIP"
    ids, scores = index.search(q, 10, batch=7)
    want_ids, want_scores = brute_force(x, q, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_search_pads_when_k_exceeds_the_index() -> None:
    x = np.eye(3, dtype=np.float32)
    query = np.array([[3.0, 1.0, 2.0]], np.float32)
    ids, scores = build_index(x, labels=np.array([10, 20, 30])).search(query, 5)
    np.testing.assert_array_equal(ids[0], [10, 30, 20, -1, -1])
    np.testing.assert_array_equal(scores[0], [3, 2, 1, -np.inf, -np.inf])


def test_ivf_keeps_the_exact_top_10() -> None:
    x, q = clustered(20_000), clustered(200, seed=1)
    truth, _ = build_index(x).search(q, 10)
    ivf = build_index(x, exact_below=1000, nlist=64, nprobe=16, seed=0, threads=1)
    assert ivf.kind == "ivf" and ivf.params["nprobe"] == 16
    assert overlap(ivf.search(q, 10)[0], truth) >= 0.95


def test_hnsw_is_optional_and_close() -> None:
    x, q = clustered(3000), clustered(100, seed=1)
    truth, _ = build_index(x).search(q, 10)
    hnsw = build_index(x, exact_below=1000, kind="hnsw", hnsw_m=16, ef_search=64,
                       ef_construction=64, threads=1)
    assert hnsw.kind == "hnsw"
    assert overlap(hnsw.search(q, 10)[0], truth) >= 0.9


def test_unknown_kind_fails_loudly() -> None:
    with pytest.raises(ValueError, match="unknown ANN kind"):
        build_index(np.ones((3, 2), np.float32), kind="lsh")


def test_defaults_scale_with_size() -> None:
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(100) == 2  # at least 39 training points per list
    assert default_nprobe(4000) == 16 and default_nprobe(10_000) == 39
    assert default_nprobe(100) == 16 and default_nprobe(4) == 4


def test_ivf_is_deterministic_for_a_seed() -> None:
    x, q = clustered(5000), clustered(50, seed=1)
    a = build_index(x, exact_below=100, nlist=32, nprobe=2, seed=3, threads=1).search(q, 20)
    b = build_index(x, exact_below=100, nlist=32, nprobe=2, seed=3, threads=1).search(q, 20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    x, q = clustered(3000), clustered(30, seed=1)
    labels = np.arange(3000) * 2 + 1
    index = build_index(x, labels=labels, exact_below=10**6 if kind == "exact" else 100,
                        nlist=16, nprobe=4, threads=1)
    index.save(tmp_path / "ann")
    assert {p.suffix for p in (tmp_path / "ann").iterdir()} == {".faiss", ".json", ".npy"}
    loaded = AnnIndex.load(tmp_path / "ann")
    assert loaded.params == index.params
    for got, want in zip(loaded.search(q, 25), index.search(q, 25), strict=True):
        np.testing.assert_array_equal(got, want)


def test_search_excluding_matches_masked_brute_force_in_any_batch() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    q = rng.standard_normal((25, 8)).astype(np.float32)
    exclude = sp.random(25, 60, density=0.3, format="csr", random_state=3)
    index = build_index(x)
    ids, scores = search_excluding(index, q, 10, exclude, x, batch=25)
    dense = q.astype(np.float64) @ x.T.astype(np.float64)
    dense[exclude.toarray() > 0] = -np.inf
    want = np.argsort(-dense, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(dense, want, axis=1), rtol=1e-5)
    for batch in (1, 4):
        got = search_excluding(index, q, 10, exclude, x, batch=batch)
        np.testing.assert_array_equal(got[0], ids)
        np.testing.assert_array_equal(got[1], scores)


def test_search_excluding_everything_leaves_nothing() -> None:
    x = np.eye(4, dtype=np.float32)
    ids, scores = search_excluding(build_index(x), x[:2], 3, sp.csr_matrix(np.ones((2, 4))), x)
    assert (ids == -1).all() and np.isneginf(scores).all()
