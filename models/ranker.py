"""Learning-to-rank scorer: a LightGBM wrapper over candidate groups, saved as plain text.

One ``Ranker`` trains one of four objectives on rows grouped by request (user, query),
with a group's rows contiguous:

- ``lambdarank`` and ``rank_xendcg``: LightGBM's listwise objectives (graded labels ok);
- ``binary``: pointwise logistic loss, ignoring the groups while fitting;
- ``pairwise``: RankNet, which LightGBM lacks, as a custom objective over every
  within-group pair whose labels differ (``ranknet_pairs``, ``pairwise_objective``).

Whatever the objective, early stopping watches NDCG@10 of the valid groups, so the four
are chosen on the same yardstick. LightGBM's NDCG counts a group with no positive label
as 1 (ours counts it 0); that shifts the curve but not where its maximum is.

Scores are raw margins for every objective (no sigmoid for ``binary``): they are what
ranks, and they mean the same thing after ``save``/``load`` whatever the objective,
including the custom one, whose model file records no objective at all.

Files: ``model.txt`` (LightGBM text, trimmed to the best iteration) and ``ranker.json``
(objective, params, feature names, best iteration, valid NDCG@10 curve). No pickle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit

log = logging.getLogger("pipeline")

OBJECTIVES = ("lambdarank", "rank_xendcg", "binary", "pairwise")
MAX_PAIRS = 50_000_000  # RankNet pairs held at once: ~1.6 GB of indices and per-pair floats
EVAL_AT = 10

DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.1,  # 0.05 took twice the rounds for no steadier out-of-fold NDCG
    # 15 leaves of at least 100 rows (was 31 of 50), chosen out of fold on valid: the final
    # blend +0.009 on synthetic and +0.021 on its search, within noise on ML-100K and five
    # count-log draws (benchmarks/RESULTS.md, "ranking ablation")
    "num_leaves": 15,
    "min_child_samples": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 1.0,
    "bagging_freq": 0,
    "lambda_l2": 1.0,
    "rounds": 500,  # most boosting rounds; ours, not LightGBM's
    "early_stopping": 30,  # rounds without a better valid NDCG@10; 0 = off; ours
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}
_OURS = ("rounds", "early_stopping")
# LightGBM names (and aliases) this wrapper sets itself; taking them from params would
# silently fight the objective argument, 'rounds', 'early_stopping' or the NDCG@10 metric.
_RESERVED = frozenset({
    "objective", "objective_type", "app", "application", "loss",
    "metric", "metrics", "metric_types", "eval_at", "ndcg_eval_at", "ndcg_at",
    "num_iterations", "num_iteration", "n_iter", "num_tree", "num_trees", "num_round",
    "num_rounds", "nrounds", "num_boost_round", "n_estimators", "max_iter",
    "early_stopping_round", "early_stopping_rounds", "n_iter_no_change",
})


def group_sizes(groups: np.ndarray) -> np.ndarray:
    """Sizes of consecutive runs of equal group ids (rows of a group must be contiguous;
    raise ValueError naming the first offending row if a group id reappears later).

    LightGBM only knows groups as run lengths, so a group split in two would silently
    become two requests; refusing that is cheaper than debugging a wrong NDCG.
    """
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {groups.shape}")
    if len(groups) == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    run_ids = groups[starts]
    _, first_run = np.unique(run_ids, return_index=True)
    if len(first_run) < len(run_ids):
        repeated = np.ones(len(run_ids), bool)
        repeated[first_run] = False
        row = int(starts[np.argmax(repeated)])
        gid = groups[row].item() if isinstance(groups[row], np.generic) else groups[row]
        raise ValueError(f"group id {gid!r} reappears at row {row} after other "
                         "groups; rows of a group must be contiguous (sort by group first)")
    return np.diff(np.r_[starts, len(groups)])


def training_rows(labels: np.ndarray, negatives: float, seed: int | Sequence[int]
                  ) -> np.ndarray:
    """The rows a ranker learns from: every positive and a seeded ``negatives`` share of
    the others (all rows when ``negatives`` is 1). A request's unclicked candidates are
    most of its rows and most of them are easy: with a third of them, 9 of 12 rankers
    and 3 of 4 blends held or rose on the valid folds of three logs, and train-rank took
    37-38% less time (benchmarks/RESULTS.md, "ranker training")."""
    labels = np.asarray(labels)
    if not 0 < negatives <= 1:
        raise ValueError(f"negatives must be a share in (0, 1], got {negatives}")
    if negatives == 1:
        return np.ones(len(labels), bool)
    return (labels > 0) | (np.random.default_rng(seed).random(len(labels)) < negatives)


def ranknet_pairs(labels: np.ndarray, sizes: np.ndarray,
                  max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (i, j) of every within-group pair with ``labels[i] > labels[j]``.

    Built without a loop: rows are sorted by (group, label descending), so the rows a
    row beats are one contiguous run of the sorted order, from the end of its tie block
    to the end of its group; ``np.repeat`` expands those runs. With 0/1 labels that is
    positives x negatives per group. Counted before anything is allocated.
    """
    labels = np.asarray(labels, np.float64)
    n = len(labels)
    group = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((-labels, group))
    g, lab = group[order], labels[order]
    group_end = np.cumsum(sizes)[g]
    new_block = np.r_[True, (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])]
    block_start = np.flatnonzero(new_block)
    block_end = np.r_[block_start[1:], n][np.cumsum(new_block) - 1]
    beaten = group_end - block_end
    total = int(beaten.sum())
    if total > max_pairs:
        raise ValueError(f"pairwise objective needs {total:,} pairs (limit {max_pairs:,}); "
                         "use objective='lambdarank', or fewer or smaller groups")
    dtype = np.int32 if n < 2**31 else np.int64
    offsets = np.cumsum(beaten) - beaten
    winner = np.repeat(np.arange(n), beaten)
    loser = np.repeat(block_end - offsets, beaten) + np.arange(total)
    return order[winner].astype(dtype), order[loser].astype(dtype)


