"""recall: fit the configured channels and retrieve merged candidates, roll-forward.

Two phases, each writing ``<phase>/candidates.parquet`` (the merged set with every
channel's evidence), ``<phase>/channels/<name>.parquet`` (each channel's own top list,
for per-channel evaluation) and ``<phase>/models/<name>/``:
- ``valid``: fit on train, retrieve for the users with valid interactions. Channels that
  early-stop watch the valid pairs; what they choose is saved in ``tuned.json``.
- ``test``: refit on train + valid with those choices, retrieve for the test users.
Nothing in the valid phase sees valid-period data as input, and nothing in either phase
sees test. Users are processed in chunks and rows streamed to disk, so memory does not
grow with the number of users.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from features.recall_data import RecallData, build_recall_data
from models.base import HeldOut, RecallChannel, user_chunks
from models.recall import channel_class
from models.recall.merge import ChannelList, merge_candidates, tune_quotas
from pipeline import schema as S
from pipeline.config import Config, ConfigError, RecallConfig
from pipeline.io import ChunkedParquetWriter, read_table
from pipeline.stages import stage_dir

log = logging.getLogger("pipeline")
PHASES = ("valid", "test")


@dataclass
class Phase:
    """What one phase fits on and whom it retrieves for."""

    name: str
    fit: pd.DataFrame
    targets: pd.DataFrame


def phases(cfg: Config) -> list[Phase]:
    split = stage_dir(cfg, "split")
    train, valid, test = (read_table(split / f"{p}.parquet") for p in ("train", "valid", "test"))
    return [Phase("valid", train, valid),
            Phase("test", pd.concat([train, valid], ignore_index=True), test)]


def build_channel(name: str, cfg: RecallConfig, tuned: dict | None = None) -> RecallChannel:
    cls = channel_class(name)
    params = {**cfg.channels[name].params, **(tuned or {})}
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"recall.channels.{name}.params: {err}") from None


def quotas_on_held_out(cfg: Config, data: RecallData, channels: dict[str, RecallChannel],
                       targets: pd.DataFrame) -> dict[str, int]:
    """Tune quotas on a seeded sample of the held-out users (see ``tune_quotas``)."""
    rc = cfg.recall
    users = np.sort(targets[S.USER].unique())
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(users, size=min(rc.tuning_users, len(users)), replace=False))
    codes = data.user_index.encode(sample)
    pairs = targets[targets[S.USER].isin(sample)][[S.USER, S.ITEM]].drop_duplicates()
    pair_keys = pd.Index(list(zip(data.user_index.encode(pairs[S.USER]),
                                  data.item_index.encode(pairs[S.ITEM]), strict=True)))
    hits = {}
    for name, channel in channels.items():
        top = channel.retrieve(data, codes, rc.budget)
        keys = pd.MultiIndex.from_arrays([np.repeat(codes, rc.budget), top.items.ravel()])
        hits[name] = pair_keys.get_indexer(keys).reshape(top.items.shape)
    return tune_quotas(hits, rc.budget, rc.quota_step)


def retrieve_phase(cfg: Config, phase: Phase, data: RecallData, channels: dict[str, RecallChannel],
                   quotas: dict[str, int], out: Path) -> dict:
    """Stream each channel's top list and the merged candidates for the phase's targets."""
    rc = cfg.recall
    (out / "channels").mkdir(parents=True)
    writers = {name: ChunkedParquetWriter(out / "channels" / f"{name}.parquet")
               for name in channels}
    candidates = ChunkedParquetWriter(out / "candidates.parquet")
    targets = phase.targets[S.USER].unique()
    codes = data.user_index.encode(targets)
    seconds = dict.fromkeys(channels, 0.0)
    chunks = list(user_chunks(len(codes), data.n_items, rc.user_chunk))
    for rows in tqdm(chunks, desc=f"recall {phase.name}", unit="chunk", disable=None):
        block = codes[rows]
        raw_users = data.user_index.decode(block)
        lists = []
        for name, channel in channels.items():
            started = time.perf_counter()
            top = channel.retrieve(data, block, rc.budget)
            seconds[name] += time.perf_counter() - started
            r, c = np.nonzero(top.items >= 0)
            writers[name].write(pd.DataFrame({
                S.USER: raw_users[r], S.ITEM: data.item_index.decode(top.items[r, c]),
                S.RANK: (c + 1).astype(np.int32), S.SCORE: top.scores[r, c]}))
            lists.append(ChannelList(name, top, quotas[name]))
        merged = merge_candidates(lists, budget=rc.budget)
        merged.insert(0, S.USER, raw_users[merged.pop("row").to_numpy()])
        merged.insert(1, S.ITEM, data.item_index.decode(merged.pop("item").to_numpy()))
        merged["source"] = merged["source"].astype("string")
        candidates.write(merged)
    empty = pd.DataFrame({S.USER: targets[:0]})
    for writer in writers.values():
        writer.close(empty)
    candidates.close(empty)
    log.info("[recall] %s: %d users, %.1f candidates per user", phase.name, len(targets),
             candidates.rows / max(len(targets), 1))
    return {"users": int(len(targets)), "candidates": candidates.rows,
            "retrieve_seconds": {k: round(v, 3) for k, v in seconds.items()}}


def run(cfg: Config, out: Path) -> dict:
    ingest = stage_dir(cfg, "ingest")
    items = read_table(ingest / "items.parquet")
    users = read_table(ingest / "users.parquet")
    tuned: dict[str, dict] = {}
    report: dict[str, dict] = {}
    quotas = {name: ch.quota for name, ch in cfg.recall.channels.items()}
    for phase in phases(cfg):
        data = build_recall_data(phase.fit, items, users, phase.targets[S.USER].unique())
        held_out = None
        if phase.name == "valid":
            held_out = HeldOut(data.user_index.encode(phase.targets[S.USER]),
                               data.item_index.encode(phase.targets[S.ITEM]))
        channels, fit_seconds = {}, {}
        for name in cfg.recall.channels:
            started = time.perf_counter()
            channel = build_channel(name, cfg.recall, tuned.get(name))
            channels[name] = channel.fit(data, held_out)
            fit_seconds[name] = round(time.perf_counter() - started, 3)
            channel.save(out / phase.name / "models" / name)
            if phase.name == "valid":
                tuned[name] = channel.tuned()
        if phase.name == "valid" and cfg.recall.tune_quotas:
            quotas = quotas_on_held_out(cfg, data, channels, phase.targets)
            log.info("[recall] quotas tuned on valid: %s", quotas)
        report[phase.name] = {"fit_seconds": fit_seconds, **retrieve_phase(
            cfg, phase, data, channels, quotas, out / phase.name)}
    (out / "tuned.json").write_text(json.dumps({"channels": tuned, "quotas": quotas},
                                               indent=2) + "\n")
    return {"phases": report, "tuned": tuned, "quotas": quotas}
