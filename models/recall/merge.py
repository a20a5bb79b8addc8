"""Merge channel lists into one candidate set per user, keeping every channel's evidence.

Order of placement: first every channel's top ``quota`` items, interleaved by rank
relative to quota (rank / quota, so a channel with twice the quota places two items for
each one of the other; ties go to the channel listed first); an item already placed is
skipped, not re-counted. Then the remaining items of all channels, interleaved the same
way, fill the list up to the budget. The merge order is thus a sensible ranking on its
own, and the set always reaches the budget when the channels together hold enough items.
Every candidate keeps the score and rank each channel gave it (null where that channel
did not retrieve it) and ``n_channels``, the number of channels that retrieved it, so
the ranker can weigh the evidence later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.arrays import sorted_unique
from models.base import TopK, check_top_k


@dataclass(frozen=True)
class ChannelList:
    name: str
    top: TopK
    quota: int


def _long(lists: list[ChannelList]) -> dict[str, np.ndarray]:
    """Every retrieved (row, item) of every channel as flat arrays."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("row", "item", "channel", "rank",
                                                          "score")}
    for pos, cl in enumerate(lists):
        rows, cols = np.nonzero(cl.top.items >= 0)
        parts["row"].append(rows)
        parts["item"].append(cl.top.items[rows, cols])
        parts["channel"].append(np.full(len(rows), pos))
        parts["rank"].append(cols + 1)
        parts["score"].append(cl.top.scores[rows, cols])
    return {k: np.concatenate(v) for k, v in parts.items()}


def merge_candidates(lists: list[ChannelList], budget: int) -> pd.DataFrame:
    """Columns: row, item, merge_rank, source, n_channels, <channel>_score, <channel>_rank.

    A list holding an item code below -1, -1 with a score, a NaN or infinite score or an
    item twice in a row raises ``InvalidTopKError`` naming its channel: the merge would
    otherwise pass it on as a candidate for the later stages to trip over.
    """
    for cl in lists:
        check_top_k(cl.top, None, None, False, cl.name, ordered=False)
    names = [cl.name for cl in lists]
    long = _long(lists)
    quotas = np.array([cl.quota for cl in lists])
    ch, rank, row = long["channel"], long["rank"], long["row"]
    width = int(long["item"].max()) + 1 if len(ch) else 1
    pair = row.astype(np.int64) * width + long["item"]
    # placement key: quota stage first, then rank relative to quota, then channel order
    # (distinct rank/quota values differ by at least 1/(q1*q2) > 1e-6 >> 1e-8 * channel)
    key = (rank > quotas[ch]) * 1e6 + rank / np.maximum(quotas[ch], 1) + ch * 1e-8
    # one sort groups each pair's retrievals, earliest placement first; the rest is O(n)
    by_pair = np.lexsort((key, pair))
    head = np.ones(len(by_pair), bool)
    np.not_equal(pair[by_pair[1:]], pair[by_pair[:-1]], out=head[1:])
    group = np.empty(len(by_pair), np.int64)
    group[by_pair] = np.cumsum(head) - 1  # the pair of each retrieval, numbered
    first = by_pair[head]  # each pair's first placement
    placed = first[np.lexsort((key[first], row[first]))]  # in placement order per row
    rows = row[placed]
    merge_rank = np.arange(len(placed)) - np.searchsorted(rows, rows, side="left") + 1
    placed, merge_rank = placed[merge_rank <= budget], merge_rank[merge_rank <= budget]

    columns = {"row": row[placed], "item": long["item"][placed], "merge_rank": merge_rank,
               "source": pd.Categorical.from_codes(ch[placed], categories=names)}
    out_row = np.full(int(head.sum()), -1)
    out_row[group[placed]] = np.arange(len(placed))
    target = out_row[group]  # each retrieval's candidate row, -1 where not placed
    n_channels = np.zeros(len(placed), np.int8)
    bounds = np.searchsorted(ch, np.arange(len(names) + 1))  # _long: channel by channel
    for pos, name in enumerate(names):
        span = slice(bounds[pos], bounds[pos + 1])
        mine = target[span]
        hit = mine >= 0
        scores = np.full(len(placed), np.nan, np.float32)
        scores[mine[hit]] = long["score"][span][hit]
        ranks = np.zeros(len(placed), np.int32)
        ranks[mine[hit]] = rank[span][hit]
        found = np.zeros(len(placed), bool)
        found[mine[hit]] = True
        columns[f"{name}_score"] = scores
        columns[f"{name}_rank"] = pd.arrays.IntegerArray(ranks, ~found)
        n_channels += found
    columns["n_channels"] = n_channels
    return pd.DataFrame(columns)  # built once: a column at a time cost 3x as much


