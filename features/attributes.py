"""Item attributes as a sparse items x terms matrix (``category:x``, ``tag:y``).

Multi-valued fields share a weight of one per field per item (an item with four tags
gives each 0.25), so an item with many tags does not outweigh one with a single tag.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def attribute_matrix(items: pd.DataFrame, fields: tuple[str, ...] = ("category", "tags")
                     ) -> tuple[sp.csr_matrix, list[str]]:
    """Rows aligned with ``items``; returns the matrix and its term names."""
    rows, terms, weights = [], [], []
    for field in fields:
        if field not in items.columns:
            continue
        values = items[field]
        if field == "tags":
            lists = [list(v) if v is not None and not isinstance(v, float) else []
                     for v in values]
        else:
            lists = [[] if pd.isna(v) else [v] for v in values]
        lengths = np.array([len(x) for x in lists])
        rows.append(np.repeat(np.arange(len(items)), lengths))
        prefix = "tag" if field == "tags" else field
        terms.extend(f"{prefix}:{v}" for x in lists for v in x)
        weights.append(np.repeat(1.0 / np.maximum(lengths, 1), lengths))
    if not terms:
        return sp.csr_matrix((len(items), 0), dtype=np.float32), []
    vocab, codes = np.unique(np.array(terms, dtype=object).astype(str), return_inverse=True)
    matrix = sp.csr_matrix((np.concatenate(weights).astype(np.float32),
                            (np.concatenate(rows), codes)), shape=(len(items), len(vocab)))
    matrix.sum_duplicates()
    return matrix, vocab.tolist()
