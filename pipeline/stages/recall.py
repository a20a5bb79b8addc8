"""recall: fit the configured channels and retrieve merged candidates, roll-forward.

The phases of ``pipeline.protocol.PHASES``:
- ``valid``: fit on train, retrieve for the valid period. Channels that early-stop watch
  the valid pairs, and quotas are tuned on a sample of them; ``tuned.json`` keeps both.
- ``test``: refit on train + valid with those choices, retrieve for the test period.
- ``publish``: refit on all of it with the same choices, retrieve for every active user
  (no per-channel lists: nothing is held out to evaluate them on).
Nothing in a phase is fitted on the period it retrieves for.

Each phase serves two kinds of request. Recommendation: one per user, written as
``candidates`` (the merged set with every channel's evidence) and ``channel_list`` (each
channel's own list, for per-channel evaluation). Search: one per interaction that
carries a query (``case_id``, the user and the query), answered by the search channels
with the query text and by the personalised ones with the user, written the same way,
with the ``cases``. Requests are processed in chunks and
rows streamed to disk, so memory does not grow with the number of users.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.recall_data import RecallData
from models.base import HeldOut, RecallChannel, SearchChannel, TopK, check_top_k
from models.recall import channel_class
from models.recall.merge import ChannelList, merged_columns, tune_quotas
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import ChannelConfig, Config, ConfigError
from pipeline.engine import engine_for
from pipeline.io import finish_parts, write_part, write_table
from pipeline.phases import item_catalogue, phase_data, phase_inputs
from pipeline.progress import progress
from pipeline.protocol import CASE, PHASES, RECOMMENDATION, SEARCH, Phase, is_search

log = logging.getLogger("pipeline")


@dataclass
class Requests:
    """Rows to retrieve for: ``keys`` (written in front of every output row), the asking
    user's code per row, and the query text per row for search requests."""

    keys: pd.DataFrame
    users: np.ndarray
    queries: np.ndarray | None = None

    def take(self, rows: slice) -> Requests:
        return Requests(self.keys.iloc[rows].reset_index(drop=True), self.users[rows],
                        None if self.queries is None else self.queries[rows])


def recommendation_requests(targets: pd.DataFrame, data: RecallData) -> Requests:
    users = targets[S.USER].unique()
    return Requests(pd.DataFrame({S.USER: users}), data.user_index.encode(users))


def search_requests(targets: pd.DataFrame, data: RecallData) -> tuple[Requests, pd.DataFrame]:
    """One request per search interaction; also the cases with their clicked item."""
    rows = targets[is_search(targets)]
    query = rows[S.QUERY] if S.QUERY in rows.columns else pd.Series([], dtype="string")
    cases = pd.DataFrame({CASE: np.arange(len(rows)), S.USER: rows[S.USER].to_numpy(),
                          S.QUERY: query.astype(str).to_numpy(),
                          S.ITEM: rows[S.ITEM].to_numpy()})
    return (Requests(cases[[CASE, S.USER, S.QUERY]], data.user_index.encode(cases[S.USER]),
                     cases[S.QUERY].to_numpy(object)), cases)


def build_channel(name: str, settings: ChannelConfig, seed: int,
                  tuned: dict | None = None) -> RecallChannel:
    """The channel with its configured settings, the run's seed where it takes one, and
    whatever it chose on valid (``tuned``) on top."""
    cls = channel_class(name)
    params = {**settings.params, **(tuned or {})}
    if "seed" in inspect.signature(cls).parameters:
        params.setdefault("seed", seed)
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"recall.channels.{name}.params: {err}") from None


def retrieve(channel: RecallChannel, data: RecallData, req: Requests, k: int) -> TopK:
    """Search channels answer the query text when there is one; others answer the user.
    The lists are checked here whatever way the channel retrieves (``check_top_k``), so a
    faulty one stops the stage instead of passing on NaN scores or seen items."""
    if req.queries is not None and isinstance(channel, SearchChannel):
        top = channel.retrieve_queries(data, req.queries, req.users, k)
    else:
        top = channel.retrieve(data, req.users, k)
    check_top_k(top, data, req.users, True, channel.name)
    return top


def effective_budget(budget: int, n_items: int) -> int:
    """Candidates per request and each channel's k: no more than the catalogue holds."""
    if budget <= n_items:
        return budget
    log.info("[recall] recall.budget %d is larger than the catalogue (%d items): each "
             "channel retrieves, and the merge keeps, at most %d per request", budget, n_items,
             n_items)
    return n_items