def pairwise_objective(pairs_i: np.ndarray, pairs_j: np.ndarray,
                       n_rows: int) -> Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]:
    """RankNet as a LightGBM custom objective over fixed pairs (row i should beat row j).

    Loss = sum over pairs of log(1 + exp(-(s_i - s_j))). With p = sigmoid(-(s_i - s_j)),
    dL/ds_i = -p, dL/ds_j = +p and the diagonal second derivative is p(1 - p) for both;
    rows summed with ``np.bincount``. The pairs are computed once, outside the callable,
    because LightGBM calls it every round. Returns ``f(preds, train_data) -> (grad, hess)``.
    """
    pairs_i = np.asarray(pairs_i)
    pairs_j = np.asarray(pairs_j)

    def objective(preds: np.ndarray, train_data: Any = None) -> tuple[np.ndarray, np.ndarray]:
        s = np.asarray(preds, np.float64)
        p = expit(s[pairs_j] - s[pairs_i])
        h = p * (1.0 - p)
        grad = (np.bincount(pairs_j, weights=p, minlength=n_rows)
                - np.bincount(pairs_i, weights=p, minlength=n_rows))
        hess = (np.bincount(pairs_i, weights=h, minlength=n_rows)
                + np.bincount(pairs_j, weights=h, minlength=n_rows))
        return grad, hess

    return objective


def _feature_names(features: pd.DataFrame) -> list[str]:
    names = list(features.columns)
    if not all(isinstance(c, str) for c in names):
        raise ValueError("feature columns must be named by strings (they are saved as JSON)")
    if len(set(names)) != len(names):
        raise ValueError("feature column names must be unique")
    return names


