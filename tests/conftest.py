"""Shared fixtures: a tiny synthetic config writing into a temp dir, and ML-100K's path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from models.recall import CHANNELS
from pipeline.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("ML100K_PATH", REPO.parent / "shared" / "datasets" / "ml-100k"))


def only_channels(channels: dict, search: dict | None = None) -> dict:
    """A ``recall`` section with exactly these channels (and search channels): the
    configured ones are merged over the registered defaults, null drops the others."""
    return {"channels": {**dict.fromkeys(CHANNELS), **channels},
            "search_channels": {**dict.fromkeys(CHANNELS), **(search or {})}}


def tiny_config(data_dir: Path, **overrides: object) -> Config:
    """A synthetic run small enough to go through every stage in seconds: every default
    channel, with the trained ones on short budgets (the plumbing is under test here)."""
    base = {
        "dataset": "tiny",
        "data_dir": str(data_dir),
        "threads": 1,
        "source": {"kind": "synthetic", "n_users": 300, "n_items": 200,
                   "mean_interactions": 25, "n_topics": 6},
        "recall": {"budget": 100, "channels": {
            "sequence": {"params": {"max_epochs": 4, "patience": 1, "d": 16}},
            "embedding": {"params": {"max_iterations": 4}}}},
        "fm": {"max_epochs": 3},
        "rank": {"params": {"rounds": 40}},
    }
    base.update(overrides)
    return load_config(None, base=base)


@pytest.fixture
def tiny(tmp_path: Path) -> Config:
    return tiny_config(tmp_path)


@pytest.fixture
def ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K


def recall_data_from_matrix(dense, ts=None, items=None, users=None):
    """RecallData for hand-made cases: ``dense`` users x items (nonzero = interaction),
    ``ts`` an optional same-shape array of unix seconds (default: item order)."""
    import numpy as np
    import pandas as pd

    from features.recall_data import build_recall_data

    dense = np.asarray(dense)
    u, i = np.nonzero(dense)
    seconds = np.asarray(ts)[u, i] if ts is not None else i.astype(np.int64)
    fit = pd.DataFrame({"user_id": u, "item_id": i, "weight": 1.0,
                        "ts": pd.to_datetime(seconds, unit="s")})
    if items is None:
        items = pd.DataFrame({"item_id": np.arange(dense.shape[1]),
                              "title": [f"item {j}" for j in range(dense.shape[1])]})
    if users is None:
        users = pd.DataFrame({"user_id": np.arange(dense.shape[0])})
    return build_recall_data(fit, items, users, extra_users=np.arange(dense.shape[0]))
