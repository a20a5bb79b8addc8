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


def tune_quotas(hits: dict[str, np.ndarray], budget: int, step: int) -> dict[str, int]:
    """Split ``budget`` slots among channels greedily by new held-out hits per step.

    ``hits[name]`` holds, per sampled user and rank, the id of the held-out (user, item)
    pair the channel retrieved there, or -1. Each step gives ``step`` more slots to the
    channel whose next ``step`` ranks find the most pairs no chosen slot has found yet;
    when no channel finds anything new, the rest goes to the channels in proportion to
    what they found so far. Tuned on held-out data only, never on test.
    """
    names = list(hits)
    n_pairs = 1 + max((int(h.max()) for h in hits.values() if h.size), default=0)
    covered = np.zeros(n_pairs, bool)
    quotas = dict.fromkeys(names, 0)
    found = dict.fromkeys(names, 0)
    while sum(quotas.values()) + step <= budget:
        gains = {}
        for name in names:
            q = quotas[name]
            window = hits[name][:, q: q + step]
            ids = np.unique(window[window >= 0])
            gains[name] = int((~covered[ids]).sum())
        best = max(names, key=lambda n: (gains[n], -names.index(n)))
        if gains[best] == 0:
            break
        q = quotas[best]
        window = hits[best][:, q: q + step]
        covered[window[window >= 0]] = True
        quotas[best] += step
        found[best] += gains[best]
    left = budget - sum(quotas.values())
    total = sum(found.values())
    for name in names:
        share = found[name] / total if total else 1 / len(names)
        quotas[name] += int(left * share)
    return quotas
