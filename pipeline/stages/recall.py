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
from models.recall.merge import ChannelList, merge_candidates
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
    try:
        cls = channel_class(name)
    except KeyError as err:
        raise ConfigError(f"recall.channels: {err.args[0]}") from None
    params = {**cfg.channels[name].params, **(tuned or {})}
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"recall.channels.{name}.params: {err}") from None


def retrieve_phase(cfg: Config, phase: Phase, data: RecallData, channels: dict[str, RecallChannel],
                   out: Path) -> dict:
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
            lists.append(ChannelList(name, top, rc.channels[name].quota))
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
        report[phase.name] = {"fit_seconds": fit_seconds,
                              **retrieve_phase(cfg, phase, data, channels, out / phase.name)}
    (out / "tuned.json").write_text(json.dumps(tuned, indent=2) + "\n")
    return {"phases": report, "tuned": tuned}
