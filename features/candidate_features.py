"""Ranker features for (request, candidate) pairs, every one defined in ``FEATURES``.

Everything here is computed from one phase's fitting data (a ``RecallData``) and the
fitted recall models of that phase, never from the period the candidates are for, so the
ranker trained on valid-phase features sees exactly what the test phase will show it.
Statistics are per-user / per-item arrays built once with ``bincount``; a chunk of pairs
then only gathers from them, so the work is linear in fitting events plus pairs.
Popularity features are shares, not counts, because the test phase fits on a longer
history than the valid phase the ranker learns from. A source without regions,
categories or tags gives NaN for what needs them (missing, not zero evidence); within a
source that has them, an item without a category or a user without history gets 0.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.attributes import attribute_matrix
from features.interactions import interaction_matrix, with_rows
from features.recall_data import SECONDS_PER_DAY, RecallData, to_seconds
from models.arrays import grouped_order, sparse_row_dots, sparse_values

HOUR_BUCKETS = 6  # four-hour slots of the day


@dataclass(frozen=True)
class Feature:
    name: str
    meaning: str


FEATURES: tuple[Feature, ...] = (
    Feature("user_events", "the user's fitting interactions"),
    Feature("user_days_since_last", "days from the user's last interaction to the cut-off"),
    Feature("user_days_active", "days between the user's first and last interaction"),
    Feature("item_popularity", "the item's share of all fitting interactions (all-time "
            "popularity; a share, so the test phase's longer history keeps its scale)"),
    Feature("item_recent_popularity", "the item's share of the latest `recent_share` of "
            "fitting interactions (recent popularity)"),
    Feature("item_recent_share", "the item's recent interactions / all its interactions "
            "(is it trending)"),
    Feature("item_region_popularity", "the item's share of the interactions by users of the "
            "user's region (NaN without regions)"),
    Feature("item_age_days", "days from the item's creation (or first interaction) to the "
            "cut-off; NaN for an item created after it (its date would tell the future)"),
    Feature("item_days_since_last", "days from the item's last interaction to the cut-off"),
    Feature("category_affinity", "share of the user's history in the item's category"),
    Feature("tag_affinity", "the user's tag profile (share of history per tag) summed over "
            "the item's tags, each weighted 1/n_tags"),
    Feature("hour_match", "share of the item's events in the user's most active four-hour "
            "slot of the day (context)"),
    Feature("weekday_match", "share of the item's events on the user's most active weekday "
            "(context)"),
    Feature("<channel>_model_score", "the fitted recall model's score of the pair even where "
            "the channel did not retrieve it (`features.model_scores`: sequence, embedding "
            "dot product, co-occurrence with the user's whole and recent history, BM25 "
            "match of the user's profile terms)"),
    Feature("<column>_request_rank", "rank of the pair's model or FM/FFM score among the "
            "request's candidates (1 = best)"),
    Feature("<channel>_score / _rank", "recall channel score and rank (NaN: not retrieved), "
            "from the recall stage"),
    Feature("n_channels, merge_rank", "channels that retrieved the pair; merged-list "
            "position, from the recall stage"),
    Feature("fm_score, ffm_score", "FM/FFM click scores, from train-fm"),
)


def _per_code(codes: np.ndarray, values: np.ndarray, n: int, how: str) -> np.ndarray:
    """Min or max of ``values`` per code (NaN for codes without rows)."""
    out = np.full(n, np.nan)
    if len(codes):
        agg = pd.Series(values).groupby(codes).agg(how)
        out[agg.index.to_numpy()] = agg.to_numpy(np.float64)
    return out


def _hour_slot(ts: np.ndarray) -> np.ndarray:
    return (ts // 3600 % 24) * HOUR_BUCKETS // 24


def _weekday_slot(ts: np.ndarray) -> np.ndarray:
    return (ts // SECONDS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday (3)


def _modal(per_user: np.ndarray) -> np.ndarray:
    """Each row's most frequent slot, -1 for a row without events."""
    return np.where(per_user.sum(axis=1) > 0, per_user.argmax(axis=1), -1)


def _shares(per_item: np.ndarray) -> np.ndarray:
    """Each row's events per slot as shares of the row's events."""
    return per_item / np.maximum(per_item.sum(axis=1, keepdims=True), 1.0)


def _slot_counts(codes: np.ndarray, slots: np.ndarray, n: int, n_slots: int) -> np.ndarray:
    return np.bincount(codes * n_slots + slots, minlength=n * n_slots).reshape(n, n_slots)


