"""train-rank: LightGBM rankers and their blend, learned from the valid phase.

The valid-phase candidates were retrieved and featurised by models fitted on train only,
and are labelled by the valid interactions, a later window than anything behind their
features: that is the roll-forward protocol that keeps the ranker from peeking. Per kind
of request (recommendation; search where there are search cases), requests with a
positive are dealt into ``rank.folds`` seeded folds; each objective gets one ranker per
fold, trained on the other folds (every clicked candidate and a seeded
``rank.negatives`` share of the others), all stopped together on the mean NDCG@10 of
every row of the left-out folds, and the blend (``models.blend``: the fusion of every
component, or one alone) is decided on the out-of-fold scores of every valid request
(slightly optimistic: the stopping round was chosen on those same folds). The folds only
choose the rounds and the blend: the test phase is ranked by one ranker per objective
refitted on every valid request for those rounds, the recipe the publication uses one
window later, so the system evaluated is the system published (and ranks with one model
per objective, not one per fold).
Search is skipped, with a warning, when too few cases have a click.
For the published phase, one ranker per objective is then trained on the test-phase
recommendation candidates labelled by the test interactions (the latest labelled
window: their features come from models fitted on train + valid) for the rounds the
cross-fit chose; the blend decided on valid carries over. Writes per phase ranked
and kind ``ranker`` (LightGBM text models), ``blend``, ``importance`` (gain of the
test phase's rankers, for the report) and ``ranker_metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from models.blend import candidate_ndcg, fit_blend
from models.ranker import (
    FoldEnsemble,
    Ranker,
    binned,
    cross_fit,
    group_sizes,
    refit,
    training_rows,
)
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.engine import dask_client
from pipeline.io import iter_requests, read_table, table_parts
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


class NotEnoughRequests(S.DataError):
    """Too few valid requests with a click to cross-fit a ranker: the data's doing, so
    the command reports it in a line (``DataError``), not a traceback."""


def with_positives(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The rows of requests with at least one positive (the others teach a ranker
    nothing)."""
    return frame[frame.groupby(key, sort=False)[LABEL].transform("max") > 0].reset_index(
        drop=True)