def tuned_quotas(cfg: Config, data: RecallData, channels: dict[str, RecallChannel],
                 req: Requests, relevant_rows: np.ndarray, relevant_items: np.ndarray,
                 budget: int) -> dict[str, int]:
    """Quotas from a seeded sample of held-out requests (see ``tune_quotas``)."""
    rc = cfg.recall
    rng = np.random.default_rng(cfg.seed)
    n = len(req.users)
    sample = np.sort(rng.choice(n, size=min(rc.tuning_users, n), replace=False))
    keep = np.isin(relevant_rows, sample)
    pair_keys = pd.MultiIndex.from_arrays([relevant_rows[keep], relevant_items[keep]]).unique()
    picked = Requests(req.keys.iloc[sample], req.users[sample],
                      None if req.queries is None else req.queries[sample])
    lists, hits = {}, {}
    for name, channel in channels.items():
        top = retrieve(channel, data, picked, budget)
        keys = pd.MultiIndex.from_arrays([np.repeat(sample, budget), top.items.ravel()])
        lists[name] = top.items
        hits[name] = pair_keys.get_indexer(keys).reshape(top.items.shape)
    return tune_quotas(lists, hits, budget, rc.quota_step)


def list_sample(cfg: Config, n: int) -> np.ndarray:
    """Which requests get each channel's own list written (all, or a seeded sample)."""
    wanted = cfg.recall.channel_list_users
    if not wanted or wanted >= n:
        return np.ones(n, bool)
    keep = np.zeros(n, bool)
    keep[np.random.default_rng(cfg.seed).choice(n, size=wanted, replace=False)] = True
    return keep


def channel_rows(data: RecallData, part: Requests, top: TopK, listed: np.ndarray
                 ) -> pd.DataFrame:
    """One channel's list as rows (request keys, item, rank, score), for the requests
    whose lists are kept (``listed``)."""
    r, c = np.nonzero((top.items >= 0) & listed[:, None])
    rows = part.keys.iloc[r].reset_index(drop=True)
    rows[S.ITEM] = data.item_index.decode(top.items[r, c])
    rows[S.RANK] = (c + 1).astype(np.int32)
    rows[S.SCORE] = top.scores[r, c]
    return rows


def merged_candidates(data: RecallData, channels: dict[str, RecallChannel],
                      quotas: dict[str, int], budget: int, part: Requests
                      ) -> tuple[pd.DataFrame, dict[str, TopK], dict[str, float]]:
    """The merged candidates of some requests (their keys, then item, source, ...), with
    every channel's own list and its seconds: what the batch writes and a served request
    ranks, by the same code."""
    tops, seconds = {}, {}
    for name, channel in channels.items():
        started = time.perf_counter()
        tops[name] = retrieve(channel, data, part, budget)
        seconds[name] = time.perf_counter() - started
    merged = merged_columns([ChannelList(name, top, quotas[name]) for name, top in
                             tops.items()], budget=budget)
    rows = merged.pop("row")  # one frame from the arrays: 1.32 -> 0.82 ms a search
    columns = {c: part.keys[c].array.take(rows) for c in part.keys.columns}
    columns[S.ITEM] = data.item_index.decode(merged.pop("item"))
    columns.update(merged)
    return pd.DataFrame(columns), tops, seconds


def retrieve_shard(shard: tuple[int, Requests, np.ndarray], data: RecallData,
                   channels: dict[str, RecallChannel], quotas: dict[str, int], budget: int,
                   candidates: Path, lists: dict[str, Path]) -> dict:
    """One chunk of requests (index, requests, which of them keep their channel lists):
    every channel's list, written as part ``index`` of ``lists[channel]`` where kept, and
    the merged candidates as part ``index`` of ``candidates``. Returns rows and seconds
    per channel."""
    index, part, listed = shard
    merged, tops, seconds = merged_candidates(data, channels, quotas, budget, part)
    for name, folder in lists.items():
        write_part(folder, index, channel_rows(data, part, tops[name], listed))
    return {"rows": write_part(candidates, index, merged), "seconds": seconds}


