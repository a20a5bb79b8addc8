"""Shared fixtures: a tiny synthetic config writing into a temp dir, and ML-100K's path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipeline.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("ML100K_PATH", REPO.parent / "shared" / "datasets" / "ml-100k"))


def tiny_config(data_dir: Path, **overrides: object) -> Config:
    """A synthetic run small enough to go through every stage in a second or two."""
    base = {
        "dataset": "tiny",
        "data_dir": str(data_dir),
        "threads": 1,
        "source": {"kind": "synthetic", "n_users": 300, "n_items": 200,
                   "mean_interactions": 25, "n_topics": 6},
        "recall": {"budget": 100},
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