def assign_folds(frame: pd.DataFrame, key: str, folds: int, seed: int,
                 asked: Callable[[], int] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Requests with at least one positive, and a seeded fold number per row (a request's
    rows share one fold). ``asked`` counts the requests there were before those without
    a positive were left out, if they were (default: ``frame``'s), for the error alone."""
    useful = with_positives(frame, key)
    requests = useful[key].unique()
    if len(requests) < folds:
        raise NotEnoughRequests(
            f"{len(requests)} of {frame[key].nunique() if asked is None else asked()} "
            "valid requests have a clicked "
            f"candidate, fewer than rank.folds={folds}: nothing to cross-fit a ranker on "
            "(too few valid events, or a candidate budget too small to hold them)")
    fold_of = np.random.default_rng(seed).permutation(len(requests)) % folds
    return useful, fold_of[pd.Index(requests).get_indexer(useful[key])]


def train_kind(io: StageIO, columns: list[str], kind: str) -> dict:
    """The kind's rankers cross-fitted on the valid requests with a clicked candidate,
    read request chunk by request chunk so that memory holds those, not the whole table
    (a 200k-item log's 8.9M valid rows: 5 GB of Arrow and pandas at once), then refitted
    for the test phase; and the blend, chosen out of fold."""
    cfg = io.cfg
    key = request_key(kind)
    path = io.input("features", phase=TUNING.name, kind=kind)
    frame = sampled_requests(path, key, 0, cfg.seed, request_rows(cfg),
                             keep=lambda chunk: with_positives(chunk, key))
    frame, fold = assign_folds(frame, key, cfg.rank.folds, cfg.seed,
                               lambda: read_table(path, [key])[key].nunique())
    groups, labels = frame[key].to_numpy(), frame[LABEL].to_numpy()
    report: dict = {"requests": int(frame[key].nunique()), "rows": len(frame),
                    "folds": cfg.rank.folds, "rankers": {}}
    trained_on = training_rows(labels, cfg.rank.negatives, cfg.seed)
    report["trained_rows"] = int(trained_on.sum())
    oof: dict[str, np.ndarray] = {}
    importance: dict[str, dict[str, float]] = {}
    features = frame[columns]  # one copy, shared by the binned set and every cross-fit
    data = binned(features, labels, groups)
    for objective in cfg.rank.objectives:
        ensemble, oof[objective] = cross_fit(objective, features, labels, groups, fold,
                                             cfg.rank.params, cfg.seed, cfg.threads,
                                             trained_on, data)
        rounds = ensemble.rankers[0].best_iteration  # lgb.cv stops the folds together
        del ensemble  # its fold boosters hold their binned subsets: gone before the next
        tested = refitted(cfg, objective, rounds, data, labels, groups,
                          np.flatnonzero(trained_on))
        tested.save(io.output("ranker", phase=EVALUATED.name, kind=kind, objective=objective))
        importance[objective] = tested.importance()
        report["rankers"][objective] = {
            "rounds": rounds,
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


def refitted(cfg: Config, objective: str, rounds: int, data: lgb.Dataset, labels: np.ndarray,
             groups: np.ndarray, rows: np.ndarray | None = None) -> FoldEnsemble:
    """``models.ranker.refit`` with the config's settings, as an ensemble of one."""
    return FoldEnsemble([refit(objective, data, labels, groups, rows, rounds, cfg.rank.params,
                               cfg.seed, cfg.threads)])


def strongest_channels(frame: pd.DataFrame, key: str, n: int) -> list[str]:
    """The ``n`` channels whose own ranks do best on the valid requests."""
    ranked = [c[: -len("_rank")] for c in frame.columns
              if c.endswith("_rank") and f"{c[: -len('_rank')]}_score" in frame.columns
              and not c.endswith("_request_rank") and c != "merge_rank"]
    quality = {name: candidate_ndcg(frame[key].to_numpy(), -frame[f"{name}_rank"].to_numpy(
        np.float64), frame[LABEL].to_numpy()) for name in ranked}
    return sorted(quality, key=lambda name: (-quality[name], name))[:n]


def request_rows(cfg: Config) -> int:
    """Rows read at a time from a features table: a features chunk's requests."""
    return cfg.features.request_chunk * cfg.recall.budget


def sampled_requests(path: Path, key: str, n: int, seed: int, rows: int,
                     keep: Callable[[pd.DataFrame], pd.DataFrame] | None = None
                     ) -> pd.DataFrame:
    """Every row of a seeded sample of ``n`` requests (all of them when ``n`` is 0 or
    covers them), read request chunk by request chunk so that memory holds the sample,
    not the file; ``keep`` filters each chunk's whole requests as it is read."""
    picked = None
    if n:
        requests = read_table(path, [key])[key].unique()
        if len(requests) > n:
            picked = np.random.default_rng(seed).choice(np.sort(requests), n, replace=False)
    if picked is None and keep is None:
        return read_table(path)
    chunks = (chunk if picked is None else chunk[chunk[key].isin(picked)]
              for chunk in iter_requests(path, key, rows))
    kept = [chunk if keep is None else keep(chunk) for chunk in chunks]
    return pd.concat(kept, ignore_index=True) if kept else read_table(path)  # no rows


def labelled_part(path: Path, part: int, key: str, features: list[str], targets: pd.DataFrame,
                  negatives: float, seed: int) -> pd.DataFrame:
    """A features part's requests with a click among their candidates, labelled, with
    the ``rank.negatives`` share of their unclicked rows (seeded by part number): a part
    holds whole requests, so its groups stay whole in the Dask partition it becomes."""
    frame = read_table(path, [*dict.fromkeys([key, S.USER, S.ITEM]), *features])
    frame[LABEL] = click_labels(frame, key, targets)
    frame = with_positives(frame, key)
    return sampled_negatives(frame, negatives, [seed, part])


def sampled_negatives(frame: pd.DataFrame, negatives: float, seed: int | list[int]
                 ) -> pd.DataFrame:
    """``frame``'s rows a ranker learns from (``models.ranker.training_rows``)."""
    keep = training_rows(frame[LABEL].to_numpy(), negatives, seed)
    return frame if keep.all() else frame[keep].reset_index(drop=True)


def dask_training_frame(io: StageIO, columns: list[str], key: str) -> tuple[Any, Any, int]:
    """The test requests (of the ``recall.test_users`` sample, if set) with a click, as a
    Dask frame persisted on the cluster for every objective to train on: one partition
    per features part, empty ones dropped, and the group sizes aligned partition by
    partition (NOTES.md: a misaligned or cut group trains silently wrong). Returns the
    frame, the group sizes and the rows."""
    import dask.dataframe as dd

    source = io.input("features", phase=EVALUATED.name, kind=RECOMMENDATION)
    parts = table_parts(source)
    frame = dd.from_map(labelled_part, parts, range(len(parts)), key=key, features=columns,
                        targets=clicks(io.read("split", part=EVALUATED.target)),
                        negatives=io.cfg.rank.negatives, seed=io.cfg.seed,
                        enforce_metadata=False).persist()
    lengths = frame.map_partitions(len).compute().to_numpy()
    frame = frame.partitions[np.flatnonzero(lengths).tolist()]
    sizes = frame[key].map_partitions(lambda s: pd.Series(group_sizes(s.to_numpy())))
    if not (sizes.map_partitions(lambda s: pd.Series([s.sum()])).compute().to_numpy()
            == lengths[lengths > 0]).all():
        raise AssertionError("group sizes do not cover their partitions")
    return frame, sizes.to_dask_array(lengths=True), int(lengths.sum())


def fit_on_dask(cfg: Config, frame: Any, sizes: Any, columns: list[str], objective: str,
                rounds: int) -> Ranker:
    """A published ranker trained with ``lightgbm.dask`` on ``dask_training_frame``."""
    from lightgbm.dask import DaskLGBMRanker

    ranker = Ranker(objective, {**cfg.rank.params, "rounds": rounds, "early_stopping": 0},
                    seed=cfg.seed, threads=cfg.dask.threads_per_worker)
    params = {k: v for k, v in ranker.params.items()  # lightgbm.dask sets the threads
              if k not in ("rounds", "early_stopping", "num_threads")}
    model = DaskLGBMRanker(client=dask_client(cfg), objective=objective, n_estimators=rounds,
                           **params)
    model.fit(frame[columns], frame[LABEL], group=sizes)
    ranker.booster, ranker.feature_names = model.booster_, list(columns)
    ranker.best_iteration = rounds
    return ranker


def train_publication(io: StageIO, columns: list[str], rounds: dict[str, int]) -> dict:
    """Rankers for the published phase, roll-forward: trained on the evaluated phase's
    recommendation candidates (models fitted on train + valid) labelled by its own
    interactions, the latest labelled window, for the rounds cross-fitting chose, on
    the same ``rank.negatives`` share of unclicked rows. On
    one machine (``rank.engine: local``) on as many sampled requests as the valid phase
    had (``recall.valid_users``), since the test phase may have every user (at 100k users its
    30M feature rows outgrew 24 GB); with ``rank.engine: dask`` on all of them."""
    cfg, key = io.cfg, request_key(RECOMMENDATION)
    report: dict = {"rounds": rounds, "engine": cfg.rank.engine}
    if cfg.rank.engine == "dask":
        frame, sizes, rows = dask_training_frame(io, columns, key)
        report.update(requests=int(frame[key].nunique().compute()), rows=rows)

        def fit(objective: str, n: int) -> FoldEnsemble:
            return FoldEnsemble([fit_on_dask(cfg, frame, sizes, columns, objective, n)])
    else:
        clicked = clicks(io.read("split", part=EVALUATED.target))

        def labelled(chunk: pd.DataFrame) -> pd.DataFrame:
            return with_positives(chunk.assign(**{LABEL: click_labels(chunk, key, clicked)}),
                                  key)

        frame = sampled_requests(io.input("features", phase=EVALUATED.name,
                                          kind=RECOMMENDATION),
                                 key, cfg.recall.valid_users, cfg.seed, request_rows(cfg),
                                 keep=labelled)
        frame = sampled_negatives(frame, cfg.rank.negatives, cfg.seed)
        report.update(requests=int(frame[key].nunique()), rows=len(frame))
        labels, groups = frame[LABEL].to_numpy(), frame[key].to_numpy()
        data = binned(frame[columns], labels, groups)

        def fit(objective: str, n: int) -> FoldEnsemble:
            return refitted(cfg, objective, n, data, labels, groups)
    for objective, n in rounds.items():
        fit(objective, n).save(io.output("ranker", phase=PUBLISHED.name, kind=RECOMMENDATION,
                                         objective=objective))
    log.info("[train-rank] publish: %d rankers on %d %s requests (%s)", len(rounds),
             report["requests"], EVALUATED.name, cfg.rank.engine)
    return report


def run(cfg: Config, io: StageIO) -> dict:
    columns = io.read_json("feature_columns")["columns"]
    report = {}
    for kind in KINDS:
        if kind not in columns or not io.has("features", phase=TUNING.name, kind=kind) \
                or not io.has("features", phase=EVALUATED.name, kind=kind):
            continue
        try:
            report[kind] = train_kind(io, columns[kind], kind)
        except NotEnoughRequests as err:
            if kind == RECOMMENDATION:
                raise
            log.warning("[train-rank] %s: %s; no %s ranker", kind, err, kind)
    chosen = report[RECOMMENDATION]["rankers"]
    report["publish"] = train_publication(io, columns[RECOMMENDATION], {
        objective: r["rounds"] for objective, r in chosen.items()})
    io.write_json("ranker_metrics", report)
    return {"status": f"trained {', '.join(cfg.rank.objectives)} and a blend",
            "ranker": cfg.rank.objective, "kinds": sorted(report)}