def _event_keys(items: np.ndarray, ts: np.ndarray, n_items: int) -> np.ndarray:
    """Events as one sortable number each, time first then item: ``ts * n_items + item``."""
    return ts.astype(np.int64) * n_items + items


def _recent_cut(keys: np.ndarray, n_items: int, q: float) -> float:
    """``np.quantile`` (its linear method, bit for bit) at ``q`` of the times of the
    sorted event ``keys``: read at the two neighbours of numpy's virtual index instead of
    partitioning every time again (0.4 ms for a served click on ML-100K's log)."""
    n = len(keys)
    virtual = n * q + (1 - q) - 1  # numpy's, with alpha = beta = 1
    if virtual >= n - 1 or virtual < 0:
        return float(keys[-1 if virtual >= 0 else 0] // n_items)
    below = int(np.floor(virtual))
    gamma = virtual - below
    a, b = keys[below] // n_items, keys[below + 1] // n_items
    diff = b - a
    return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


def _recent_counts(keys: np.ndarray, n_items: int, recent_share: float) -> np.ndarray:
    """Per item, its events among the latest ``recent_share`` of all events (those at or
    after the ``1 - recent_share`` quantile of their times); ``keys``: every event's
    ``_event_keys``, sorted, so the cut is found by search, not by a pass over them."""
    if not len(keys):
        return np.zeros(n_items)
    cut = _recent_cut(keys, n_items, 1.0 - recent_share)
    start = np.searchsorted(keys, int(np.ceil(cut)) * n_items, "left")  # times are whole
    return np.bincount(keys[start:] % n_items, minlength=n_items).astype(np.float64)


def _row_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(m.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(sums, 1e-12)) @ m


class FeatureContext:
    """Per-user and per-item statistics of one phase's fitting data, built once."""

    def __init__(self, data: RecallData, recent_share: float = 0.1) -> None:
        log = data.log
        u, i = log["user"].to_numpy(), log["item"].to_numpy()
        ts = log["ts"].to_numpy(np.int64)
        nu, ni = data.n_users, data.n_items
        self.data, self.now, self.recent_share = data, float(data.now), recent_share
        self.user_events = np.bincount(u, minlength=nu).astype(np.float64)
        self.user_first = _per_code(u, ts, nu, "min")
        self.user_last = _per_code(u, ts, nu, "max")
        self.item_events = np.bincount(i, minlength=ni).astype(np.float64)
        self.event_keys = np.sort(_event_keys(i, ts, ni))  # for the recent cut
        self.item_recent = _recent_counts(self.event_keys, ni, recent_share)
        self.item_last = _per_code(i, ts, ni, "max")
        self.item_first = _per_code(i, ts, ni, "min")
        self.item_created = np.full(ni, np.nan)  # NaN: no creation date, first sight counts
        if "created_ts" in data.items.columns:
            created = data.items["created_ts"]
            known = created.notna().to_numpy()
            self.item_created[known] = to_seconds(created[known])
        self.item_born = np.where(np.isnan(self.item_created), self.item_first,
                                  self.item_created)
        self.user_region, self.region_items = self._regions(data, u, i)
        if self.region_items is not None:
            self.region_events = np.asarray(self.region_items.sum(axis=1)).ravel()
        self.category, _ = attribute_matrix(data.items, ("category",))
        self.tags, _ = attribute_matrix(data.items, ("tags",))
        self.history_share = _row_normalised(data.history.astype(np.float64))
        self.user_hour = _modal(_slot_counts(u, _hour_slot(ts), nu, HOUR_BUCKETS))
        self.item_hour_events = _slot_counts(i, _hour_slot(ts), ni, HOUR_BUCKETS)
        self.item_hour = _shares(self.item_hour_events)
        self.user_weekday = _modal(_slot_counts(u, _weekday_slot(ts), nu, 7))
        self.item_weekday_events = _slot_counts(i, _weekday_slot(ts), ni, 7)
        self.item_weekday = _shares(self.item_weekday_events)

    def with_events(self, data: RecallData, user: int, items: np.ndarray, ts: np.ndarray
                    ) -> FeatureContext:
        """The statistics of ``data``, this context's data with ``user``'s events (item
        codes, unix seconds) added by ``RecallData.with_events``: equal to a refit on it,
        but only the user's and the items' entries are worked out again (and the recent
        cut, a quantile of every event time), so a served request carrying a click does
        not pay for refitting the whole log."""
        items, ts = np.asarray(items, np.int64), np.asarray(ts, np.int64)
        new = copy.copy(self)
        new.data, new.now = data, float(data.now)
        new.user_events = self.user_events.copy()
        new.user_events[user] += len(items)
        if len(items):
            new.user_first, new.user_last = self.user_first.copy(), self.user_last.copy()
            new.user_first[user] = np.fmin(self.user_first[user], ts.min())
            new.user_last[user] = np.fmax(self.user_last[user], ts.max())
        new.item_events = self.item_events + np.bincount(items, minlength=data.n_items)
        keys = np.sort(_event_keys(items, ts, data.n_items))
        new.event_keys = np.insert(self.event_keys, np.searchsorted(self.event_keys, keys), keys)
        new.item_recent = _recent_counts(new.event_keys, data.n_items, self.recent_share)
        new.item_last, new.item_first = self.item_last.copy(), self.item_first.copy()
        np.fmax.at(new.item_last, items, ts.astype(np.float64))
        np.fmin.at(new.item_first, items, ts.astype(np.float64))
        new.item_born = np.where(np.isnan(self.item_created), new.item_first,
                                 self.item_created)
        if self.region_items is not None and self.user_region[user] >= 0:
            region = self.user_region[user]
            counts = self.region_items[region] + interaction_matrix(
                np.zeros(len(items), np.int64), items, 1, data.n_items)
            new.region_items = with_rows(self.region_items, {region: (counts.indices,
                                                                      counts.data)})
            new.region_events = self.region_events.copy()
            new.region_events[region] = np.asarray(counts.sum(axis=1)).ravel()[0]
        row = slice(data.history.indptr[user], data.history.indptr[user + 1])
        held = data.history.data[row].astype(np.float64)  # binary: its sum exact in any order
        new.history_share = with_rows(self.history_share, {user: (
            data.history.indices[row], held * (1.0 / max(held.sum(), 1e-12)))})
        lo, hi = np.searchsorted(data.log["user"].to_numpy(), [user, user + 1])
        mine = data.log["ts"].to_numpy(np.int64)[lo:hi]  # the user's events, old and new
        changed = np.unique(items)
        for slot, n_slots, modal, events, shares in (
                (_hour_slot, HOUR_BUCKETS, "user_hour", "item_hour_events", "item_hour"),
                (_weekday_slot, 7, "user_weekday", "item_weekday_events", "item_weekday")):
            setattr(new, modal, getattr(self, modal).copy())
            getattr(new, modal)[user] = _modal(_slot_counts(np.zeros(len(mine), np.int64),
                                                            slot(mine), 1, n_slots))[0]
            counts = getattr(self, events).copy()
            np.add.at(counts, (items, slot(ts)), 1)
            setattr(new, events, counts)
            setattr(new, shares, getattr(self, shares).copy())
            getattr(new, shares)[changed] = _shares(counts[changed])
        return new

    @staticmethod
    def _regions(data: RecallData, u: np.ndarray, i: np.ndarray
                 ) -> tuple[np.ndarray | None, sp.csr_matrix | None]:
        """Each user's region code and a regions x items interaction count matrix."""
        if "region" not in data.users.columns or data.users["region"].isna().all():
            return None, None
        codes, regions = pd.factorize(data.users["region"])
        counts = interaction_matrix(codes[u], i, len(regions), data.n_items)
        return codes.astype(np.int64), counts

    def _affinity(self, attributes: sp.csr_matrix, users: np.ndarray,
                  items: np.ndarray) -> np.ndarray:
        """Sum over the item's attribute terms of the user's share of history with them."""
        if attributes.shape[1] == 0:
            return np.full(len(users), np.nan)
        order = np.argsort(users, kind="stable")
        unique, first = np.unique(users[order], return_index=True)
        profile = (self.history_share[unique] @ attributes).tocsr()
        rows = np.empty(len(users), np.int64)
        rows[order] = np.repeat(np.arange(len(unique)), np.diff(np.append(first, len(users))))
        return sparse_row_dots(profile, rows, attributes, items)

    def compute(self, users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
        """Every statistic feature for pairs of user and item codes (both >= 0)."""
        now = self.now
        item_events = self.item_events[items]
        region = np.full(len(users), np.nan)
        if self.user_region is not None:
            r = self.user_region[users]
            known = r >= 0
            region[known] = (sparse_values(self.region_items, r[known], items[known])
                             / np.maximum(self.region_events[r[known]], 1.0))

        def match(modal: np.ndarray, share: np.ndarray) -> np.ndarray:
            slot = modal[users]
            return np.where(slot >= 0, share[items, np.maximum(slot, 0)], np.nan)

        age = (now - self.item_born[items]) / SECONDS_PER_DAY
        return pd.DataFrame({
            "user_events": self.user_events[users],
            "user_days_since_last": (now - self.user_last[users]) / SECONDS_PER_DAY,
            "user_days_active": (self.user_last[users] - self.user_first[users]) / SECONDS_PER_DAY,
            "item_popularity": item_events / max(self.item_events.sum(), 1.0),
            "item_recent_popularity": self.item_recent[items] / max(self.item_recent.sum(), 1.0),
            "item_recent_share": self.item_recent[items] / np.maximum(item_events, 1.0),
            "item_region_popularity": region,
            "item_age_days": np.where(age >= 0, age, np.nan),
            "item_days_since_last": (now - self.item_last[items]) / SECONDS_PER_DAY,
            "category_affinity": self._affinity(self.category, users, items),
            "tag_affinity": self._affinity(self.tags, users, items),
            "hour_match": match(self.user_hour, self.item_hour),
            "weekday_match": match(self.user_weekday, self.item_weekday),
        })


class UserContexts:
    """Statistics that differ by user: each user of ``own`` (a served request's clicks:
    ``FeatureContext.with_events``) is featurised with its own context, every other
    user with ``base``; so requests answered together each see only their own clicks."""

    def __init__(self, base: FeatureContext, own: dict[int, FeatureContext]) -> None:
        self.base, self.own = base, own

    def compute(self, users: np.ndarray, items: np.ndarray) -> pd.DataFrame:
        owner = pd.Index(list(self.own)).get_indexer(users)  # -1: the base context
        groups = np.unique(owner)
        if len(groups) <= 1:
            alone = not len(groups) or groups[0] < 0
            return (self.base if alone else self.own[int(users[0])]).compute(users, items)
        contexts = [self.base, *self.own.values()]
        rows = [np.flatnonzero(owner == g) for g in groups]
        found = pd.concat([contexts[g + 1].compute(users[r], items[r])
                           for g, r in zip(groups, rows, strict=True)], ignore_index=True)
        return found.iloc[np.argsort(np.concatenate(rows), kind="stable")].reset_index(drop=True)


class PairScorer(Protocol):
    """A fitted model that scores (user, item) pairs: NaN where it has no score."""

    def score_pairs(self, data: RecallData, users: np.ndarray,
                    items: np.ndarray) -> np.ndarray: ...


def model_scores(models: Mapping[str, PairScorer], data: RecallData, users: np.ndarray,
                 items: np.ndarray) -> pd.DataFrame:
    """``<name>_model_score`` of each pair from each fitted recall model."""
    return pd.DataFrame({f"{name}_model_score": model.score_pairs(data, users, items)
                         for name, model in models.items()}, index=pd.RangeIndex(len(users)))


def request_ranks(frame: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    """``<column>_request_rank`` of float score columns: 1 for the request's highest
    score, NaN where missing, ties sharing the lowest rank; pandas' grouped
    ``rank(method="min")`` by one numpy sort per column."""
    groups = pd.factorize(frame[key])[0]
    return pd.DataFrame({f"{c}_request_rank": _min_ranks(
        groups, frame[c].to_numpy(np.float64, na_value=np.nan)) for c in columns},
        index=frame.index)


def _min_ranks(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's rank within its group, highest first, ties at their lowest rank,
    NaN for NaN. Ordered by ``grouped_order`` (one small sort per request) instead of a
    lexsort of every row: 17 of the features stage's 110 s on 20k users of the large
    profile."""
    found = np.flatnonzero(~np.isnan(values))
    order = found[grouped_order(groups[found], values[found])]
    g, v = groups[order], values[order]
    position = np.arange(len(order))
    new_group = np.concatenate([[True], g[1:] != g[:-1]])
    new_value = new_group | np.concatenate([[True], v[1:] != v[:-1]])
    ranks = np.full(len(values), np.nan)
    ranks[order] = (np.maximum.accumulate(np.where(new_value, position, 0))
                    - np.maximum.accumulate(np.where(new_group, position, 0)) + 1)
    return ranks
