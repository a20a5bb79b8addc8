"""train-rank: LightGBM rankers and their blend, learned from the valid phase.

The valid-phase candidates were retrieved and featurised by models fitted on train only,
and are labelled by the valid interactions, a later window than anything behind their
features: that is the roll-forward protocol that keeps the ranker from peeking. Per kind
of request (recommendation; search where there are search cases), requests with a
positive are dealt into ``rank.folds`` seeded folds; each objective gets one ranker per
fold, trained on the other folds, all stopped together on the mean NDCG@10 of the
left-out folds, and the blend weights (``models.blend``) are chosen on the out-of-fold
scores of every valid request (slightly optimistic: the stopping round was chosen on
those same folds). Search is skipped, with a warning, when too few cases have a click.
Writes ``<kind>/<objective>/fold-<i>/`` (LightGBM text models), ``<kind>/blend.json``,
``<kind>/importance.json`` (gain, for the report) and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from models.blend import candidate_ndcg, fit_blend, request_rank
from models.ranker import cross_fit
from pipeline import schema as S
from pipeline.config import Config
from pipeline.io import read_table
from pipeline.stages import stage_dir
from pipeline.stages.features import KINDS, LABEL
from pipeline.stages.recall import CASE

log = logging.getLogger("pipeline")


def objectives(cfg: Config) -> list[str]:
    return list(dict.fromkeys([cfg.rank.objective, *cfg.rank.compare]))


def request_key(kind: str) -> str:
    return CASE if kind == "search" else S.USER


def blend_components(frame: pd.DataFrame, key: str, rankers: dict[str, np.ndarray],
                     channels: list[str]) -> dict[str, np.ndarray]:
    """Ranks per row within the request: each ranker's, then each channel's own rank."""
    groups = frame[key].to_numpy()
    ranks = {f"ltr:{name}": request_rank(groups, scores) for name, scores in rankers.items()}
    for name in channels:
        ranks[f"channel:{name}"] = frame[f"{name}_rank"].to_numpy(np.float64)
    return ranks


class NotEnoughRequests(ValueError):
    """Too few valid requests with a click to cross-fit a ranker."""


def assign_folds(frame: pd.DataFrame, key: str, folds: int, seed: int
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """Requests with at least one positive, and a seeded fold number per row (a request's
    rows share one fold)."""
    useful = frame[frame.groupby(key, sort=False)[LABEL].transform("max") > 0]
    useful = useful.reset_index(drop=True)
    requests = useful[key].unique()
    if len(requests) < folds:
        raise NotEnoughRequests(f"{len(requests)} valid requests have a clicked candidate, fewer "
                         f"than rank.folds={folds}: nothing to cross-fit a ranker on (is the "
                         "candidate budget too small?)")
    fold_of = np.random.default_rng(seed).permutation(len(requests)) % folds
    return useful, fold_of[pd.Index(requests).get_indexer(useful[key])]


def train_kind(cfg: Config, frame: pd.DataFrame, columns: list[str], kind: str,
               out: Path) -> dict:
    key = request_key(kind)
    frame, fold = assign_folds(frame, key, cfg.rank.folds, cfg.seed)
    groups, labels = frame[key].to_numpy(), frame[LABEL].to_numpy()
    report: dict = {"requests": int(frame[key].nunique()), "rows": len(frame),
                    "folds": cfg.rank.folds, "rankers": {}}
    oof: dict[str, np.ndarray] = {}
    importance: dict[str, dict[str, float]] = {}
    for objective in objectives(cfg):
        ensemble, oof[objective] = cross_fit(objective, frame[columns], labels, groups, fold,
                                             cfg.rank.params, cfg.seed, cfg.threads)
        ensemble.save(out / kind / objective)
        importance[objective] = ensemble.importance()
        rounds = [r.best_iteration for r in ensemble.rankers]
        report["rankers"][objective] = {
            "best_iterations": rounds,
            "out_of_fold_ndcg@10": candidate_ndcg(groups, oof[objective], labels)}
        log.info("[train-rank] %s %s: rounds %s, out-of-fold NDCG@10 %.4f", kind, objective,
                 rounds, report["rankers"][objective]["out_of_fold_ndcg@10"])
    channels = strongest_channels(frame, key, cfg.rank.blend_channels)
    weights, alone = fit_blend(blend_components(frame, key, oof, channels), groups, labels)
    (out / kind / "blend.json").write_text(json.dumps(
        {"channels": channels, "weights": weights, "out_of_fold_ndcg@10": alone},
        indent=2) + "\n")
    (out / kind / "importance.json").write_text(json.dumps(importance, indent=2) + "\n")
    log.info("[train-rank] %s blend %s: out-of-fold NDCG@10 %.4f", kind, weights,
             alone["blend"])
    report["blend"] = {"weights": weights, "out_of_fold_ndcg@10": alone}
    return report


def strongest_channels(frame: pd.DataFrame, key: str, n: int) -> list[str]:
    """The ``n`` channels whose own ranks do best on the valid requests."""
    ranked = [c[: -len("_rank")] for c in frame.columns
              if c.endswith("_rank") and f"{c[: -len('_rank')]}_score" in frame.columns
              and not c.endswith("_request_rank") and c != "merge_rank"]
    quality = {name: candidate_ndcg(frame[key].to_numpy(), -frame[f"{name}_rank"].to_numpy(
        np.float64), frame[LABEL].to_numpy()) for name in ranked}
    return sorted(quality, key=lambda name: (-quality[name], name))[:n]


def run(cfg: Config, out: Path) -> dict:
    folder = stage_dir(cfg, "features")
    columns = json.loads((folder / "features.json").read_text())["columns"]
    report = {}
    for kind in KINDS:
        source = folder / "valid" / f"{kind}.parquet"
        test = folder / "test" / f"{kind}.parquet"
        if kind not in columns or not source.is_file() or not test.is_file():
            continue
        try:
            report[kind] = train_kind(cfg, read_table(source), columns[kind], kind, out)
        except NotEnoughRequests as err:
            if kind == "recommendation":
                raise
            log.warning("[train-rank] %s: %s; no %s ranker", kind, err, kind)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return {"status": f"trained {', '.join(objectives(cfg))} and a blend",
            "ranker": cfg.rank.objective, "kinds": sorted(report)}
