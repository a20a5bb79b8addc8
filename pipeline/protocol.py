"""The roll-forward protocol's vocabulary: phases, request kinds and their keys.

A phase fits every model on some parts of the split and serves the requests of a later
part, so nothing is ever fitted on the period it is judged on. ``valid`` tunes (channels
early-stop on it, quotas are chosen on it) and labels the ranker's training rows; ``test``
refits on more data with those choices and is only ever scored. A new phase is one entry
in ``PHASES``.

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
    the phase answers; ``tunes``: choices are made here (early stopping, quotas) and the
    ranker learns from this phase's labelled rows."""

    name: str
    fit: tuple[str, ...]
    target: str
    tunes: bool


PHASES: tuple[Phase, ...] = (
    Phase("valid", fit=("train",), target="valid", tunes=True),
    Phase("test", fit=("train", "valid"), target="test", tunes=False),
)
PHASE_NAMES = tuple(p.name for p in PHASES)
TUNING = next(p for p in PHASES if p.tunes)
EVALUATED = PHASES[-1]  # the phase the offline metrics are reported on


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

