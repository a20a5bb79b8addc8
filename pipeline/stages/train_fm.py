"""train-fm: FM and FFM feature-cross models, roll-forward like recall.

- ``valid`` phase: fit on train positives plus sampled negatives, early-stop on valid AUC
  (valid interactions against sampled negatives), score the valid-phase candidates.
- ``test`` phase: refit on train + valid for the epoch count chosen on valid, with hard
  negatives from the valid-phase candidates the users did not click in valid (valid is
  fitting data by then), and score the test candidates.
- ``publish`` phase: the same refit on train + valid + test (the hard negatives still
  from valid, the only window whose candidates are judged against clicks), scoring the
  candidates of every active user.
Writes per phase and model ``fm_model`` (state dict, loaded with ``weights_only=True``,
and the field encoder), ``fm_metrics`` (AUC, logloss, samples/s, epochs), and per phase
the recommendation candidates with ``<model>_score`` columns (``scored_candidates``).
Run under ``torchrun --nproc-per-node N -m pipeline
train-fm`` the training is data-parallel (gloo on CPU); only rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.fields import FieldEncoder
from features.interactions import IdIndex
from features.pairs import (
    EncodedTable,
    default_fields,
    encode_pairs,
    encode_sides,
    pair_frame,
    side_tables,
)
from models.distributed import init_distributed, is_main_process
from models.fm_trainer import (
    History,
    Samples,
    SideTerms,
    TrainConfig,
    binary_metric,
    build_model,
    fit,
    pair_scores,
    predict,
    predict_pairs,
    save_model,
    side_terms,
)
from models.negatives import sample_negatives
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config, FMConfig
from pipeline.engine import engine_for
from pipeline.io import finish_parts, table_parts, table_rows, write_part
from pipeline.phases import fitting
from pipeline.progress import progress
from pipeline.protocol import PHASES, RECOMMENDATION, TUNING, Phase

log = logging.getLogger("pipeline")
SCORE_CHUNK = 262_144  # candidate rows encoded at once (their slots: tens of MB)


def labelled(pos: pd.DataFrame, users: IdIndex, items: IdIndex, fm: FMConfig,
             rng: np.random.Generator, hard: pd.DataFrame | None = None) -> pd.DataFrame:
    """Positives (label 1), a seeded sample of ``fm.max_positives`` of them on a larger
    log, and ``fm.negatives`` sampled negatives each (label 0)."""
    pos = pos.drop_duplicates([S.USER, S.ITEM])
    if fm.max_positives and len(pos) > fm.max_positives:
        log.info("[train-fm] training on %d of %d positives (fm.max_positives)",
                 fm.max_positives, len(pos))
        pos = pos.iloc[np.sort(rng.choice(len(pos), fm.max_positives, replace=False))]
    pu, pi = users.encode(pos[S.USER]), items.encode(pos[S.ITEM])
    ok = (pu >= 0) & (pi >= 0)
    pu, pi = pu[ok], pi[ok]
    kwargs = {}
    if hard is not None and len(hard):
        hu, hi = users.encode(hard[S.USER]), items.encode(hard[S.ITEM])
        keep = (hu >= 0) & (hi >= 0)
        kwargs = {"hard_users": hu[keep], "hard_items": hi[keep], "hard_share": fm.hard_share}
    nu, ni = sample_negatives(pu, pi, len(items), fm.negatives, rng,
                              popularity=np.bincount(pi, minlength=len(items)) + 1.0, **kwargs)
    return pd.DataFrame({S.USER: users.decode(np.concatenate([pu, nu])),
                         S.ITEM: items.decode(np.concatenate([pi, ni])),
                         "label": np.concatenate([np.ones(len(pu)), np.zeros(len(nu))])})


def with_fm_scores(cands: pd.DataFrame, models: dict, encoder: FieldEncoder,
                   user_side: pd.DataFrame, item_side: pd.DataFrame, device: str,
                   tables: dict[str, EncodedTable] | None = None,
                   item_terms: dict[str, SideTerms] | None = None) -> pd.DataFrame:
    """``cands`` with ``<model>_score`` appended; each distinct user and item is worked
    out once (``predict_pairs``) where the fields allow, its slots gathered from
    ``tables`` (``encode_tables``) where given, and its terms taken from ``item_terms``
    (per model, ``side_terms`` of every row of ``tables``' item table) where given."""
    sides = encode_sides(encoder, cands, user_side, item_side, tables)
    if sides is None:
        rows = Samples.from_encoded(encode_pairs(encoder, cands, user_side, item_side))
        for kind, model in models.items():
            cands[f"{kind}_score"] = predict(model, rows, batch_size=65_536, device=device)
        return cands
    user, item = sides
    first = Samples.from_encoded(user.encoded)
    for kind, model in models.items():
        terms = (item_terms or {}).get(kind) if item.rows is not None else None
        cands[f"{kind}_score"] = (
            predict_pairs(model, first, user.slots, Samples.from_encoded(item.encoded),
                          item.slots, user.of, item.of, device=device) if terms is None else
            pair_scores(model, side_terms(model, first, user.slots, item.slots, device=device),
                        terms, user.of, item.rows[item.of], device=device))
    return cands


def score_part(shard: tuple[int, Path], target: Path, models: dict, encoder: FieldEncoder,
               user_side: pd.DataFrame, item_side: pd.DataFrame, device: str) -> int:
    """Part ``index`` of the candidates scored (``with_fm_scores``), written as part
    ``index`` of ``target`` and streamed in chunks. Returns the rows written."""
    index, source = shard
    if not table_rows(source):  # an empty part is handed on with its columns
        return write_part(target, index, pq.read_schema(source).empty_table().to_pandas())
    return write_part(target, index, (
        with_fm_scores(batch.to_pandas(), models, encoder, user_side, item_side, device)
        for batch in pq.ParquetFile(source).iter_batches(batch_size=SCORE_CHUNK)))


def score_candidates(cfg: Config, source: Path, target: Path, models: dict,
                     encoder: FieldEncoder, user_side: pd.DataFrame, item_side: pd.DataFrame
                     ) -> None:
    """Score every part of ``source`` into the same part of ``target`` (``score_part``)
    on the configured engine."""
    shards = list(enumerate(table_parts(source)))
    done = engine_for(cfg).map(score_part, shards, target=target, models=models,
                               encoder=encoder, user_side=user_side, item_side=item_side,
                               device=cfg.fm.device)
    for _ in progress(done, "train-fm score", total=len(shards)):
        pass
    finish_parts(target, pd.DataFrame())


def train_phase(io: StageIO, phase: str, fit_df: pd.DataFrame, valid: pd.DataFrame | None,
                hard: pd.DataFrame | None, epochs: dict[str, int]
                ) -> tuple[dict, FieldEncoder, pd.DataFrame, pd.DataFrame, dict[str, dict]]:
    """Fit the configured models on one phase's data; returns the models, the encoder,
    the side tables and, per model, its history plus held-out AUC and logloss."""
    cfg = io.cfg
    fm = cfg.fm
    items_table, users_table = io.read("items"), io.read("users")
    user_side, item_side = side_tables(users_table, items_table, fit_df)
    items = IdIndex(items_table[S.ITEM])
    users = IdIndex(pd.concat([fit_df[S.USER], users_table[S.USER]], ignore_index=True))
    rng = np.random.default_rng(cfg.seed)
    train = labelled(fit_df, users, items, fm, rng, hard)
    encoder = FieldEncoder(fm.fields or default_fields(user_side, item_side))
    encoder.fit(pair_frame(train, user_side, item_side))
    train_samples = Samples.from_encoded(encode_pairs(encoder, train, user_side, item_side),
                                         train["label"].to_numpy())
    valid_samples = None
    if valid is not None:
        held = labelled(valid, users, items, fm, rng)
        valid_samples = Samples.from_encoded(encode_pairs(encoder, held, user_side, item_side),
                                             held["label"].to_numpy())
    models, reports = {}, {}
    for kind in fm.models:
        model = build_model({"kind": kind, "n_features": encoder.n_features,
                             "slot_field": encoder.slot_field.tolist(), "k": fm.k},
                            seed=cfg.seed)
        train_cfg = TrainConfig(optimizer=fm.optimizer, lr=fm.lr, l2=fm.l2,
                                batch_size=fm.batch_size, epochs=epochs.get(kind, fm.max_epochs),
                                patience=fm.patience, seed=cfg.seed, device=fm.device,
                                threads=cfg.threads, backend=fm.backend,
                                native_threads=fm.native_threads,
                                native_update=fm.native_update,
                                native_sample_lr=fm.native_sample_lr)
        history: History = fit(model, train_samples, valid_samples, train_cfg)
        reports[kind] = history.to_dict()
        if valid_samples is not None:
            probs = predict(model, valid_samples, device=fm.device)
            reports[kind].update({f"valid_{m}": binary_metric(m, valid_samples.labels, probs)
                                  for m in ("auc", "logloss")})
        models[kind] = model
        if is_main_process():
            folder = io.output("fm_model", phase=phase, model=kind)
            save_model(model, folder, {"fields": encoder.field_names})
            encoder.save(folder / "encoder")
    return models, encoder, user_side, item_side, reports


def hard_negatives(io: StageIO, tuning_targets: pd.DataFrame) -> pd.DataFrame:
    """The tuning phase's candidates its users did not click: fitting data for later
    phases, where they are negatives the recall stage found plausible."""
    clicked = tuning_targets[[S.USER, S.ITEM]].assign(clicked=True)
    shown = io.read("candidates", columns=[S.USER, S.ITEM], phase=TUNING.name,
                    kind=RECOMMENDATION)
    hard = shown.merge(clicked, on=[S.USER, S.ITEM], how="left")
    return hard[hard["clicked"].isna()][[S.USER, S.ITEM]]


def fit_and_score(io: StageIO, phase: Phase, parts: dict[str, pd.DataFrame],
                  chosen: dict[str, int]) -> dict[str, dict]:
    """Train the models for ``phase`` and score its candidates; returns their reports."""
    held = parts[phase.target] if phase.tunes else None
    hard = None if phase.tunes else hard_negatives(io, parts[TUNING.target])
    models, encoder, user_side, item_side, reports = train_phase(
        io, phase.name, fitting(parts, phase), held, hard, chosen)
    for kind, r in reports.items():
        log.info("[train-fm] %s %s: %d epochs, %.0f samples/s, valid AUC %s", phase.name,
                 kind, len(r["epochs"]), r["samples_per_second"], r.get("valid_auc", "-"))
    if is_main_process():
        score_candidates(io.cfg, io.input("candidates", phase=phase.name, kind=RECOMMENDATION),
                         io.output("scored_candidates", phase=phase.name), models, encoder,
                         user_side, item_side)
    return reports


def run(cfg: Config, io: StageIO) -> dict:
    init_distributed(cfg.fm.device)
    needed = dict.fromkeys([*(p for phase in PHASES for p in phase.fit), TUNING.target])
    parts = {p: io.read("split", part=p) for p in needed}
    metrics: dict[str, dict] = {}
    chosen: dict[str, int] = {}
    for phase in PHASES:
        metrics[phase.name] = fit_and_score(io, phase, parts, chosen)
        if phase.tunes:
            chosen = {kind: r["best_epoch"] + 1 for kind, r in metrics[phase.name].items()}
    if is_main_process():
        io.write_json("fm_metrics", metrics)
    return {"status": "trained " + ", ".join(cfg.fm.models), "epochs": chosen,
            "valid_auc": {k: v.get("valid_auc") for k, v in metrics[TUNING.name].items()}}
