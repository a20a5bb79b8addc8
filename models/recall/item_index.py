"""Item vectors searched through a faiss index, for the channels that embed items.

The index is built from the channel's own settings (``exact_below``, ``ann``, ``nlist``,
``nprobe``, ``hnsw_m``, ``ef_search``, ``seed``, ``threads``: see
``models.ann.build_index``) over the items worth retrieving, searched in batches of
``batch`` rows with each row's excluded items dropped and the survivors re-scored
exactly, and saved as its own folder (``index/``) beside the channel's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from models.ann import AnnIndex, build_index, search_excluding
from models.base import TopK


class ItemVectorIndex:
    """Mixin for a recall channel with ``params`` and ``item_vecs`` (items x d): builds,
    searches, saves and loads its ``index``."""

    params: dict[str, Any]
    item_vecs: np.ndarray | None
    index: AnnIndex | None

    def _index_items(self, labels: np.ndarray) -> None:
        """Index the vectors of the items ``labels`` (the only ones ever retrieved)."""
        p = self.params
        self.index = build_index(
            self.item_vecs[labels], labels=labels, exact_below=p["exact_below"], kind=p["ann"],
            nlist=p["nlist"], nprobe=p["nprobe"], hnsw_m=p["hnsw_m"], ef_search=p["ef_search"],
            seed=p["seed"], threads=p["threads"])

    def _search_items(self, queries: np.ndarray, rows: np.ndarray, n_rows: int, k: int,
                      exclude: sp.csr_matrix | None, chunk: int) -> TopK:
        """Top-k items of ``n_rows`` result rows: row ``rows[i]`` answers ``queries[i]``
        without the items of ``exclude[i]``; the other rows get nothing (-1 / -inf)."""
        items = np.full((n_rows, k), -1, np.int64)
        scores = np.full((n_rows, k), -np.inf, np.float32)
        items[rows], scores[rows] = search_excluding(
            self.index, queries, k, exclude, self.item_vecs, batch=chunk or self.params["batch"])
        return TopK(items, scores)

    def _save_extra(self, folder: Path) -> None:
        self.index.save(folder / "index")

    def _load_extra(self, folder: Path) -> None:
        self.index = AnnIndex.load(folder / "index")