def stream_candidates(io: StageIO, data: RecallData, channels: dict[str, RecallChannel],
                      quotas: dict[str, int], req: Requests, phase: Phase, kind: str,
                      budget: int) -> dict:
    """Write the merged candidates (``budget`` per request) for every request and, on the
    phases that are evaluated against held-out targets, each channel's own list: one part
    per chunk of requests, each retrieved by ``retrieve_shard`` on the configured engine."""
    cfg = io.cfg
    listed_rows = list_sample(cfg, len(req.users))
    lists = {name: io.output("channel_list", phase=phase.name, kind=kind, channel=name)
             for name in channels if phase.target is not None}
    candidates = io.output("candidates", phase=phase.name, kind=kind)
    step = cfg.recall.request_chunk
    shards = [(i, req.take(slice(lo, lo + step)), listed_rows[lo: lo + step])
              for i, lo in enumerate(range(0, len(req.users), step))]
    seconds = dict.fromkeys(channels, 0.0)
    rows = 0
    done = engine_for(cfg).map(retrieve_shard, shards, data=data, channels=channels,
                               quotas=quotas, budget=budget, candidates=candidates,
                               lists=lists)
    for result in progress(done, f"recall {phase.name} {kind}", total=len(shards)):
        rows += result["rows"]
        for name, spent in result["seconds"].items():
            seconds[name] += spent
    empty = req.keys.iloc[:0]
    for folder in (*lists.values(), candidates):
        finish_parts(folder, empty)
    log.info("[recall] %s %s: %d requests, %.1f candidates each", phase.name, kind,
             len(req.users), rows / max(len(req.users), 1))
    return {"requests": int(len(req.users)), "candidates": rows,
            "retrieve_seconds": {k: round(v, 3) for k, v in seconds.items()}}


def fit_channels(io: StageIO, phase: Phase, data: RecallData, targets: pd.DataFrame,
                 tuned: dict[str, dict]) -> tuple[dict[str, RecallChannel], dict[str, float]]:
    """Every configured channel fitted on the phase's data and saved; on the tuning
    phase each watches the held-out pairs, and its choices are added to ``tuned``."""
    held_out = None
    if phase.tunes:
        held_out = HeldOut(data.user_index.encode(targets[S.USER]),
                           data.item_index.encode(targets[S.ITEM]))
    channels, fit_seconds = {}, {}
    for name, settings in io.cfg.recall.channels.items():
        started = time.perf_counter()
        channel = build_channel(name, settings, io.cfg.seed, tuned.get(name))
        channels[name] = channel.fit(data, held_out)
        fit_seconds[name] = round(time.perf_counter() - started, 3)
        channels[name].save(io.output("recall_model", phase=phase.name, channel=name))
        if phase.tunes:
            tuned[name] = channels[name].tuned()
    return channels, fit_seconds


def run(cfg: Config, io: StageIO) -> dict:
    rc = cfg.recall
    fits = phase_inputs(io)
    tuned: dict[str, dict] = {}
    quotas = {name: ch.quota for name, ch in rc.channels.items()}
    search_quotas = {name: ch.quota for name, ch in rc.search_channels.items()}
    report: dict[str, dict] = {}
    budget = effective_budget(rc.budget, len(item_catalogue(io)))
    for phase in PHASES:
        fit, targets = fits[phase.name]
        data = phase_data(io, fit, targets)
        channels, fit_seconds = fit_channels(io, phase, data, targets, tuned)
        recs = recommendation_requests(targets, data)
        searches, cases = (search_requests(targets, data) if phase.target is not None
                           else (None, pd.DataFrame()))  # publish answers users, not searches
        rec_channels = {n: c for n, c in channels.items() if rc.channels[n].recommend}
        search_channels = {n: channels[n] for n in rc.search_channels}
        if phase.tunes and rc.tune_quotas:
            plain = targets[~is_search(targets)]
            quotas = tuned_quotas(cfg, data, rec_channels, recs,
                                  pd.Index(recs.keys[S.USER]).get_indexer(plain[S.USER]),
                                  data.item_index.encode(plain[S.ITEM]), budget)
            log.info("[recall] recommendation quotas tuned on valid: %s", quotas)
            if len(cases) and search_channels:
                search_quotas = tuned_quotas(cfg, data, search_channels, searches,
                                             cases[CASE].to_numpy(),
                                             data.item_index.encode(cases[S.ITEM]), budget)
                log.info("[recall] search quotas tuned on valid: %s", search_quotas)
        report[phase.name] = {"fit_seconds": fit_seconds, RECOMMENDATION: stream_candidates(
            io, data, rec_channels, quotas, recs, phase, RECOMMENDATION, budget)}
        if len(cases) and search_channels:
            write_table(cases, io.output("cases", phase=phase.name))
            report[phase.name][SEARCH] = stream_candidates(
                io, data, search_channels, search_quotas, searches, phase, SEARCH, budget)
    io.write_json("tuned", {"channels": tuned, "quotas": quotas, "search_quotas": search_quotas})
    return {"phases": report, "tuned": tuned, "quotas": quotas, "search_quotas": search_quotas}
