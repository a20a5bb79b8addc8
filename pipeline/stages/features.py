"""features: ranker features for every candidate of every phase.

For each phase the statistics and model scores come from that phase's fitting data and
fitted recall models only (valid: train; test: train + valid; publish: all of it), so
the rows the ranker learns from and the rows it ranks are built the same way. Rows of
the tuning phase (valid) get a ``label`` (the user clicked the item in valid; for
search, the case's clicked item); other phases' rows never do (train-rank labels the
test rows itself for the publish ranker). Writes ``features`` per phase and kind
(search where search cases exist) and ``feature_columns`` (the feature columns and what
each means). Search candidates also get the query features of
``features.search_features`` (click shares, query frequency, title match, per-field
BM25). Requests are processed in chunks and streamed to disk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from features.candidate_features import (
    FEATURES,
    FeatureContext,
    UserContexts,
    model_scores,
    request_ranks,
)
from features.recall_data import RecallData
from features.search_features import SEARCH_FEATURES, SearchContext
from models.base import RecallChannel
from models.recall import channel_class
from models.recall.inverted_index import InvertedIndexChannel
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.engine import engine_for
from pipeline.io import (
    finish_parts,
    iter_requests,
    table_columns,
    table_parts,
    table_rows,
    write_part,
)
from pipeline.phases import phase_data, phase_inputs
from pipeline.progress import progress
from pipeline.protocol import (
    CASE,
    LABEL,
    PHASES,
    SEARCH,
    Phase,
    click_labels,
    clicks,
    request_key,
)

log = logging.getLogger("pipeline")
NOT_FEATURES = (S.USER, S.ITEM, CASE, S.QUERY, "source", LABEL)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a ranker learns from: every numeric column but keys and labels."""
    return [c for c in frame.columns if c not in NOT_FEATURES
            and pd.api.types.is_numeric_dtype(frame[c].dtype)]


def without_excluded(columns: dict[str, list[str]], exclude: list[str]
                     ) -> dict[str, list[str]]:
    """Each kind's feature columns less ``features.exclude``; a name that is no feature
    of any kind is refused, so a typo cannot leave an ablation silently unchanged."""
    known = {c for found in columns.values() for c in found}
    unknown = sorted(set(exclude) - known)
    if unknown and known:
        raise ValueError(f"features.exclude names {unknown}, which are not features; the "
                         f"features are {sorted(known)}")
    return {kind: [c for c in found if c not in exclude] for kind, found in columns.items()}


def load_models(io: StageIO, phase: str) -> dict[str, RecallChannel]:
    wanted = [n for n in io.cfg.features.model_scores if n in io.cfg.recall.channels]
    return {name: channel_class(name).load(io.input("recall_model", phase=phase, channel=name))
            for name in wanted}


def add_features(cands: pd.DataFrame, key: str, context: FeatureContext | UserContexts,
                 data: RecallData, models: dict[str, RecallChannel],
                 search: SearchContext | None = None) -> pd.DataFrame:
    """The candidates with every feature column appended (and the query features, for
    search candidates given a ``search`` context)."""
    users = data.user_index.encode(cands[S.USER])
    items = data.item_index.encode(cands[S.ITEM])
    if (users < 0).any() or (items < 0).any():
        raise ValueError("candidates name users or items the phase's fitting data does not "
                         "index; rerun recall")
    parts = [cands.reset_index(drop=True), context.compute(users, items)]
    if search is not None:
        parts.append(search.compute(cands[S.QUERY].to_numpy(object), items))
    scores = model_scores(models, data, users, items)
    frame = pd.concat([*parts, scores], axis=1)
    ranked = [*scores.columns, *(c for c in ("fm_score", "ffm_score") if c in frame.columns)]
    return pd.concat([frame, request_ranks(frame, key, ranked)], axis=1)


def labels_for(io: StageIO, phase: Phase, kind: str, targets: pd.DataFrame
               ) -> pd.DataFrame | None:
    """The clicked (request, item) pairs of the tuning phase's targets; None elsewhere.
    (The targets may be a sample of users, ``recall.valid_users``: candidates exist for
    those users only, so the clicks of the others would match nothing anyway.)"""
    if not phase.tunes:
        return None
    if kind == SEARCH:
        return io.read("cases", phase=phase.name)[[CASE, S.ITEM]].drop_duplicates()
    return clicks(targets)


def sources(io: StageIO, phase: str) -> dict[str, Path]:
    """Candidates per kind: recommendation ones as train-fm scored them, search ones as
    recall wrote them (where the phase had search cases)."""
    found = {"recommendation": io.input("scored_candidates", phase=phase)}
    if io.has("candidates", phase=phase, kind=SEARCH):
        found[SEARCH] = io.input("candidates", phase=phase, kind=SEARCH)
    return found


