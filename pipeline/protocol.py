"""The roll-forward protocol's vocabulary: phases, request kinds and their keys.

A phase fits every model on some parts of the split and serves the requests of a later
part, so nothing is ever fitted on the period it is judged on. ``valid`` tunes (channels
early-stop on it, quotas are chosen on it) and labels the ranker's training rows; ``test``
refits on more data with those choices and is only ever scored; ``publish`` refits on
everything up to the as-of time with the same choices and answers every active user:
what the product serves next, with a ranker trained on the latest labelled window (test).
A new phase is one entry in ``PHASES``.

A request is either a recommendation (one per user, keyed by ``user_id``) or a search
(one per interaction carrying a query, keyed by ``case_id``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline import schema as S

CASE = "case_id"
LABEL = "label"
RECOMMENDATION = "recommendation"
SEARCH = "search"
KINDS = (RECOMMENDATION, SEARCH)


@dataclass(frozen=True)
class Phase:
    """``fit``: the split parts models learn from; ``target``: the part whose requests
    the phase answers (None: every active user, the publication); ``tunes``: choices
    are made here (early stopping, quotas) and the ranker learns from its labelled
    rows; ``evaluated``: the offline metrics are this phase's."""

    name: str
    fit: tuple[str, ...]
    target: str | None
    tunes: bool = False
    evaluated: bool = False


PHASES: tuple[Phase, ...] = (
    Phase("valid", fit=("train",), target="valid", tunes=True),
    Phase("test", fit=("train", "valid"), target="test", evaluated=True),
    Phase("publish", fit=("train", "valid", "test"), target=None),
)
PHASE_NAMES = tuple(p.name for p in PHASES)
TUNING = next(p for p in PHASES if p.tunes)
EVALUATED = next(p for p in PHASES if p.evaluated)
PUBLISHED = next(p for p in PHASES if p.target is None)
BACKTEST = tuple(p for p in PHASES if p.target is not None)  # phases with held-out targets


def request_key(kind: str) -> str:
    """The column naming one request of ``kind``."""
    if kind not in KINDS:
        raise KeyError(f"unknown request kind {kind!r}; kinds are {', '.join(KINDS)}")
    return CASE if kind == SEARCH else S.USER


def is_search(df: pd.DataFrame) -> np.ndarray:
    """Rows that are search interactions (they carry a query)."""
    return df[S.QUERY].notna().to_numpy() if S.QUERY in df.columns else np.zeros(len(df), bool)


def as_user_keyed(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Lists or cases with the request key in the ``user_id`` column, as the metric code
    expects: a search case stands where a user stands in recommendation."""
    if kind != SEARCH:
        return df
    return df.drop(columns=[S.USER], errors="ignore").rename(columns={CASE: S.USER})



def clicks(targets: pd.DataFrame) -> pd.DataFrame:
    """The distinct (user, item) pairs of a period's recommendation interactions."""
    return targets[~is_search(targets)][[S.USER, S.ITEM]].drop_duplicates()


def click_labels(frame: pd.DataFrame, key: str, clicked: pd.DataFrame) -> np.ndarray:
    """1 where a candidate row's (request, item) is among ``clicked``, else 0 (int8)."""
    hit = frame[[key, S.ITEM]].merge(clicked.assign(**{LABEL: 1}), on=[key, S.ITEM],
                                     how="left")[LABEL]
    return hit.fillna(0).to_numpy(np.int8)
