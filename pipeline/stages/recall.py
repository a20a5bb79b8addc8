"""recall: fit every configured channel on train + valid, retrieve for the test users.

Writes ``candidates.parquet`` (the merged set with per-channel evidence), one
``channels/<name>.parquet`` per channel (its own top list, for per-channel evaluation)
and each fitted channel under ``models/<name>/``. Users are processed in chunks and
rows streamed to disk, so memory does not grow with the number of users.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from features.interactions import IdIndex, interaction_matrix
from models.base import RecallChannel, user_chunks
from models.recall import channel_class
from models.recall.merge import ChannelList, merge_candidates
from pipeline import schema as S
from pipeline.config import Config, RecallConfig
from pipeline.io import ChunkedParquetWriter, read_table
from pipeline.stages import read_catalogue, stage_dir

log = logging.getLogger("pipeline")
FILL_CHANNEL = "popularity"


def build_channel(name: str, cfg: RecallConfig) -> RecallChannel:
    cls = channel_class(name)
    if name == "cooccurrence":
        return cls(neighbours=cfg.cooccurrence_neighbours)
    return cls()


def fit_channels(cfg: RecallConfig, history) -> tuple[dict[str, RecallChannel], dict[str, float]]:
    channels, seconds = {}, {}
    for name in cfg.channels:
        started = time.perf_counter()
        channels[name] = build_channel(name, cfg).fit(history)
        seconds[name] = round(time.perf_counter() - started, 3)
    return channels, seconds


def _long_list(users: np.ndarray, top, items: IdIndex) -> pd.DataFrame:
    rows, cols = np.nonzero(top.items >= 0)
    return pd.DataFrame({S.USER: users[rows], S.ITEM: items.decode(top.items[rows, cols]),
                         S.RANK: (cols + 1).astype(np.int32), S.SCORE: top.scores[rows, cols]})


def run(cfg: Config, out: Path) -> dict:
    split_dir = stage_dir(cfg, "split")
    fit = pd.concat([read_table(split_dir / "train.parquet"),
                     read_table(split_dir / "valid.parquet")], ignore_index=True)
    targets = read_table(split_dir / "test.parquet", columns=[S.USER])[S.USER].unique()
    items = read_catalogue(cfg)
    users = IdIndex(pd.concat([fit[S.USER], pd.Series(targets)], ignore_index=True))
    history = interaction_matrix(users.encode(fit[S.USER]), items.encode(fit[S.ITEM]),
                                 len(users), len(items))

    rc = cfg.recall
    if FILL_CHANNEL not in rc.channels:
        raise ValueError(f"recall.channels must include '{FILL_CHANNEL}', the fill channel")
    channels, fit_seconds = fit_channels(rc, history)
    for name, channel in channels.items():
        channel.save(out / "models" / name)

    (out / "channels").mkdir()
    writers = {name: ChunkedParquetWriter(out / "channels" / f"{name}.parquet")
               for name in channels}
    candidates = ChunkedParquetWriter(out / "candidates.parquet")
    target_codes = users.encode(targets)
    retrieve_seconds = dict.fromkeys(channels, 0.0)
    chunks = list(user_chunks(len(target_codes), len(items), rc.user_chunk))
    for rows in tqdm(chunks, desc="recall", unit="chunk", disable=None):
        codes = target_codes[rows]
        block = history[codes]
        raw_users = users.decode(codes)
        lists = []
        for name, channel in channels.items():
            started = time.perf_counter()
            top = channel.retrieve(block, rc.budget)
            retrieve_seconds[name] += time.perf_counter() - started
            writers[name].write(_long_list(raw_users, top, items))
            lists.append(ChannelList(name, top, rc.channels[name].quota))
        merged = merge_candidates(lists, fill=FILL_CHANNEL, budget=rc.budget)
        merged.insert(0, S.USER, raw_users[merged.pop("row").to_numpy()])
        merged.insert(1, S.ITEM, items.decode(merged.pop("item").to_numpy()))
        merged["source"] = merged["source"].astype("string")
        candidates.write(merged)
    empty = pd.DataFrame({S.USER: raw_users[:0] if chunks else targets[:0]})
    for writer in writers.values():
        writer.close(empty)
    candidates.close(empty)
    per_user = candidates.rows / max(len(targets), 1)
    log.info("[recall] %d users, %.1f candidates per user", len(targets), per_user)
    return {"users": int(len(targets)), "candidates": candidates.rows,
            "fit_seconds": fit_seconds,
            "retrieve_seconds": {k: round(v, 3) for k, v in retrieve_seconds.items()}}