def search_context(io: StageIO, phase: str, data: RecallData) -> SearchContext:
    """The phase's query statistics, with its fitted inverted index where it has one."""
    index = None
    if InvertedIndexChannel.name in io.cfg.recall.channels:
        index = InvertedIndexChannel.load(io.input("recall_model", phase=phase,
                                                   channel=InvertedIndexChannel.name))
    return SearchContext(data, index)


def featurise_part(shard: tuple[int, Path], key: str, context: FeatureContext,
                   data: RecallData, models: dict[str, RecallChannel],
                   labels: pd.DataFrame | None, target: Path, rows: int,
                   search: SearchContext | None = None) -> dict:
    """Part ``index`` of one kind's candidates with their features (and labels), written
    as part ``index`` of ``target`` in pieces of about ``rows`` rows; a part without
    candidates writes nothing. Returns the rows, positives and feature columns."""
    index, source = shard
    found: dict = {"rows": 0, "positives": 0, "columns": None}
    if not table_rows(source):
        return found

    # the merge's first channel ("source") stays with the candidates, for people: the
    # features carry every channel's rank and score, and reading its strings back was
    # 2.3 us a row, a sixth of this stage
    wanted = [c for c in table_columns(source) if c != "source"]

    def frames() -> Iterator[pd.DataFrame]:
        for cands in iter_requests(source, key, rows, wanted):
            frame = add_features(cands, key, context, data, models, search)
            if labels is not None:
                frame[LABEL] = click_labels(frame, key, labels)
                found["positives"] += int(frame[LABEL].sum())
            found["columns"] = feature_columns(frame)
            yield frame

    found["rows"] = write_part(target, index, frames())
    return found


def featurise(io: StageIO, source: Path, key: str, context: FeatureContext, data: RecallData,
              models: dict[str, RecallChannel], labels: pd.DataFrame | None, target: Path,
              label: str, search: SearchContext | None = None) -> dict:
    """Every part of one kind's candidates into the same part of ``target``
    (``featurise_part``) on the configured engine; returns the rows, the positives and
    the feature columns (None: no candidates, and no table written)."""
    shards = list(enumerate(table_parts(source)))
    done = engine_for(io.cfg).map(featurise_part, shards, key=key, context=context,
                                  data=data, models=models, labels=labels, target=target,
                                  rows=io.cfg.features.request_chunk * io.cfg.recall.budget,
                                  search=search)
    total: dict = {"rows": 0, "positives": 0, "columns": None}
    for part in progress(done, label, total=len(shards)):
        total["rows"] += part["rows"]
        total["positives"] += part["positives"]
        if part["columns"] is not None and total["columns"] not in (None, part["columns"]):
            raise AssertionError(f"{label}: parts differ in feature columns")
        total["columns"] = total["columns"] or part["columns"]
    if total["rows"]:
        finish_parts(target, pd.DataFrame())
    return total


def run(cfg: Config, io: StageIO) -> dict:
    fits = phase_inputs(io)
    report: dict[str, dict] = {}
    columns: dict[str, list[str]] = {}
    for phase in PHASES:
        data = phase_data(io, *fits[phase.name])
        context = FeatureContext(data, cfg.features.recent_share)
        models = load_models(io, phase.name)
        report[phase.name] = {}
        for kind, source in sources(io, phase.name).items():
            labels = labels_for(io, phase, kind, fits[phase.name][1])
            written = featurise(
                io, source, request_key(kind), context, data, models, labels,
                io.output("features", phase=phase.name, kind=kind),
                f"features {phase.name} {kind}",
                search_context(io, phase.name, data) if kind == SEARCH else None)
            found, positives = written["columns"], written["positives"]
            if found is None:
                log.info("[features] %s %s: no candidates", phase.name, kind)
                continue
            if columns.setdefault(kind, found) != found:
                raise AssertionError(f"{phase.name} {kind} features differ from the "
                                     f"{PHASES[0].name} phase's: "
                                     f"{sorted(set(found) ^ set(columns[kind]))}")
            report[phase.name][kind] = {"rows": written["rows"]}
            if labels is not None:
                report[phase.name][kind]["positives"] = positives
            log.info("[features] %s %s: %d rows, %d features%s", phase.name, kind, written["rows"],
                     len(columns[kind]), "" if labels is None else f", {positives} positives")
    io.write_json("feature_columns", {
        "columns": without_excluded(columns, cfg.features.exclude),
        "definitions": {**{f.name: f.meaning for f in FEATURES}, **SEARCH_FEATURES}})
    return {"phases": report, "features": {k: len(v) for k, v in columns.items()}}
