"""features: ranker features for every candidate of both recall phases.

For each phase the statistics and model scores come from that phase's fitting data and
fitted recall models only (valid: train; test: train + valid), so the rows the ranker
learns from and the rows it ranks are built the same way. Valid-phase rows get a
``label`` (the user clicked the item in valid; for search, the case's clicked item);
test-phase rows never do. Writes ``<phase>/recommendation.parquet``,
``<phase>/search.parquet`` where search cases exist, and ``features.json`` (the feature
columns and what each means). Requests are processed in chunks and streamed to disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.candidate_features import (
    FEATURES,
    FeatureContext,
    model_scores,
    request_ranks,
)
from features.recall_data import RecallData
from models.base import RecallChannel
from models.recall import channel_class
from pipeline import schema as S
from pipeline.config import Config
from pipeline.io import ChunkedParquetWriter, iter_requests, read_table
from pipeline.progress import progress
from pipeline.stages import stage_dir
from pipeline.stages.recall import CASE, PHASES, is_search, phase_data, phase_inputs

log = logging.getLogger("pipeline")
LABEL = "label"
NOT_FEATURES = (S.USER, S.ITEM, CASE, S.QUERY, "source", LABEL)
KINDS = ("recommendation", "search")


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a ranker learns from: every numeric column but keys and labels."""
    return [c for c in frame.columns if c not in NOT_FEATURES
            and pd.api.types.is_numeric_dtype(frame[c].dtype)]


def load_models(cfg: Config, phase: str) -> dict[str, RecallChannel]:
    folder = stage_dir(cfg, "recall") / phase / "models"
    wanted = [n for n in cfg.features.model_scores if n in cfg.recall.channels]
    return {name: channel_class(name).load(folder / name) for name in wanted}


def add_features(cands: pd.DataFrame, key: str, context: FeatureContext, data: RecallData,
                 models: dict[str, RecallChannel]) -> pd.DataFrame:
    """The candidates with every feature column appended."""
    users = data.user_index.encode(cands[S.USER])
    items = data.item_index.encode(cands[S.ITEM])
    if (users < 0).any() or (items < 0).any():
        raise ValueError("candidates name users or items the phase's fitting data does not "
                         "index; rerun recall")
    stats = context.compute(users, items)
    scores = model_scores(models, data, users, items)
    frame = pd.concat([cands.reset_index(drop=True), stats, scores], axis=1)
    ranked = [*scores.columns, *(c for c in ("fm_score", "ffm_score") if c in frame.columns)]
    return pd.concat([frame, request_ranks(frame, key, ranked)], axis=1)


def labels_for(cfg: Config, phase: str, kind: str) -> pd.DataFrame | None:
    """The clicked (key, item) pairs of the valid period; None for the test phase."""
    if phase != "valid":
        return None
    if kind == "search":
        cases = read_table(stage_dir(cfg, "recall") / phase / "search" / "cases.parquet")
        return cases[[CASE, S.ITEM]].drop_duplicates()
    valid = read_table(stage_dir(cfg, "split") / "valid.parquet")
    return valid[~is_search(valid)][[S.USER, S.ITEM]].drop_duplicates()


def sources(cfg: Config, phase: str) -> dict[str, Path]:
    """Candidates per kind: the FM-scored ones for recommendation when train-fm ran."""
    fm = stage_dir(cfg, "train-fm") / ("valid_candidates.parquet" if phase == "valid"
                                       else "candidates.parquet")
    found = {"recommendation": fm if fm.is_file() else
             stage_dir(cfg, "recall") / phase / "candidates.parquet"}
    search = stage_dir(cfg, "recall") / phase / "search" / "candidates.parquet"
    if search.is_file():
        found["search"] = search
    return found


def run(cfg: Config, out: Path) -> dict:
    fits = phase_inputs(cfg)
    report: dict[str, dict] = {}
    columns: dict[str, list[str]] = {}
    for phase in PHASES:
        data = phase_data(cfg, *fits[phase])
        context = FeatureContext(data, cfg.features.recent_share)
        models = load_models(cfg, phase)
        (out / phase).mkdir(parents=True)
        report[phase] = {}
        for kind, source in sources(cfg, phase).items():
            key = CASE if kind == "search" else S.USER
            labels = labels_for(cfg, phase, kind)
            writer = ChunkedParquetWriter(out / phase / f"{kind}.parquet")
            positives = 0
            last = None
            rows = cfg.features.request_chunk * cfg.recall.budget
            chunks = -(-pq.ParquetFile(source).metadata.num_rows // rows)
            for cands in progress(iter_requests(source, key, rows), f"features {phase} {kind}",
                                  total=chunks):
                frame = add_features(cands, key, context, data, models)
                if labels is not None:
                    hit = frame[[key, S.ITEM]].merge(labels.assign(**{LABEL: 1}),
                                                     on=[key, S.ITEM], how="left")[LABEL]
                    frame[LABEL] = hit.fillna(0).to_numpy(np.int8)
                    positives += int(frame[LABEL].sum())
                writer.write(frame)
                last = frame
            if last is None:
                log.info("[features] %s %s: no candidates", phase, kind)
                continue
            writer.close(last)
            found = feature_columns(last)
            if columns.setdefault(kind, found) != found:
                raise AssertionError(f"{phase} {kind} features differ from the valid "
                                     f"phase's: {sorted(set(found) ^ set(columns[kind]))}")
            report[phase][kind] = {"rows": writer.rows}
            if labels is not None:
                report[phase][kind]["positives"] = positives
            log.info("[features] %s %s: %d rows, %d features%s", phase, kind, writer.rows,
                     len(columns[kind]), "" if labels is None else f", {positives} positives")
    (out / "features.json").write_text(json.dumps({
        "columns": columns,
        "definitions": {f.name: f.meaning for f in FEATURES}}, indent=2) + "\n")
    return {"phases": report, "features": {k: len(v) for k, v in columns.items()}}
