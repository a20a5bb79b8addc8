"""A new recall channel is one class and one registry entry: nothing else is edited."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.recall_data import RecallData
from models.base import HeldOut, RecallChannel
from models.recall import CHANNELS, Registered
from pipeline.catalogue import artifact_path
from pipeline.io import read_table
from pipeline.runner import run_until
from tests.conftest import tiny_config

pytestmark = pytest.mark.integration


class ToyChannel(RecallChannel):
    """Items by the number of users who have them, times ``boost``: one array of state,
    saved and loaded by the base class."""

    name = "toy"
    state = ("counts",)

    def __init__(self, boost: float = 1.0) -> None:
        self.params = {"boost": boost}
        self.counts: np.ndarray | None = None

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> ToyChannel:
        users_per_item = np.asarray(data.history.sum(axis=0)).ravel()
        self.counts = (users_per_item * self.params["boost"]).astype(np.float32)
        return self

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        row = np.where(self.counts > 0, self.counts, -np.inf).astype(np.float32)
        return np.broadcast_to(row, (len(users), len(row))).copy()


def test_a_registered_channel_runs_through_every_stage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(CHANNELS, "toy", Registered(f"{__name__}:ToyChannel", quota=15))
    slow = ("sequence", "embedding", "text_embedding", "inverted_index")
    cfg = tiny_config(tmp_path, recall={"budget": 60, "channels": dict.fromkeys(slow)},
                      publish={"top_k": 60})
    assert "toy" in cfg.recall.channels  # a default, like every registered channel
    run_until(cfg)

    tuned = json.loads(artifact_path(cfg, "tuned").read_text())
    assert "toy" in tuned["quotas"]
    listed = read_table(artifact_path(cfg, "channel_list", phase="test", kind="recommendation",
                                      channel="toy"))
    assert len(listed) and listed["rank"].min() == 1
    saved = artifact_path(cfg, "recall_model", phase="test", channel="toy")
    assert sorted(p.name for p in saved.iterdir()) == ["counts.npy", "params.json"]
    columns = json.loads(artifact_path(cfg, "feature_columns").read_text())["columns"]
    assert {"toy_score", "toy_rank"} <= set(columns["recommendation"])
    metrics = json.loads(artifact_path(cfg, "metrics").read_text())
    assert metrics["systems"]["channel:toy"]["ndcg@10"] > 0
    assert "toy" in metrics["candidate_recall"]


def test_a_registered_channel_takes_its_parameters_from_the_config(
        tmp_path: Path, monkeypatch) -> None:
    from pipeline.config import ConfigError

    monkeypatch.setitem(CHANNELS, "toy", Registered(f"{__name__}:ToyChannel", quota=15))
    cfg = tiny_config(tmp_path, recall={"channels": {"toy": {"params": {"boost": 2.0}}}})
    assert cfg.recall.channels["toy"].params == {"boost": 2.0}
    with pytest.raises(ConfigError, match=r"recall\.channels\.toy\.params.*'boost'"):
        tiny_config(tmp_path, recall={"channels": {"toy": {"params": {"bost": 2.0}}}})