def tune_quotas(lists: dict[str, np.ndarray], hits: dict[str, np.ndarray], budget: int,
                step: int) -> dict[str, int]:
    """Quotas that buy the most held-out hits for the budget, chosen greedily.

    ``lists[name]`` holds the channel's item codes per sampled request and rank (-1 for
    none) and ``hits[name]`` the id of the held-out (request, item) pair found there (-1
    for a miss). Each step advances one channel's quota by ``step`` ranks: the channel
    whose next ranks find the most pairs not yet found per slot they newly take (an item
    another channel already placed costs nothing, as in the merge). Steps stop when the
    mean slots taken per request reach the budget or nothing new is found; slots left
    then go to the channels in proportion to what they found. Tuned on held-out data
    only, never on test.
    """
    names = list(lists)
    n_rows = next(iter(lists.values())).shape[0]
    width = 1 + max(int(a.max()) for a in lists.values())
    # every (request, item) key mapped once to a compact id, so "already placed" is a
    # boolean lookup and each step touches only its own window (-1: no item)
    keys = {n: np.where(a >= 0, np.arange(n_rows)[:, None] * width + a, -1)
            for n, a in lists.items()}
    vocab = sorted_unique(np.concatenate([k[k >= 0] for k in keys.values()]))
    ids = {n: np.where(k >= 0, np.searchsorted(vocab, k), -1) for n, k in keys.items()}
    placed = np.zeros(len(vocab), bool)
    n_pairs = 1 + max((int(h.max()) for h in hits.values() if h.size), default=0)
    found_pairs = np.zeros(n_pairs, bool)
    quotas, found = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    n_placed = 0

    def window(name: str) -> tuple[int, np.ndarray, np.ndarray]:
        q = quotas[name]
        cells = ids[name][:, q: q + step]
        cells = cells[cells >= 0]
        pairs = hits[name][:, q: q + step]
        pairs = sorted_unique(pairs[pairs >= 0])
        return len(cells), sorted_unique(cells[~placed[cells]]), pairs[~found_pairs[pairs]]

    while n_placed / max(n_rows, 1) < budget:
        best, best_rate, best_window = None, 0.0, None
        for name in names:
            n_keys, new_keys, new_pairs = window(name)
            while n_keys and not len(new_keys):  # all placed already: free, as in the merge
                quotas[name] += step
                n_keys, new_keys, new_pairs = window(name)
            rate = len(new_pairs) / max(len(new_keys), 1)
            if len(new_pairs) and rate > best_rate:
                best, best_rate, best_window = name, rate, (new_keys, new_pairs)
        if best is None:
            break
        new_keys, new_pairs = best_window
        placed[new_keys] = True
        n_placed += len(new_keys)
        found_pairs[new_pairs] = True
        quotas[best] += step
        found[best] += len(new_pairs)
    used = n_placed / max(n_rows, 1)
    left = max(int(budget - used), 0)
    total = sum(found.values())
    for name in names:
        quotas[name] += int(left * (found[name] / total if total else 1 / len(names)))
    return quotas
