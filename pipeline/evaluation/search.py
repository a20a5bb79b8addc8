"""Search figures beyond NDCG: how often a system returns nothing, and head vs tail queries.

A search case is one search interaction of the evaluated window (its query and the item
clicked). Its query is *head* when the same query, case-folded with runs of spaces
collapsed, was typed at least ``head_min_searches`` times in the phase's fitting data
(nothing from the evaluated window decides it), and *tail* otherwise: a ranking that
only learns the frequent queries looks good on the head and fails the long tail.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import schema as S
from pipeline.evaluation.bootstrap import bootstrap_cis
from pipeline.protocol import is_search

HEAD, TAIL = "head", "tail"


def normalise_query(queries: pd.Series) -> pd.Series:
    return queries.astype("string").str.casefold().str.split().str.join(" ")


def query_segments(cases: pd.DataFrame, fitting: pd.DataFrame, head_min_searches: int
                   ) -> pd.Series:
    """``head`` or ``tail`` per case (cases keyed by ``user_id``, with ``query``)."""
    typed = normalise_query(fitting.loc[is_search(fitting), S.QUERY]).value_counts()
    counts = normalise_query(cases[S.QUERY]).map(typed).fillna(0).to_numpy()
    return pd.Series(np.where(counts >= head_min_searches, HEAD, TAIL),
                     index=pd.Index(cases[S.USER].to_numpy(), name=S.USER), name="segment")


def zero_result_rate(lists: pd.DataFrame, cases: pd.DataFrame) -> float:
    """Share of cases for which the system returned no item at all."""
    answered = cases[S.USER].isin(lists[S.USER])
    return float(1.0 - answered.mean()) if len(cases) else 0.0


def search_report(lists: dict[str, pd.DataFrame], per_case: dict[str, pd.Series],
                  cases: pd.DataFrame, fitting: pd.DataFrame, head_min_searches: int,
                  k: int, resamples: int, seed: int) -> dict:
    """Per search system: its zero-result rate, and its NDCG@k (``per_case``, indexed by
    case) with a bootstrap interval over the head cases and over the tail cases."""
    segments = query_segments(cases, fitting, head_min_searches)
    counts = segments.value_counts()
    report: dict = {"head_min_searches": head_min_searches,
                    "cases": {s: int(counts.get(s, 0)) for s in (HEAD, TAIL)},
                    "zero_result_rate": {}, f"ndcg@{k}": {HEAD: {}, TAIL: {}}}
    slices = {}  # (segment, system): its cases' values, all bootstrapped together
    for name, df in lists.items():
        report["zero_result_rate"][name] = zero_result_rate(df, cases)
        values = per_case[name]
        of = segments.reindex(values.index).to_numpy()
        for segment in (HEAD, TAIL):
            mine = values.to_numpy()[of == segment]
            if len(mine):
                slices[segment, name] = mine
    for (segment, name), ci in zip(slices, bootstrap_cis(list(slices.values()), resamples,
                                                         seed), strict=True):
        report[f"ndcg@{k}"][segment][name] = [ci["mean"], ci["low"], ci["high"]]
    return report
