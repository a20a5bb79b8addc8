"""Ordering a request's candidates: the top k by a score, and the rank blend's inputs.

The rank stage writes its lists with these and evaluate re-ranks FM/FFM scores with the
same ``top_k``, so every system in the ablation is cut and tie-broken alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.arrays import grouped_order
from models.blend import request_rank
from pipeline import schema as S


def top_k(frame: pd.DataFrame, key: str, scores: np.ndarray, k: int,
          channels: list[str] | None = None) -> pd.DataFrame:
    """Each request's k best candidates by ``scores`` (ties: merge order; NaN last),
    requests in ``key`` order; given the recommending ``channels`` (in channel order), a
    ``channels`` column names those that proposed each kept candidate
    (``proposing_channels``, worked out for the kept rows only: a served request keeps 10
    of its 300). One ordering (``grouped_order``) and a frame built once: 4-5x faster than
    sorting the frame on a served request's 300 rows (``tests/unit/test_ranking.py``
    holds the two equal)."""
    keys = [c for c in (key, S.USER) if c in frame.columns]
    scores = np.asarray(scores)
    groups = pd.factorize(frame[key], sort=True)[0]
    order = grouped_order(groups, scores, frame["merge_rank"].to_numpy())
    within = np.arange(len(order)) - np.searchsorted(groups[order], groups[order])
    kept = order[within < k]
    columns = {c: frame[c].array[kept] for c in [*dict.fromkeys(keys), S.ITEM]}
    if channels is not None:
        columns["channels"] = proposing_channels(frame, channels, kept)
    return pd.DataFrame({**columns, S.SCORE: scores[kept],
                         S.RANK: (within[within < k] + 1).astype(np.int32)})


def blend_components(frame: pd.DataFrame, key: str, rankers: dict[str, np.ndarray],
                     channels: list[str]) -> dict[str, np.ndarray]:
    """Ranks per row within the request: each ranker's, then each channel's own rank."""
    groups = frame[key].to_numpy()
    ranks = {f"ltr:{name}": request_rank(groups, scores) for name, scores in rankers.items()}
    for name in channels:
        ranks[f"channel:{name}"] = frame[f"{name}_rank"].to_numpy(np.float64)
    return ranks


def system_file(name: str) -> str:
    """A system's name as a file stem (``ltr:lambdarank`` -> ``ltr-lambdarank``)."""
    return name.replace(":", "-")


def proposing_channels(frame: pd.DataFrame, channels: list[str],
                       rows: np.ndarray | None = None) -> np.ndarray:
    """Per candidate (of ``rows``, else every one), the channels that retrieved it,
    comma-separated in channel order (the merge keeps each channel's rank, null where it
    did not retrieve the item)."""
    picked = slice(None) if rows is None else rows
    proposed = np.zeros(len(frame) if rows is None else len(rows), np.int64)  # a bit each
    for bit, name in enumerate(channels):
        proposed |= (~frame[f"{name}_rank"].array[picked].isna()).astype(np.int64) << bit
    codes, sets = pd.factorize(proposed)  # a few dozen distinct sets: name each once
    names = [",".join(n for bit, n in enumerate(channels) if s >> bit & 1) for s in sets]
    return np.array(names, dtype=object)[codes]
