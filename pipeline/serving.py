"""Online prediction: one request answered with a publication's models, by the batch code.

``Recommender.load(publication)`` reads what the ``publish`` stage gathered (the fitted
channels, FM/FFM models, rankers and blend, the fitting log, and the run's config from
the publication's manifest); ``recommend`` then runs one request through the functions
the batch stages run on each shard: retrieval and merge (``recall``), FM scores
(``train-fm``), ranker features (``features``), the rankers and blend and the fill of a
short list (``rank``); ``answer`` runs several requests through them at once, each
getting what it would get alone. Between steps the frames pass through Arrow as the batch's
Parquet files do, so the columns keep the batch's types. For a user without new events
the answer is the published list, items and order (``tests/integration/test_serving.py``):
such a plain request is answered from that list (``Published``, as production systems
serve precomputed lists), and only requests carrying recent events or a query, or from a
user the publication has no list for, are computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.candidate_features import FeatureContext, UserContexts
from features.fields import FieldEncoder
from features.pairs import EncodedTable, encode_tables, side_tables
from features.recall_data import RecallData, build_recall_data, to_seconds
from features.search_features import SearchContext
from models.base import RecallChannel, scores_remembered
from models.fm_trainer import Samples, SideTerms, load_model, side_terms
from models.ranker import FoldEnsemble
from models.recall import channel_class
from models.recall.inverted_index import InvertedIndexChannel
from pipeline import schema as S
from pipeline.catalogue import artifact_path
from pipeline.config import Config, load_config
from pipeline.io import MANIFEST, read_manifest, read_table
from pipeline.phases import active_users, fitting, sample_size, sampled
from pipeline.protocol import CASE, EVALUATED, PUBLISHED, RECOMMENDATION, SEARCH, Phase, request_key
from pipeline.ranking import top_k
from pipeline.runner import stage_config
from pipeline.stages.features import add_features
from pipeline.stages.rank import fill_order, padded, system_scores
from pipeline.stages.recall import Requests, effective_budget, merged_candidates
from pipeline.stages.train_fm import with_fm_scores

COLD_START = "cold-start"


# dtypes a Parquet round trip hands back as they are, values and all
KEPT_DTYPES = (pd.BooleanDtype, pd.Int8Dtype, pd.Int16Dtype, pd.Int32Dtype, pd.Int64Dtype,
               pd.UInt8Dtype, pd.UInt16Dtype, pd.UInt32Dtype, pd.UInt64Dtype,
               pd.Float32Dtype, pd.Float64Dtype)


def kept_by_arrow(dtype: Any) -> bool:
    """Whether a column of ``dtype`` comes back from Arrow unchanged: numpy numbers and
    booleans, pandas' nullable ones, Arrow-backed strings."""
    return ((isinstance(dtype, np.dtype) and dtype.kind in "biuf")
            or isinstance(dtype, KEPT_DTYPES)
            or (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"))


def through_arrow(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as a stage after this one reads it back from Parquet. A frame whose
    columns all come back unchanged (``kept_by_arrow``) on a plain row index is that
    frame already and skips the trip (1.5-5 ms a trip for a request's 300 candidates)."""
    index = frame.index
    if (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1
            and all(kept_by_arrow(dtype) for dtype in frame.dtypes)):
        return frame
    return pa.Table.from_pandas(frame, preserve_index=False).to_pandas()


@dataclass(frozen=True)
class Published:
    """A publication's lists (``recommendations.parquet``) by user: by contract the
    answer to a plain request, looked up instead of computed."""

    users: pd.Index  # each listed user once, in the table's order
    bounds: np.ndarray  # the i-th user's rows: bounds[i] to bounds[i + 1]
    table: pd.DataFrame  # user_id, item_id, channels, score, rank; a user's rows together

    @classmethod
    def of(cls, lists: pd.DataFrame) -> Published:
        table = lists.sort_values([S.USER, S.RANK], kind="stable")
        codes, users = pd.factorize(table[S.USER])
        bounds = np.searchsorted(codes, np.arange(len(users) + 1))
        return cls(pd.Index(users), bounds, table.reset_index(drop=True))

    def lists(self, user_id: Any, k: int) -> pd.DataFrame | None:
        """The user's first ``k`` published items; None for a user without a list."""
        i = self.users.get_indexer([user_id])[0]
        if i < 0:
            return None
        lo = self.bounds[i]
        return self.table.iloc[lo: min(self.bounds[i + 1], lo + k)].reset_index(drop=True)


@dataclass
class Ranking:
    """What orders one kind of request: the channels answering it and their quotas, the
    rankers and the blend."""

    channels: dict[str, RecallChannel]
    quotas: dict[str, int]
    rankers: dict[str, FoldEnsemble]
    blend: dict


@dataclass
class Models:
    """Everything one phase's requests are answered with, loaded once."""

    cfg: Config
    data: RecallData
    channels: dict[str, RecallChannel]
    kinds: dict[str, Ranking]  # recommendation, and search where its rankers were trained
    fm: dict[str, Any]
    encoder: FieldEncoder
    user_side: pd.DataFrame
    item_side: pd.DataFrame
    sides: dict[str, EncodedTable]  # both side tables encoded once, for the FM scores
    item_terms: dict[str, SideTerms]  # per FM model, every item's side of a pair score
    context: FeatureContext
    fill: np.ndarray
    cold_start: pd.DataFrame  # empty for a backtest phase: nobody there is unknown
    regions: pd.Series  # user_id -> region, for the cold-start list of unknown users
    published: Published | None  # a publication's lists; None for a backtest phase

    @cached_property
    def search_context(self) -> SearchContext:
        index = self.channels.get(InvertedIndexChannel.name)
        return SearchContext(self.data, index if isinstance(index, InvertedIndexChannel)
                             else None)


@dataclass
class Where:
    """Where one phase's fitted models lie: a publication, or the stages' outputs."""

    channel: Callable[[str], Path]
    fm: Callable[[str], Path]
    ranker: Callable[[str, str], Path]  # kind, objective
    blend: Callable[[str], Path]
    tuned: Path


def load_models(cfg: Config, fit: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                targets: np.ndarray, where: Where, cold_start: pd.DataFrame,
                published: Published | None = None) -> Models:
    """A phase's models, its data encoded as its stages encoded it (``targets``: the
    users it answers, given an index row even without history)."""
    data = build_recall_data(fit, items, users, targets)
    channels = {name: channel_class(name).load(where.channel(name))
                for name in cfg.recall.channels}
    tuned = json.loads(where.tuned.read_text())
    answering = {RECOMMENDATION: ([n for n, c in cfg.recall.channels.items() if c.recommend],
                                  tuned["quotas"]),
                 SEARCH: (list(cfg.recall.search_channels), tuned["search_quotas"])}
    kinds = {kind: Ranking({n: channels[n] for n in names}, quotas,
                           {o: FoldEnsemble.load(where.ranker(kind, o), threads=1)
                            for o in cfg.rank.objectives},  # a request: a few hundred rows
                           json.loads(where.blend(kind).read_text()))
             for kind, (names, quotas) in answering.items() if where.blend(kind).is_file()}
    user_side, item_side = side_tables(users, items, fit)
    encoder = FieldEncoder.load(where.fm(cfg.fm.models[0]) / "encoder")
    fm = {kind: load_model(where.fm(kind))[0] for kind in cfg.fm.models}
    sides = encode_tables(encoder, user_side, item_side)
    return Models(
        cfg=cfg, data=data, channels=channels, kinds=kinds, fm=fm,
        encoder=encoder, user_side=user_side, item_side=item_side, sides=sides,
        item_terms={kind: side_terms(model, Samples.from_encoded(sides[S.ITEM].encoded),
                                     sides[S.ITEM].slots, sides[S.USER].slots, second=True,
                                     device=cfg.fm.device)
                    for kind, model in fm.items()} if sides else {},
        context=FeatureContext(data, cfg.features.recent_share),
        fill=fill_order(fit, items), cold_start=cold_start,
        regions=(users.set_index(S.USER)[S.REGION].dropna().astype(str)
                 if S.REGION in users.columns else pd.Series(dtype=str)),
        published=published)


@dataclass(frozen=True)
class Ask:
    """One request: a recommendation, or a search where it has a ``query``; ``recent``:
    events the publication has not seen (``item_id``, optional ``ts``); ``case``: the id
    a search's rows carry."""

    user_id: Any
    k: int | None = None
    query: str | None = None
    recent: pd.DataFrame | None = None
    case: int = 0


@dataclass(frozen=True)
class Pending:
    """A request to compute (``Recommender.prepared``): the request less its events
    frame (it is pickled to the compute process), its user's id as the data types it
    and code, its list length, its known recent events (item codes, unix seconds) and
    the recent item ids the publication does not know."""

    ask: Ask
    user_id: Any
    code: int
    k: int
    items: np.ndarray
    ts: np.ndarray
    ignored: list[Any]


def together(pending: list[Pending]) -> list[list[int]]:
    """Groups of ``pending`` (positions) that one pass of the batch code answers: one
    kind, each user at most once (each request's own events join the data and move
    its own clock: ``RecallData.now_of``); in order of arrival."""
    groups: dict[bool, list[list[int]]] = {}
    for n, request in enumerate(pending):
        same = groups.setdefault(request.ask.query is None, [])
        free = next((g for g in same if all(pending[m].code != request.code for m in g)),
                    None)
        if free is None:
            same.append(free := [])
        free.append(n)
    return sorted((g for same in groups.values() for g in same), key=lambda g: g[0])


def split(lists: pd.DataFrame, column: str, keys: Any, group: list[Pending]
          ) -> list[pd.DataFrame]:
    """Each request's first ``k`` rows of its group's ranked ``lists``: those whose
    ``column`` holds its key, found by one stable sort and a search per key (not a mask
    per request; a groupby cost more than the rest of the split: 0.74 -> 0.31 ms for five
    requests)."""
    values = lists[column].to_numpy()
    order = np.argsort(values, kind="stable")  # each key's rows keep their ranked order
    ordered = values[order]
    return [lists.take(order[np.searchsorted(ordered, key, "left"):
                             np.searchsorted(ordered, key, "right")][:r.k]
                       ).reset_index(drop=True)
            for key, r in zip(keys, group, strict=True)]


class Recommender:
    """Answers requests from a loaded publication, one or several together (see the
    module doc)."""

    def __init__(self, models: Models) -> None:
        self.models = models

    @classmethod
    def load(cls, folder: Path) -> Recommender:
        """From a publication (what ``publish`` gathered): the published phase's models."""
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder} is not a publication (no {MANIFEST})")
        cfg = load_config(None, base=read_manifest(folder)["config"])
        items, users = read_table(folder / "items.parquet"), read_table(folder / "users.parquet")
        fit = fitting({p: read_table(folder / "fitting" / f"{p}.parquet")
                       for p in PUBLISHED.fit}, PUBLISHED)
        kind_folder = {RECOMMENDATION: folder, SEARCH: folder / SEARCH}
        where = Where(channel=lambda n: folder / "channels" / n, fm=lambda m: folder / "fm" / m,
                      ranker=lambda kind, o: kind_folder[kind] / "rankers" / o,
                      blend=lambda kind: kind_folder[kind] / "blend.json",
                      tuned=folder / "tuned.json")
        targets = active_users(users, fit, cfg.publish.active_days)[S.USER].unique()
        return cls(load_models(cfg, fit, items, users, targets, where,
                               read_table(folder / "cold_start.parquet"),
                               Published.of(read_table(folder / "recommendations.parquet"))))

    @classmethod
    def from_stages(cls, cfg: Config, phase: Phase = EVALUATED) -> Recommender:
        """From the stages' outputs: the evaluated phase's models, whose batch answers
        are ``rank``'s lists for the test requests."""
        cfg = stage_config(cfg, "rank")  # as the stages ran (order-free for untimed logs)

        def split(part: str) -> pd.DataFrame:
            return read_table(artifact_path(cfg, "split", part=part))

        where = Where(
            channel=lambda n: artifact_path(cfg, "recall_model", phase=phase.name, channel=n),
            fm=lambda m: artifact_path(cfg, "fm_model", phase=phase.name, model=m),
            ranker=lambda kind, o: artifact_path(cfg, "ranker", phase=phase.name, kind=kind,
                                                 objective=o),
            blend=lambda kind: artifact_path(cfg, "blend", kind=kind),
            tuned=artifact_path(cfg, "tuned"))
        return cls(load_models(cfg, fitting({p: split(p) for p in phase.fit}, phase),
                               read_table(artifact_path(cfg, "items")),
                               read_table(artifact_path(cfg, "users")),
                               sampled(split(phase.target), sample_size(cfg, phase),
                                       cfg.seed)[S.USER].unique(), where,
                               pd.DataFrame(columns=[S.REGION, S.ITEM, S.SCORE, S.RANK])))

    def user_code(self, user_id: Any) -> tuple[Any, int]:
        """The user's id as the data types it (a CLI gives strings) and its code (-1:
        not in the publication)."""
        ids = self.models.data.user_index.ids
        try:
            typed = pd.Index([user_id]).astype(ids.dtype)[0]
        except (TypeError, ValueError, OverflowError):
            return user_id, -1
        return typed, int(self.models.data.user_index.encode(np.array([typed]))[0])

    def known_events(self, recent: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray, list]:
        """Recent events (``item_id`` and optional ``ts``) as item codes and unix seconds,
        and the item ids the publication does not know (ignored). An event without a
        time counts as just after the publication's last one, in the order given."""
        if recent is None or not len(recent):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), []
        m = self.models
        ids = pd.Index(recent[S.ITEM])
        try:
            ids = ids.astype(m.data.item_index.ids.dtype)
        except (TypeError, ValueError, OverflowError):
            pass  # ids of another type match nothing: each is reported as unknown
        codes = m.data.item_index.encode(ids)
        after = m.data.now + 1 + np.arange(len(recent), dtype=np.int64)
        if S.TS in recent.columns and recent[S.TS].notna().any():  # else 0.5 ms for nothing
            given = pd.to_datetime(recent[S.TS], utc=True).dt.tz_localize(None)
            ts = np.where(given.notna(), to_seconds(given.fillna(pd.Timestamp(0))), after)
        else:
            ts = after
        known = codes >= 0
        return codes[known], ts[known].astype(np.int64), list(recent[S.ITEM][~known])

    def recommend(self, user_id: Any, k: int | None = None,
                  recent: pd.DataFrame | None = None) -> pd.DataFrame:
        """The user's top ``k`` (default ``publish.top_k``): ``user_id, item_id,
        channels, score, rank``. ``recent``: events the publication has not seen
        (``item_id``, optional ``ts``); the behaviour channels, the seen items and the
        features read them, so a click a second ago changes the answer (unknown items are
        ignored: ``known_events``). A user the publication does not know gets the
        cold-start list of their region (``channels`` "cold-start"). Without recent events
        a listed user's answer is the publication's list (``Published``), which the
        computed one equals (``compute``)."""
        return self.one(Ask(user_id, k, recent=recent))

    def compute(self, user_id: Any, k: int | None = None,
                recent: pd.DataFrame | None = None) -> pd.DataFrame:
        """``recommend`` computed by the batch code whatever the request, never looked up."""
        return self.one(Ask(user_id, k, recent=recent), lookup=False)

    def search(self, user_id: Any, query: str, k: int | None = None,
               recent: pd.DataFrame | None = None, case: int = 0) -> pd.DataFrame:
        """The top ``k`` for ``query`` asked by the user: ``case_id, user_id, item_id,
        score, rank`` (``case``: the id the rows carry, as the batch's cases do). The
        search channels answer the query, the personalised ones the user; the search
        rankers order them."""
        return self.one(Ask(user_id, k, str(query), recent, case))

    def one(self, ask: Ask, lookup: bool = True) -> pd.DataFrame:
        """One request's list; its error raised."""
        found = self.answer([ask], lookup)[0]
        if isinstance(found, Exception):
            raise found
        return found

    def answer(self, asks: list[Ask], lookup: bool = True) -> list[pd.DataFrame | Exception]:
        """Each request's list, or the error it gets (a ``ValueError`` for a bad one).
        ``lookup``: plain requests are answered from the publication's lists (``False``:
        computed like the rest); the others are computed together (``finished``)."""
        found: list[pd.DataFrame | Exception | Pending] = []
        for ask in asks:
            try:
                found.append(self.prepared(ask, lookup))
            except ValueError as err:
                found.append(err)
        at = [n for n, f in enumerate(found) if isinstance(f, Pending)]
        for n, answered in zip(at, self.finished([found[n] for n in at]), strict=True):
            found[n] = answered
        return found

    def prepared(self, ask: Ask, lookup: bool = True) -> pd.DataFrame | Pending:
        """The answer of a request that needs no computing (an unknown user's cold start,
        a listed user's published list), else the request to compute; a bad request
        raises ``ValueError``."""
        m = self.models
        if ask.query is not None and SEARCH not in m.kinds:
            raise ValueError("this publication has no search ranker (its log had too few "
                             "searches with a click)")
        k = self.checked_k(ask.k)
        user_id, code = self.user_code(ask.user_id)
        if code < 0 and ask.query is not None:
            raise ValueError(f"user {user_id!r} is not in the publication: search answers "
                             "known users")
        if code < 0:
            return self.cold_start(user_id, k)
        items, ts, ignored = self.known_events(ask.recent)
        if ask.query is None and lookup and m.published is not None and not len(items):
            listed = m.published.lists(user_id, k)
            if listed is not None:
                return listed
        return Pending(replace(ask, recent=None), user_id, code, k, items, ts, ignored)

    def finished(self, pending: list[Pending]) -> list[pd.DataFrame | Exception]:
        """The lists of requests to compute, answered together by the batch code, a group
        per kind (``together``): per-call overhead (ten channels, the features,
        the rankers) is most of a request's cost, so eight searches together cost 1.5
        times one (benchmarks/RESULTS.md, "serving latency"). Each gets what it would get
        alone (``UserContexts``; ``tests/integration/test_serving.py``); a group that
        fails gives each of its requests the error, and the other groups are answered."""
        found: list[pd.DataFrame | Exception | None] = [None] * len(pending)
        for group in together(pending):
            try:
                with scores_remembered():  # retrieval's scores read again as features
                    lists = self.computed([pending[n] for n in group])
            except Exception as err:  # a fault in one group leaves the others answered
                lists = [err] * len(group)
            for n, answered in zip(group, lists, strict=True):
                found[n] = answered
        return found

    def computed(self, group: list[Pending]) -> list[pd.DataFrame]:
        """The lists of requests of one kind by distinct users (``together``),
        computed: retrieval, FM scores (recommendations), features, rankers and the fill
        of a short recommendation list, as the batch runs them."""
        m = self.models
        search = group[0].ask.query is not None
        kind = SEARCH if search else RECOMMENDATION
        data, context = self.with_recent(group)
        codes = np.array([r.code for r in group])
        keys = pd.DataFrame({S.USER: pd.Series([r.user_id for r in group],
                                               dtype=data.user_index.ids.dtype)})
        if search:  # recent events carry no query: the query statistics stay the publication's
            keys.insert(0, CASE, np.arange(len(group), dtype=np.int64))
            keys[S.QUERY] = np.array([r.ask.query for r in group], dtype=object)
        requests = Requests(keys, codes, keys[S.QUERY].to_numpy(object) if search else None)
        cands = through_arrow(merged_candidates(
            data, m.kinds[kind].channels, m.kinds[kind].quotas,
            effective_budget(m.cfg.recall.budget, data.n_items), requests)[0])
        if search:
            lists = self.ranked(SEARCH, cands, data, context, False, m.search_context)
            return [frame.assign(**{CASE: np.int64(r.ask.case)})
                    for frame, r in zip(split(lists, CASE, range(len(group)), group), group,
                                        strict=True)]
        cands = through_arrow(with_fm_scores(cands, m.fm, m.encoder, m.user_side, m.item_side,
                                             m.cfg.fm.device, m.sides, m.item_terms))
        lists = self.ranked(RECOMMENDATION, cands, data, context, True)
        counts = lists[S.USER].value_counts()
        short = [r for r in group if counts.get(r.user_id, 0) < m.cfg.publish.top_k]
        if short:  # a full list is what ``padded`` hands back
            held = [data.history[r.code].indices for r in short]
            lists = padded(lists, pd.DataFrame({
                S.USER: np.repeat([r.user_id for r in short], [len(h) for h in held]),
                S.ITEM: data.item_index.decode(np.concatenate(held))}), m.fill,
                m.cfg.publish.top_k)
        return split(lists, S.USER, [r.user_id for r in group], group)

    def ranked(self, kind: str, cands: pd.DataFrame, data: RecallData,
               context: FeatureContext | UserContexts, proposers: bool,
               search: SearchContext | None = None) -> pd.DataFrame:
        """Candidates featurised and ordered by the kind's final system, ``publish.top_k``
        of them (``proposers``: with the channels that proposed each)."""
        m, key = self.models, request_key(kind)
        scorers = {n: m.channels[n] for n in m.cfg.features.model_scores if n in m.channels}
        frame = through_arrow(add_features(cands, key, context, data, scorers, search))
        final = "blend" if m.cfg.rank.blend else f"ltr:{m.cfg.rank.objective}"
        scores = system_scores(frame, key, m.kinds[kind].rankers, m.kinds[kind].blend,
                               final)[final]
        return top_k(frame, key, scores, m.cfg.publish.top_k,
                     list(m.kinds[kind].channels) if proposers else None)

    def checked_k(self, k: int | None) -> int:
        top = self.models.cfg.publish.top_k
        if k is not None and not 1 <= k <= top:
            raise ValueError(f"k must be between 1 and {top} (publish.top_k)")
        return top if k is None else k

    def with_recent(self, group: list[Pending]) -> tuple[RecallData, FeatureContext |
                                                          UserContexts]:
        """The data and feature statistics a group of requests sees: the publication's,
        or with the users' recent events added (each user featurised as a refit on
        their own events would be: ``UserContexts``). The group asks about its own users
        only, so the data with the events holds their rows alone (``for_users``): a copy
        of the whole log per pass would grow with the publication."""
        m = self.models
        clicked = [r for r in group if len(r.items)]
        if not clicked:
            return m.data, m.context
        data = m.data.for_users(np.array([r.code for r in group])).with_events(
            np.repeat([r.code for r in clicked], [len(r.items) for r in clicked]),
            np.concatenate([r.items for r in clicked]), np.concatenate([r.ts for r in clicked]))
        return data, UserContexts(m.context, data,
                                  {r.code: (r.items, r.ts) for r in clicked})

    def cold_start(self, user_id: Any, k: int) -> pd.DataFrame:
        """The cold-start list of the user's region (from the users table), else the
        global one (``*``)."""
        m = self.models
        region = m.regions.get(user_id, "*")
        rows = m.cold_start[m.cold_start[S.REGION] == region]
        if not len(rows):
            rows = m.cold_start[m.cold_start[S.REGION] == "*"]
        out = rows.head(k).assign(**{S.USER: user_id, "channels": COLD_START})
        return out[[S.USER, S.ITEM, "channels", S.SCORE, S.RANK]].reset_index(drop=True)


def response(lists: pd.DataFrame) -> list[dict[str, Any]]:
    """A list as JSON-ready records: item, score, rank and (recommendations) the
    proposing channels."""
    channels = lists["channels"] if "channels" in lists.columns else [None] * len(lists)
    return [{"item_id": item.item() if isinstance(item, np.generic) else item,
             "score": float(score), "rank": int(rank),
             **({} if names is None else {"channels": names.split(",")})}
            for item, score, rank, names in zip(
                lists[S.ITEM].to_numpy(), lists[S.SCORE], lists[S.RANK], channels, strict=True)]