def _select(features: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The saved features in the saved order: LightGBM reads columns by position."""
    missing = [c for c in names if c not in features.columns]
    if missing:
        raise ValueError(f"missing feature column(s): {', '.join(missing)}")
    return features[names]


def feature_matrix(features: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The saved features in the saved order as the matrix LightGBM makes of a frame
    itself: the columns' common type with float32 (float64 unless all are float32),
    missing values NaN. Built once, it serves every ranker trained on those features
    instead of each converting the frame again (1.7 ms a request's 300 rows)."""
    x = _select(features, names)
    return x.to_numpy(np.result_type(*(d.type for d in x.dtypes), np.float32),
                      na_value=np.nan)


def ensemble_scores(features: pd.DataFrame, ensembles: dict[str, FoldEnsemble]
                    ) -> dict[str, np.ndarray]:
    """Each ensemble's ``predict``, the frame converted once per distinct feature list."""
    matrices: dict[tuple[str, ...], np.ndarray] = {}
    scores = {}
    for name, ensemble in ensembles.items():
        names = tuple(ensemble.feature_names)
        if names not in matrices:
            matrices[names] = feature_matrix(features, list(names))
        scores[name] = ensemble.predict_matrix(matrices[names])
    return scores


class Ranker:
    """Gradient-boosted ranker over candidate groups; see the module docstring."""

    def __init__(self, objective: str = "lambdarank", params: dict | None = None,
                 seed: int = 0, threads: int = 1) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        clash = sorted(_RESERVED & set(params or {}))
        if clash:
            raise ValueError(f"params may not set {clash}: use the objective argument, "
                             "'rounds' and 'early_stopping'; the metric is NDCG@10")
        self.objective = objective
        self.seed = seed
        self.threads = threads
        self.params: dict[str, Any] = {**DEFAULTS, "seed": seed, "num_threads": threads,
                                       **(params or {})}
        self.feature_names: list[str] = []
        self.best_iteration = 0
        self.history: list[float] = []
        self.booster: lgb.Booster | None = None

    def fit(self, features: pd.DataFrame, labels: np.ndarray, groups: np.ndarray,
            valid: tuple[pd.DataFrame, np.ndarray, np.ndarray] | None = None) -> Ranker:
        """Train; with ``valid`` (features, labels, group ids), stop early on its NDCG@10.

        Without ``valid`` every round is kept. Every Dataset gets its group sizes, the
        training one included: LightGBM builds the NDCG metric for it and refuses to
        without query information, even though it is never evaluated there.
        """
        names = _feature_names(features)
        labels = np.asarray(labels)
        sizes = group_sizes(groups)
        if not len(features) == len(labels) == sizes.sum():
            raise ValueError(f"features, labels and groups differ in length: {len(features)}, "
                             f"{len(labels)}, {int(sizes.sum())}")
        train = lgb.Dataset(features, label=labels, group=sizes, feature_name=names)
        valid_set = None
        if valid is not None:
            v_features, v_labels, v_groups = valid
            valid_set = lgb.Dataset(_select(v_features, names), label=np.asarray(v_labels),
                                    group=group_sizes(v_groups), reference=train)
        return self.fit_dataset(train, labels, sizes, names, valid_set)

    def fit_dataset(self, train: lgb.Dataset, labels: np.ndarray, sizes: np.ndarray,
                    names: list[str], valid: lgb.Dataset | None = None) -> Ranker:
        """Train on LightGBM Datasets already built (e.g. subsets of one binned set, so
        cross-fitting bins the features once); ``labels``/``sizes`` are the train set's."""
        rounds = int(self.params["rounds"])
        patience = int(self.params["early_stopping"])
        params = {k: v for k, v in self.params.items() if k not in _OURS}
        params.update(metric="ndcg", eval_at=[EVAL_AT])
        if self.objective == "pairwise":
            pairs_i, pairs_j = ranknet_pairs(labels, sizes)
            params["objective"] = pairwise_objective(pairs_i, pairs_j, len(labels))
        else:
            params["objective"] = self.objective
        valid_sets, callbacks, evals = [], [], {}
        if valid is not None:
            valid_sets = [valid]
            callbacks.append(lgb.record_evaluation(evals))
            if patience > 0:
                callbacks.append(lgb.early_stopping(patience, first_metric_only=True,
                                                    verbose=False))
        booster = lgb.train(params, train, num_boost_round=rounds, valid_sets=valid_sets,
                            valid_names=["valid"][: len(valid_sets)], callbacks=callbacks)
        self.feature_names = names
        self.booster = booster
        self.history = [float(x) for x in evals.get("valid", {}).get(f"ndcg@{EVAL_AT}", [])]
        self.best_iteration = int(booster.best_iteration or booster.current_iteration())
        watched = (f", valid ndcg@{EVAL_AT}={self.history[self.best_iteration - 1]:.4f}"
                   if self.history else "")  # a refit on all labelled requests has no valid
        log.info("[ranker] %s: %d rounds run, best_iteration=%d%s", self.objective,
                 len(self.history) or self.best_iteration, self.best_iteration, watched)
        return self

    def _fitted(self) -> lgb.Booster:
        if self.booster is None:
            raise RuntimeError("Ranker is not fitted; call fit or load first")
        return self.booster

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Raw float64 scores at the best iteration; columns picked by name, extras ignored."""
        return self.predict_matrix(feature_matrix(features, self.feature_names))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """``predict`` of the features as ``feature_matrix`` gives them."""
        booster = self._fitted()
        if len(x) == 0:  # LightGBM refuses an empty matrix
            return np.zeros(0, np.float64)
        return np.asarray(booster.predict(x, num_iteration=self.best_iteration, raw_score=True,
                                          num_threads=self.threads), np.float64)

    def importance(self) -> dict[str, float]:
        """Total split gain per feature at the best iteration, largest first."""
        gain = self._fitted().feature_importance("gain", iteration=self.best_iteration)
        pairs = sorted(zip(self.feature_names, gain, strict=True), key=lambda kv: -kv[1])
        return {name: float(g) for name, g in pairs}

    def save(self, folder: Path) -> None:
        """``model.txt`` (LightGBM text, best iteration only) and ``ranker.json``."""
        booster = self._fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        booster.save_model(str(folder / "model.txt"), num_iteration=self.best_iteration)
        meta = {"objective": self.objective, "params": self.params, "seed": self.seed,
                "threads": self.threads, "feature_names": self.feature_names,
                "best_iteration": self.best_iteration, "history": self.history}
        (folder / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> Ranker:
        """Read what ``save`` wrote; no pickle. ``threads`` overrides the saved count."""
        folder = Path(folder)
        meta = json.loads((folder / "ranker.json").read_text())
        threads = meta["threads"] if threads is None else threads
        params = {k: v for k, v in meta["params"].items() if k != "num_threads"}
        ranker = cls(meta["objective"], params, seed=meta["seed"], threads=threads)
        ranker.feature_names = list(meta["feature_names"])
        ranker.best_iteration = int(meta["best_iteration"])
        ranker.history = [float(x) for x in meta["history"]]
        ranker.booster = lgb.Booster(model_file=str(folder / "model.txt"))
        return ranker


class FoldEnsemble:
    """Rankers cross-fitted on folds of requests (each trained without one fold);
    predicting their mean is steadier than one ranker stopped on one small slice."""

    def __init__(self, rankers: list[Ranker]) -> None:
        if not rankers:
            raise ValueError("a fold ensemble needs at least one ranker")
        if any(r.feature_names != rankers[0].feature_names for r in rankers):
            raise ValueError("a fold ensemble's rankers must share their feature columns")
        self.rankers = rankers

    @property
    def feature_names(self) -> list[str]:
        return self.rankers[0].feature_names

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.predict_matrix(feature_matrix(features, self.feature_names))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """``predict`` of the features as ``feature_matrix`` gives them."""
        return np.mean([r.predict_matrix(x) for r in self.rankers], axis=0)

    def importance(self) -> dict[str, float]:
        """Mean gain per feature over the folds, largest first."""
        total = pd.DataFrame([r.importance() for r in self.rankers]).fillna(0.0).mean()
        return {str(k): float(v) for k, v in total.sort_values(ascending=False).items()}

    def save(self, folder: Path) -> None:
        for i, ranker in enumerate(self.rankers):
            ranker.save(folder / f"fold-{i}")

    @classmethod
    def load(cls, folder: Path, threads: int | None = None) -> FoldEnsemble:
        folds = sorted(folder.glob("fold-*"), key=lambda p: int(p.name.split("-")[1]))
        if not folds:
            raise FileNotFoundError(f"{folder}: no fold-<i> ranker folders")
        return cls([Ranker.load(f, threads) for f in folds])


def _pairwise_per_dataset() -> Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]:
    """RankNet for ``lgb.cv``, whose folds each train on their own subset: the pairs of a
    training Dataset are built on its first call and kept for the later rounds."""
    cache: dict[int, Callable] = {}

    def objective(preds: np.ndarray, train_data: lgb.Dataset) -> tuple[np.ndarray, np.ndarray]:
        key = id(train_data)
        if key not in cache:
            labels = np.asarray(train_data.get_label())
            pairs_i, pairs_j = ranknet_pairs(labels, np.asarray(train_data.get_group()))
            cache[key] = pairwise_objective(pairs_i, pairs_j, len(labels))
        return cache[key](preds, train_data)

    return objective


def binned(features: pd.DataFrame, labels: np.ndarray, groups: np.ndarray) -> lgb.Dataset:
    """Candidate rows as one LightGBM Dataset, binned at its first fit: every objective's
    cross-fit and refit over the same rows trains on it or on subsets of it (``refit``),
    so the features are binned once, not once per fit (binning was 14% of train-rank on
    synthetic-10k when each fit binned its own)."""
    return lgb.Dataset(features, label=np.asarray(labels), group=group_sizes(groups),
                       feature_name=_feature_names(features), free_raw_data=False)


def refit(objective: str, data: lgb.Dataset, labels: np.ndarray, groups: np.ndarray,
          rows: np.ndarray | None, rounds: int, params: dict | None = None, seed: int = 0,
          threads: int = 1) -> Ranker:
    """One ranker on the ``rows`` (sorted positions; None: all) of a ``binned`` set for
    ``rounds``, all kept: nothing is held out to stop on."""
    ranker = Ranker(objective, {**(params or {}), "rounds": rounds, "early_stopping": 0},
                    seed=seed, threads=threads)
    labels, groups = np.asarray(labels), np.asarray(groups)
    if rows is not None:
        data, labels, groups = data.subset(rows), labels[rows], groups[rows]
    return ranker.fit_dataset(data, labels, group_sizes(groups), list(data.feature_name))


def cross_fit(objective: str, features: pd.DataFrame, labels: np.ndarray, groups: np.ndarray,
              fold: np.ndarray, params: dict | None = None, seed: int = 0, threads: int = 1,
              train_rows: np.ndarray | None = None, data: lgb.Dataset | None = None
              ) -> tuple[FoldEnsemble, np.ndarray]:
    """One ranker per fold number in ``fold`` (one per row, shared by a group's rows),
    each trained on the other folds' ``train_rows`` (a boolean mask; all rows when
    None, see ``training_rows``); returns the ensemble and every row's out-of-fold
    score. Held-out folds are scored, and stopped on, with all their rows. ``lgb.cv``
    trains the folds in step and stops them together when the *mean* held-out NDCG@10
    over folds stops rising: one fold's curve is too noisy to stop on (on ML-100K single
    folds stopped anywhere between round 1 and 83). Each fold trains on a subset of one
    ``binned`` Dataset (``data``, the same rows as ``features``; built when None)."""
    names = _feature_names(features)
    labels = np.asarray(labels)
    ranker = Ranker(objective, params, seed=seed, threads=threads)
    settings = {k: v for k, v in ranker.params.items() if k not in _OURS}
    settings.update(metric="ndcg", eval_at=[EVAL_AT], objective=(
        _pairwise_per_dataset() if objective == "pairwise" else objective))
    full = binned(features, labels, groups) if data is None else data
    trainable = np.ones(len(labels), bool) if train_rows is None else np.asarray(train_rows)
    splits = [(np.flatnonzero((fold != f) & trainable), np.flatnonzero(fold == f))
              for f in np.unique(fold)]
    patience = int(ranker.params["early_stopping"])
    callbacks = [lgb.early_stopping(patience, verbose=False)] if patience > 0 else []
    curves = lgb.cv(settings, full, num_boost_round=int(ranker.params["rounds"]),
                    folds=splits, stratified=False, shuffle=False, seed=seed,
                    callbacks=callbacks, return_cvbooster=True)
    cv_booster = curves.pop("cvbooster")
    best = int(cv_booster.best_iteration or len(curves[f"valid ndcg@{EVAL_AT}-mean"]))
    history = [float(x) for x in curves[f"valid ndcg@{EVAL_AT}-mean"]]
    rankers, oof = [], np.zeros(len(labels))
    for booster, (_, held) in zip(cv_booster.boosters, splits, strict=True):
        member = Ranker(objective, params, seed=seed, threads=threads)
        member.booster, member.feature_names = booster, names
        member.best_iteration, member.history = best, history
        oof[held] = member.predict(features.iloc[held])
        rankers.append(member)
    log.info("[ranker] %s: %d folds stopped together at round %d, mean held-out ndcg@%d "
             "%.4f", objective, len(splits), best, EVAL_AT, history[best - 1])
    return FoldEnsemble(rankers), oof
