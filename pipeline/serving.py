"""Online prediction: one request answered with a publication's models, by the batch code.

``Recommender.load(publication)`` reads what the ``publish`` stage gathered (the fitted
channels, FM/FFM models, rankers and blend, the fitting log, and the run's config from
the publication's manifest); ``recommend`` then runs one request through the functions
the batch stages run on each shard: retrieval and merge (``recall``), FM scores
(``train-fm``), ranker features (``features``), the rankers and blend and the fill of a
short list (``rank``). Between steps the frames pass through Arrow as the batch's
Parquet files do, so the columns keep the batch's types. For a user without new events
the answer is the published list, items and order (``tests/integration/test_serving.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.candidate_features import FeatureContext
from features.fields import FieldEncoder
from features.pairs import side_tables
from features.recall_data import RecallData, build_recall_data, to_seconds
from models.base import RecallChannel
from models.fm_trainer import load_model
from models.ranker import FoldEnsemble
from models.recall import channel_class
from pipeline import schema as S
from pipeline.config import Config, load_config
from pipeline.io import MANIFEST, read_manifest, read_table
from pipeline.phases import active_users, fitting
from pipeline.protocol import PUBLISHED
from pipeline.ranking import proposing_channels, top_k
from pipeline.stages.features import add_features
from pipeline.stages.rank import fill_order, padded, system_scores
from pipeline.stages.recall import Requests, effective_budget, merged_candidates
from pipeline.stages.train_fm import with_fm_scores

COLD_START = "cold-start"


def through_arrow(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as a stage after this one reads it back from Parquet."""
    return pa.Table.from_pandas(frame, preserve_index=False).to_pandas()


@dataclass
class Models:
    """Everything a publication serves with, loaded once."""

    cfg: Config
    data: RecallData
    channels: dict[str, RecallChannel]
    quotas: dict[str, int]
    fm: dict[str, Any]
    encoder: FieldEncoder
    user_side: pd.DataFrame
    item_side: pd.DataFrame
    context: FeatureContext
    rankers: dict[str, FoldEnsemble]
    blend: dict
    fill: np.ndarray
    cold_start: pd.DataFrame
    regions: pd.Series  # user_id -> region, for the cold-start list of unknown users


class Recommender:
    """Answers one request at a time from a loaded publication (see the module doc)."""

    def __init__(self, models: Models, folder: Path) -> None:
        self.models, self.folder = models, folder

    @classmethod
    def load(cls, folder: Path) -> Recommender:
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder} is not a publication (no {MANIFEST})")
        cfg = load_config(None, base=read_manifest(folder)["config"])
        served = folder  # what publish gathered as "served" lies at its top
        items, users = read_table(served / "items.parquet"), read_table(served / "users.parquet")
        fit = fitting({p: read_table(served / "fitting" / f"{p}.parquet")
                       for p in PUBLISHED.fit}, PUBLISHED)
        targets = active_users(users, fit, cfg.publish.active_days)
        data = build_recall_data(fit, items, users, targets[S.USER].unique())
        channels = {name: channel_class(name).load(served / "channels" / name)
                    for name in cfg.recall.channels}
        fm = {kind: load_model(served / "fm" / kind)[0] for kind in cfg.fm.models}
        user_side, item_side = side_tables(users, items, fit)
        models = Models(
            cfg=cfg, data=data, channels=channels,
            quotas=json.loads((served / "tuned.json").read_text())["quotas"], fm=fm,
            encoder=FieldEncoder.load(served / "fm" / cfg.fm.models[0] / "encoder"),
            user_side=user_side, item_side=item_side,
            context=FeatureContext(data, cfg.features.recent_share),
            rankers={o: FoldEnsemble.load(served / "rankers" / o) for o in cfg.rank.objectives},
            blend=json.loads((served / "blend.json").read_text()),
            fill=fill_order(fit, items), cold_start=read_table(folder / "cold_start.parquet"),
            regions=(users.set_index(S.USER)[S.REGION].dropna().astype(str)
                     if S.REGION in users.columns else pd.Series(dtype=str)))
        return cls(models, folder)

    def user_code(self, user_id: Any) -> tuple[Any, int]:
        """The user's id as the data types it (a CLI gives strings) and its code (-1:
        not in the publication)."""
        ids = self.models.data.user_index.ids
        try:
            typed = pd.Index([user_id]).astype(ids.dtype)[0]
        except (TypeError, ValueError):
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
        except (TypeError, ValueError):
            pass  # ids of another type match nothing: each is reported as unknown
        codes = m.data.item_index.encode(ids)
        after = m.data.now + 1 + np.arange(len(recent), dtype=np.int64)
        if S.TS in recent.columns:
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
        cold-start list of their region (``channels`` "cold-start")."""
        m = self.models
        k = m.cfg.publish.top_k if k is None else k
        if not 1 <= k <= m.cfg.publish.top_k:
            raise ValueError(f"k must be between 1 and {m.cfg.publish.top_k} (publish.top_k)")
        user_id, code = self.user_code(user_id)
        if code < 0:
            return self.cold_start(user_id, k)
        data, context = m.data, m.context
        items, ts, _ = self.known_events(recent)
        if len(items):
            data = data.with_events(code, items, ts)
            context = FeatureContext(data, m.cfg.features.recent_share)
        request = Requests(pd.DataFrame({S.USER: pd.Series([user_id],
                                                           dtype=data.user_index.ids.dtype)}),
                           np.array([code]))
        served = {n: c for n, c in m.channels.items() if m.cfg.recall.channels[n].recommend}
        budget = effective_budget(m.cfg.recall.budget, data.n_items)
        cands, _, _ = merged_candidates(data, served, m.quotas, budget, request)
        cands = through_arrow(with_fm_scores(through_arrow(cands), m.fm, m.encoder,
                                             m.user_side, m.item_side, m.cfg.fm.device))
        scorers = {n: m.channels[n] for n in m.cfg.features.model_scores if n in m.channels}
        frame = through_arrow(add_features(cands, S.USER, context, data, scorers))
        frame["channels"] = proposing_channels(frame, list(served))
        final = "blend" if m.cfg.rank.blend else f"ltr:{m.cfg.rank.objective}"
        scores = system_scores(frame, S.USER, m.rankers, m.blend)[final]
        lists = top_k(frame, S.USER, scores, m.cfg.publish.top_k, ("channels",))
        history = data.item_index.decode(data.history[code].indices)
        lists = padded(lists, pd.DataFrame({S.USER: user_id, S.ITEM: history}), m.fill,
                       m.cfg.publish.top_k)
        return lists.iloc[:k].reset_index(drop=True)

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
    """A list as JSON-ready records: item, score, rank and the proposing channels."""
    return [{"item_id": item.item() if isinstance(item, np.generic) else item,
             "score": float(score), "rank": int(rank), "channels": channels.split(",")}
            for item, score, rank, channels in zip(
                lists[S.ITEM].to_numpy(), lists[S.SCORE], lists[S.RANK], lists["channels"],
                strict=True)]
