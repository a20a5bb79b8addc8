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
For the published phase, one ranker per objective is then trained on the test-phase
recommendation candidates labelled by the test interactions (the latest labelled
window: their features come from models fitted on train + valid) for the rounds the
cross-fit chose; the blend weights chosen on valid carry over. Writes per phase ranked
and kind ``ranker`` (LightGBM text models), ``blend``, ``importance`` (gain, for the
report) and ``ranker_metrics``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from models.blend import candidate_ndcg, fit_blend
from models.ranker import FoldEnsemble, Ranker, cross_fit
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.io import iter_requests, read_table
from pipeline.protocol import (
    EVALUATED,
    KINDS,
    LABEL,
    PUBLISHED,
    RECOMMENDATION,
    TUNING,
    click_labels,
    clicks,
    request_key,
)
from pipeline.ranking import blend_components

log = logging.getLogger("pipeline")


class NotEnoughRequests(ValueError):
    """Too few valid requests with a click to cross-fit a ranker."""


def with_positives(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows of requests with at least one positive (the others teach a ranker
    nothing)."""
    return frame[frame.groupby(key, sort=False)[LABEL].transform("max") > 0].reset_index(
        drop=True)


def assign_folds(frame: pd.DataFrame, key: str, folds: int, seed: int
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """Requests with at least one positive, and a seeded fold number per row (a request's
    rows share one fold)."""
    useful = with_positives(frame, key)
    requests = useful[key].unique()
    if len(requests) < folds:
        raise NotEnoughRequests(f"{len(requests)} valid requests have a clicked candidate, fewer "
                         f"than rank.folds={folds}: nothing to cross-fit a ranker on (is the "
                         "candidate budget too small?)")
    fold_of = np.random.default_rng(seed).permutation(len(requests)) % folds
    return useful, fold_of[pd.Index(requests).get_indexer(useful[key])]


def train_kind(io: StageIO, frame: pd.DataFrame, columns: list[str], kind: str) -> dict:
    cfg = io.cfg
    key = request_key(kind)
    frame, fold = assign_folds(frame, key, cfg.rank.folds, cfg.seed)
    groups, labels = frame[key].to_numpy(), frame[LABEL].to_numpy()
    report: dict = {"requests": int(frame[key].nunique()), "rows": len(frame),
                    "folds": cfg.rank.folds, "rankers": {}}
    oof: dict[str, np.ndarray] = {}
    importance: dict[str, dict[str, float]] = {}
    for objective in cfg.rank.objectives:
        ensemble, oof[objective] = cross_fit(objective, frame[columns], labels, groups, fold,
                                             cfg.rank.params, cfg.seed, cfg.threads)
        ensemble.save(io.output("ranker", phase=EVALUATED.name, kind=kind,
                                objective=objective))
        importance[objective] = ensemble.importance()
        rounds = [r.best_iteration for r in ensemble.rankers]
        report["rankers"][objective] = {
            "best_iterations": rounds,
            "out_of_fold_ndcg@10": candidate_ndcg(groups, oof[objective], labels)}
        log.info("[train-rank] %s %s: rounds %s, out-of-fold NDCG@10 %.4f", kind, objective,
                 rounds, report["rankers"][objective]["out_of_fold_ndcg@10"])
    channels = strongest_channels(frame, key, cfg.rank.blend_channels)
    weights, alone = fit_blend(blend_components(frame, key, oof, channels), groups, labels)
    io.write_json("blend", {"channels": channels, "weights": weights,
                            "out_of_fold_ndcg@10": alone}, kind=kind)
    io.write_json("importance", importance, kind=kind)
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


def sampled_requests(path: Path, key: str, n: int, seed: int, rows: int) -> pd.DataFrame:
    """Every row of a seeded sample of ``n`` requests (all of them when ``n`` is 0 or
    covers them), read request chunk by request chunk so that memory holds the sample,
    not the file."""
    requests = read_table(path, [key])[key].unique()
    if not n or len(requests) <= n:
        return read_table(path)
    picked = np.random.default_rng(seed).choice(np.sort(requests), n, replace=False)
    return pd.concat([chunk[chunk[key].isin(picked)] for chunk in iter_requests(path, key, rows)],
                     ignore_index=True)


def train_publication(io: StageIO, columns: list[str], rounds: dict[str, int]) -> dict:
    """Rankers for the published phase, roll-forward: trained on the evaluated phase's
    recommendation candidates (models fitted on train + valid) labelled by its own
    interactions, the latest labelled window, for the rounds cross-fitting chose; on as
    many sampled requests as the valid phase had (``recall.valid_users``), since the
    test phase has every user (at 100k users its 30M feature rows outgrew 24 GB)."""
    cfg, key = io.cfg, request_key(RECOMMENDATION)
    frame = sampled_requests(io.input("features", phase=EVALUATED.name, kind=RECOMMENDATION),
                             key, cfg.recall.valid_users, cfg.seed,
                             cfg.features.request_chunk * cfg.recall.budget)
    frame[LABEL] = click_labels(frame, key, clicks(io.read("split", part=EVALUATED.target)))
    frame = with_positives(frame, key)
    report = {"requests": int(frame[key].nunique()), "rows": len(frame), "rounds": rounds}
    for objective, n in rounds.items():
        ranker = Ranker(objective, {**cfg.rank.params, "rounds": n, "early_stopping": 0},
                        seed=cfg.seed, threads=cfg.threads)
        ranker.fit(frame[columns], frame[LABEL].to_numpy(), frame[key].to_numpy())
        FoldEnsemble([ranker]).save(io.output("ranker", phase=PUBLISHED.name,
                                              kind=RECOMMENDATION, objective=objective))
    log.info("[train-rank] publish: %d rankers on %d %s requests", len(rounds),
             report["requests"], EVALUATED.name)
    return report


def run(cfg: Config, io: StageIO) -> dict:
    columns = io.read_json("feature_columns")["columns"]
    report = {}
    for kind in KINDS:
        if kind not in columns or not io.has("features", phase=TUNING.name, kind=kind) \
                or not io.has("features", phase=EVALUATED.name, kind=kind):
            continue
        try:
            report[kind] = train_kind(io, io.read("features", phase=TUNING.name, kind=kind),
                                      columns[kind], kind)
        except NotEnoughRequests as err:
            if kind == RECOMMENDATION:
                raise
            log.warning("[train-rank] %s: %s; no %s ranker", kind, err, kind)
    chosen = report[RECOMMENDATION]["rankers"]
    report["publish"] = train_publication(io, columns[RECOMMENDATION], {
        objective: max(1, round(float(np.mean(r["best_iterations"]))))
        for objective, r in chosen.items()})
    io.write_json("ranker_metrics", report)
    return {"status": f"trained {', '.join(cfg.rank.objectives)} and a blend",
            "ranker": cfg.rank.objective, "kinds": sorted(report)}
