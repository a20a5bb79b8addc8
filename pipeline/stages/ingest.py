"""ingest: load the configured source, validate it against the contract, write raw/.

Nothing is written unless every table passes: a DataError aborts before the atomic
rename, so a bad input never replaces a good earlier ingest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.io import file_hash, write_table
from pipeline.sources import RawTables, load_source

log = logging.getLogger("pipeline")


def validated_tables(raw: RawTables, unknown_ids: str, missing_ids: str = "error"
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, int],
                                list[str]]:
    """Validate every table, align id types, and resolve missing ids and unknown
    references by policy; with notes on what passes but a user should know
    (``S.stray_times``)."""
    dropped = {"missing_ids": 0, "unknown_items": 0, "unknown_users": 0}
    parts, notes = [], []
    for origin, df in raw.interactions:
        if df.empty and len(raw.interactions) > 1:  # an hour without events, say
            notes.append(f"{origin}: no rows; the other files are read")
            continue
        if missing_ids == "drop":
            df, origin, n = S.without_missing_ids(df, origin)
            dropped["missing_ids"] += n
            if df.empty:  # nothing to check; a mapping gone wrong, perhaps
                notes.append(f"{origin}: every row lacks a user or item id, so none is "
                             "read: is the right column mapped?")
                continue
        parts.append((origin, S.validate_interactions(df, origin)))
    if not parts:
        raise S.DataError("no interaction has both a user and an item id (all "
                          f"{dropped['missing_ids']:,} were dropped): is the right column "
                          "mapped?" if dropped["missing_ids"] else
                          "no interactions: every file is empty")
    notes += [note for origin, df in parts if (note := S.stray_times(df, origin))]
    items = S.validate_items(raw.items[1], raw.items[0]) if raw.items else None
    users = S.validate_users(raw.users[1], raw.users[0]) if raw.users else None

    frames = [df for _, df in parts]
    for column, table in ((S.ITEM, items), (S.USER, users)):
        tables = [*frames, *([table] if table is not None else [])]
        S.harmonise_id_types(*[(df, column) for df in tables])

    checked = []
    for (origin, _), df in zip(parts, frames, strict=True):
        if items is not None:
            df, n = S.check_references(df, S.ITEM, items[S.ITEM], origin, "items", unknown_ids)
            dropped["unknown_items"] += n
        if users is not None:
            df, n = S.check_references(df, S.USER, users[S.USER], origin, "users", unknown_ids)
            dropped["unknown_users"] += n
        checked.append(df)
    interactions = pd.concat(checked, ignore_index=True)
    S.require_rows(interactions, "interactions (after dropping unknown ids)")
    if items is None:
        ids = pd.Series(interactions[S.ITEM].unique()).sort_values(ignore_index=True)
        items = pd.DataFrame({S.ITEM: ids, S.TITLE: ids.astype("string")})
    if users is None:
        ids = pd.Series(interactions[S.USER].unique()).sort_values(ignore_index=True)
        users = pd.DataFrame({S.USER: ids})
    return interactions, items, users, dropped, notes


def _source_files(cfg: Config) -> list[Path]:
    src = cfg.source
    if src.kind == "movielens-100k":
        from pipeline.sources.movielens import source_files

        return source_files(src.path)
    if src.kind == "files":
        from pipeline.sources.files import matching_files

        specs = [*src.interactions, *(t for t in (src.items, src.users) if t is not None)]
        return [path for spec in specs for path in matching_files(spec.path)]
    return []


def external_inputs(cfg: Config) -> dict[str, str]:
    """The source files by content hash: a changed or added log reruns ingest."""
    return {str(p): file_hash(p) for p in _source_files(cfg)}


def run(cfg: Config, io: StageIO) -> dict:
    hashes = external_inputs(cfg)  # before reading, as the runner does: see runner.py
    raw = load_source(cfg)
    interactions, items, users, dropped, notes = validated_tables(raw, cfg.ingest.unknown_ids,
                                                                 cfg.ingest.missing_ids)
    if cfg.ingest.as_of is not None:
        cutoff = S.coerce_timestamp(pd.Series([cfg.ingest.as_of]), "ingest.as_of").iloc[0]
        later = interactions[S.TS] > cutoff
        log.info("[ingest] %d interactions after ingest.as_of %s left out", int(later.sum()),
                 cfg.ingest.as_of)
        interactions = interactions[~later].reset_index(drop=True)
        S.require_rows(interactions, f"interactions up to ingest.as_of {cfg.ingest.as_of}")
    if any(dropped.values()):
        log.warning("[ingest] interactions left out: %s", S.left_out(dropped))
    notes = [*raw.notes, *notes]
    if weak := int((interactions[S.WEIGHT] <= 0).sum()):  # a dislike is not one here
        notes.append(f"{weak} interactions have a weight of 0 or less: each counts as a "
                     "positive interaction in every channel but ALS under embedding "
                     "weighting 'weight' (there a negative weight is a dislike and 0 no "
                     "signal); leave dislikes out of the log if they should not count")
    for note in notes:
        log.warning("[ingest] %s", note)
    write_table(interactions, io.output("interactions"))
    write_table(items, io.output("items"))
    write_table(users, io.output("users"))
    counts = {"interactions": len(interactions), "items": len(items), "users": len(users)}
    log.info("[ingest] %s", counts)
    return {"counts": counts, "dropped": dropped, "notes": notes,
            "source_files": hashes,
            "as_of": str(interactions[S.TS].max())}
