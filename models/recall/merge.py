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

from models.base import TopK


@dataclass(frozen=True)
class ChannelList:
    name: str
    top: TopK
    quota: int


def _long(lists: list[ChannelList]) -> pd.DataFrame:
    frames = []
    for pos, cl in enumerate(lists):
        rows, cols = np.nonzero(cl.top.items >= 0)
        frames.append(pd.DataFrame({
            "row": rows, "item": cl.top.items[rows, cols], "channel": pos,
            "rank": cols + 1, "score": cl.top.scores[rows, cols],
        }))
    return pd.concat(frames, ignore_index=True)


def merge_candidates(lists: list[ChannelList], budget: int) -> pd.DataFrame:
    """Columns: row, item, merge_rank, source, n_channels, <channel>_score, <channel>_rank."""
    names = [cl.name for cl in lists]
    long = _long(lists)
    quotas = np.array([cl.quota for cl in lists])
    channel = long["channel"].to_numpy()
    rank = long["rank"].to_numpy()
    order = pd.DataFrame({
        "row": long["row"], "item": long["item"], "channel": channel,
        "stage": (rank > quotas[channel]).astype(np.int8),
        "position": rank / np.maximum(quotas[channel], 1),
    })
    merged = (order.sort_values(["row", "stage", "position", "channel"], kind="stable")
              .drop_duplicates(["row", "item"], keep="first"))
    merged["merge_rank"] = merged.groupby("row", sort=False).cumcount() + 1
    merged = merged[merged["merge_rank"] <= budget]
    out = merged[["row", "item", "merge_rank"]].reset_index(drop=True)
    out["source"] = pd.Categorical.from_codes(merged["channel"].to_numpy(), categories=names)

    evidence = long.set_index(["row", "item", "channel"])[["score", "rank"]].unstack("channel")
    evidence.columns = [f"{names[ch]}_{field}" for field, ch in evidence.columns]
    out = out.join(evidence, on=["row", "item"])
    for name in names:
        for field, dtype in (("score", "float32"), ("rank", "Int32")):
            col = f"{name}_{field}"
            out[col] = out[col].astype(dtype) if col in out else pd.Series(pd.NA, index=out.index,
                                                                            dtype=dtype)
    out["n_channels"] = out[[f"{n}_rank" for n in names]].notna().sum(axis=1).astype("int8")
    return out


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
    n_pairs = 1 + max((int(h.max()) for h in hits.values() if h.size), default=0)
    found_pairs = np.zeros(n_pairs, bool)
    placed = np.empty(0, np.int64)
    rows = np.arange(n_rows)[:, None]
    quotas, found = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    used = 0.0

    def window(name: str) -> tuple[int, np.ndarray, np.ndarray]:
        q = quotas[name]
        items = lists[name][:, q: q + step]
        keys = (rows * width + items)[items >= 0]
        pairs = hits[name][:, q: q + step]
        pairs = np.unique(pairs[pairs >= 0])
        return len(keys), np.setdiff1d(keys, placed), pairs[~found_pairs[pairs]]

    while used < budget:
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
        placed = np.union1d(placed, new_keys)
        found_pairs[new_pairs] = True
        quotas[best] += step
        found[best] += len(new_pairs)
        used = len(placed) / max(n_rows, 1)
    left = max(int(budget - used), 0)
    total = sum(found.values())
    for name in names:
        quotas[name] += int(left * (found[name] / total if total else 1 / len(names)))
    return quotas
