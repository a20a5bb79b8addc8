"""Array helpers measured faster than numpy's own on this pipeline's workloads."""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for integer keys, by one sort.

    numpy 2.3+ answers a plain ``np.unique`` with a hash table, which on millions of
    distinct int64 keys (the (user, item) pair keys every stage builds) took 5.4 s here
    against 0.42 s for sorting (5M keys, numpy 2.4.6; numpy PR #30496 measures the same
    kind of integer cases). Not for floats: NaNs are not collapsed.
    """
    ordered = np.sort(values, axis=None)
    keep = np.ones(ordered.size, bool)
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def sorted_contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.isin(keys, sorted_keys)`` for a sorted ``sorted_keys``, by one binary search
    per key: numpy sorts all of ``keys`` with them instead, 3-5x slower when ``keys``
    (every ranked cell) far outnumber ``sorted_keys`` (the relevant pairs)."""
    return sorted_positions(sorted_keys, keys)[1]


def sorted_positions(sorted_keys: np.ndarray, keys: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``keys`` is in the sorted ``sorted_keys`` and whether it is there
    (read the positions where it is: the others point anywhere)."""
    if not sorted_keys.size:
        return np.zeros(np.shape(keys), np.int64), np.zeros(np.shape(keys), bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return at, sorted_keys[at] == keys


def gathered_sums(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values[v][idx].sum(axis=1)`` for every row v of ``values`` (vectors x n) at once,
    bit for bit, as a (vectors x rows of ``idx``) float64 array.

    numpy gathers each (rows x m) block into a copy before summing it; the bootstrap sums
    a 1000 x users draw per vector that way. Here each cell is read in place and added
    in numpy's own pairwise order (``_pairwise_plan``), so the sums equal numpy's exactly.
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= values.shape[1]):
        raise IndexError(f"indices must lie in [0, {values.shape[1]})")
    blocks, plan = _pairwise_plan(idx.shape[1])
    out = np.empty((values.shape[0], idx.shape[0]))
    _gathered_sums(values, idx, blocks, plan, out)
    return out


def _pairwise_plan(n: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy's ``pairwise_sum`` (numpy/_core/src/umath/loops_utils.h.src) of n values as
    a program: blocks of at most 128 values (start, length), each summed directly, and a
    postfix order to add them in: a plan entry k >= 0 pushes block k's sum, -1 adds the
    two sums on top. numpy halves a run longer than 128 (the first half a multiple of 8)
    and adds the halves' sums. (numba cannot cache a recursive function, hence a plan.)"""
    blocks: list[tuple[int, int]] = []
    plan: list[int] = []

    def visit(start: int, length: int) -> None:
        if length <= 128:
            plan.append(len(blocks))
            blocks.append((start, length))
            return
        half = length // 2 - length // 2 % 8
        visit(start, half)
        visit(start + half, length - half)
        plan.append(-1)

    visit(0, n)
    return np.array(blocks, np.int64).reshape(-1, 2), np.array(plan, np.int64)


@numba.njit(cache=True, nogil=True)
def _gathered_sums(values: np.ndarray, idx: np.ndarray, blocks: np.ndarray, plan: np.ndarray,
                   out: np.ndarray) -> None:
    stack = np.empty(len(plan))
    for r in range(idx.shape[0]):
        row = idx[r]
        for v in range(values.shape[0]):
            depth = 0
            for step in plan:
                if step >= 0:
                    stack[depth] = _block_sum(values[v], row, blocks[step, 0], blocks[step, 1])
                    depth += 1
                else:
                    depth -= 1
                    stack[depth - 1] += stack[depth]
            out[v, r] = stack[0]


@numba.njit(cache=True, nogil=True, inline="always")
def _block_sum(values: np.ndarray, idx: np.ndarray, start: int, n: int) -> float:
    """numpy's sum of at most 128 values: in order below 8, else eight running sums."""
    if n < 8:
        total = 0.0
        for i in range(start, start + n):
            total += values[idx[i]]
        return total
    s0, s1, s2, s3 = (values[idx[start]], values[idx[start + 1]],
                      values[idx[start + 2]], values[idx[start + 3]])
    s4, s5, s6, s7 = (values[idx[start + 4]], values[idx[start + 5]],
                      values[idx[start + 6]], values[idx[start + 7]])
    stop = start + n - n % 8
    for i in range(start + 8, stop, 8):
        s0 += values[idx[i]]
        s1 += values[idx[i + 1]]
        s2 += values[idx[i + 2]]
        s3 += values[idx[i + 3]]
        s4 += values[idx[i + 4]]
        s5 += values[idx[i + 5]]
        s6 += values[idx[i + 6]]
        s7 += values[idx[i + 7]]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for i in range(stop, start + n):
        total += values[idx[i]]
    return total


def sparse_values(m: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``m[rows, cols]`` as a flat array of ``m``'s dtype (0 where nothing is stored), by
    a binary search of each pair's column within its row.

    scipy's pair indexing scans a row's stored entries for every pair unless the pairs
    outnumber a tenth of all stored entries; a candidate set reads ~300 pairs from rows
    holding thousands (co-occurrence scores over a 10k catalogue), which made it 7 of the
    features stage's 46 s on synthetic-10k.
    """
    m = _canonical(m)
    out = np.zeros(len(rows), m.dtype)
    _csr_lookup(m.indptr, m.indices, m.data, np.asarray(rows, np.int64),
                np.asarray(cols, np.int64), out)
    return out


@numba.njit(cache=True, nogil=True)
def _csr_lookup(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray,
                cols: np.ndarray, out: np.ndarray) -> None:
    for p in range(len(rows)):
        lo, end = indptr[rows[p]], indptr[rows[p] + 1]
        hi = end
        while lo < hi:
            mid = (lo + hi) >> 1
            if indices[mid] < cols[p]:
                lo = mid + 1
            else:
                hi = mid
        if lo < end and indices[lo] == cols[p]:
            out[p] = data[lo]


def sparse_row_dots(a: sp.spmatrix, rows: np.ndarray, b: sp.spmatrix, cols: np.ndarray
                    ) -> np.ndarray:
    """``a[rows].multiply(b[cols]).sum(axis=1)`` as a flat float64 array, without
    building either row-gathered matrix: ``a``'s row is spread into a dense vector while
    consecutive pairs share it (the candidates of one request), each of ``b``'s row
    entries (an item's few terms) read from it, and the products added in column order
    (scipy's order depends on how its inputs' entries are stored, so the two can differ
    in the last bit). Gathering and multiplying 600k sparse rows a chunk was a third of
    the features stage (the category, tag and BM25 profile scores)."""
    a, b = _canonical(a), _canonical(b)
    out = np.zeros(len(rows))
    _row_dots(a.indptr, a.indices, np.asarray(a.data, np.float64), np.asarray(rows, np.int64),
              b.indptr, b.indices, np.asarray(b.data, np.float64), np.asarray(cols, np.int64),
              np.zeros(max(a.shape[1], b.shape[1])), out)
    return out


def row_scaled(m: sp.csr_matrix, scale: np.ndarray) -> sp.csr_matrix:
    """``diag(scale) @ m`` without the product: each row's stored values times its scale,
    the structure shared with ``m`` (a diagonal matrix product cost a served request 0.1
    to 0.35 ms, and one the size of a vocabulary more)."""
    return sp.csr_matrix((m.data * np.repeat(scale, np.diff(m.indptr)), m.indices, m.indptr),
                         shape=m.shape)


def _canonical(m: sp.spmatrix) -> sp.csr_matrix:
    """CSR with sorted column indices and no duplicates: ``m`` itself where it is one
    (read only here), so its checked format stays known to it instead of a new wrapper
    being checked again on every call."""
    if isinstance(m, sp.csr_matrix) and m.has_canonical_format:
        return m
    m = sp.csr_matrix(m)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return m


@numba.njit(cache=True, nogil=True)
def _row_dots(a_indptr: np.ndarray, a_indices: np.ndarray, a_data: np.ndarray,
              rows: np.ndarray, b_indptr: np.ndarray, b_indices: np.ndarray,
              b_data: np.ndarray, cols: np.ndarray, dense: np.ndarray, out: np.ndarray
              ) -> None:
    spread = -1  # the row of ``a`` held in ``dense`` (zeros elsewhere)
    for p in range(len(rows)):
        if rows[p] != spread:
            if spread >= 0:
                dense[a_indices[a_indptr[spread]:a_indptr[spread + 1]]] = 0.0
            spread = rows[p]
            for q in range(a_indptr[spread], a_indptr[spread + 1]):
                dense[a_indices[q]] = a_data[q]
        total = 0.0
        for q in range(b_indptr[cols[p]], b_indptr[cols[p] + 1]):
            total += dense[b_indices[q]] * b_data[q]
        out[p] = total


def row_dots(left: np.ndarray, left_rows: np.ndarray, right: np.ndarray,
             right_rows: np.ndarray) -> np.ndarray:
    """``(left[left_rows] * right[right_rows]).sum(axis=1)`` in float64, read in place:
    numpy gathers both (pairs x factors) blocks first, 14 of the features stage's 110 s
    (the embedding's score of 600k candidate pairs a chunk). Four running sums over the
    factors, in a fixed order, so a pair's score does not depend on its neighbours."""
    out = np.empty(len(left_rows))
    _dense_row_dots(np.ascontiguousarray(left), np.asarray(left_rows, np.int64),
                    np.ascontiguousarray(right), np.asarray(right_rows, np.int64), out)
    return out


@numba.njit(cache=True, nogil=True)
def _dense_row_dots(left: np.ndarray, left_rows: np.ndarray, right: np.ndarray,
                    right_rows: np.ndarray, out: np.ndarray) -> None:
    width = left.shape[1]
    body = width - width % 4
    for p in range(len(left_rows)):
        a, b = left[left_rows[p]], right[right_rows[p]]
        s0 = s1 = s2 = s3 = 0.0
        for f in range(0, body, 4):
            s0 += np.float64(a[f]) * np.float64(b[f])
            s1 += np.float64(a[f + 1]) * np.float64(b[f + 1])
            s2 += np.float64(a[f + 2]) * np.float64(b[f + 2])
            s3 += np.float64(a[f + 3]) * np.float64(b[f + 3])
        total = (s0 + s1) + (s2 + s3)
        for f in range(body, width):
            total += np.float64(a[f]) * np.float64(b[f])
        out[p] = total


@numba.njit(cache=True, nogil=True, inline="always")
def descending_key(value: float, bits: int, column: int) -> np.uint64:
    """A (score, column) pair as one uint64 whose ascending order is the scores'
    descending order, ties to the lower column: ``bits`` are the float32 score's IEEE
    bits, folded so that larger floats give smaller keys (NaN ranks as +inf, -0.0 as 0.0,
    as ``top_k`` compares them)."""
    raw = np.uint64(0x7F800000 if np.isnan(value) else (0 if value == 0 else bits))
    folded = raw ^ np.uint64(0xFFFFFFFF) if raw >> np.uint64(31) else raw | np.uint64(0x80000000)
    return ((np.uint64(0xFFFFFFFF) - folded) << np.uint64(32)) | np.uint64(column)


def descending_keys(scores: np.ndarray) -> np.ndarray:
    """``descending_key`` of every entry of a float32 matrix (its column as the tie
    break), uint64, in one pass."""
    keys = np.empty(scores.shape, np.uint64)
    _descending_keys(np.ascontiguousarray(scores, np.float32), keys)
    return keys


@numba.njit(cache=True, nogil=True)
def _descending_keys(scores: np.ndarray, out: np.ndarray) -> None:
    bits = scores.view(np.uint32)
    for r in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            out[r, c] = descending_key(scores[r, c], bits[r, c], c)


def grouped_order(groups: np.ndarray, scores: np.ndarray,
                  tiebreak: np.ndarray | None = None) -> np.ndarray:
    """``np.lexsort((tiebreak, -scores, groups))``: rows by group code, within a group by
    score, highest first and NaN last, then by ``tiebreak`` (None: none), then in row
    order. One stable sort of the integer group codes and one or two small stable sorts
    per group (a request's few hundred candidates) instead of a three-key sort of every
    row: the rank stage orders every system's scores of every request this way."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_groups[1:] != sorted_groups[:-1])))
    _order_groups(order, np.append(starts, len(order)), -np.asarray(scores, np.float64),
                  np.zeros(0, np.int64) if tiebreak is None else np.asarray(tiebreak, np.int64))
    return order


@numba.njit(cache=True, nogil=True)
def _order_groups(order: np.ndarray, bounds: np.ndarray, keys: np.ndarray,
                  tiebreak: np.ndarray) -> None:
    """Each group's rows by ``keys`` (stable), after ``tiebreak`` where it is not empty."""
    for g in range(len(bounds) - 1):
        rows = order[bounds[g]:bounds[g + 1]]
        if len(tiebreak):
            rows = rows[np.argsort(tiebreak[rows], kind="mergesort")]
        order[bounds[g]:bounds[g + 1]] = rows[np.argsort(keys[rows], kind="mergesort")]
