"""The recall stage on logs nobody tried: a catalogue smaller than the budget, and a
channel whose lists break the contract (it must stop the stage, naming the channel)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.recall_data import RecallData
from models.base import InvalidTopKError, TopK
from models.recall import CHANNELS, Registered
from models.recall.popularity import PopularityChannel
from pipeline.catalogue import artifact_path
from pipeline.config import Config
from pipeline.io import read_table
from pipeline.protocol import PHASES
from pipeline.runner import run_until
from tests.conftest import only_channels, tiny_config

pytestmark = pytest.mark.integration
N_ITEMS = 4


def four_item_config(root: Path, **overrides: object) -> Config:
    """40 users on a 4-item catalogue (one to four items each, a day apart), read as a
    team's own file; the recall budget (100) is far larger than the catalogue."""
    rng = np.random.default_rng(0)
    rows = [(u, int(item), 1_600_000_000 + 1000 * u + 86_400 * j)
            for u in range(40)
            for j, item in enumerate(rng.choice(N_ITEMS, rng.integers(1, N_ITEMS + 1), False))]
    pd.DataFrame(rows, columns=["u", "i", "t"]).to_csv(root / "log.csv", index=False)
    source = {"kind": "files", "interactions": [
        {"path": str(root / "log.csv"), "columns": {"user_id": "u", "item_id": "i", "ts": "t"},
         "ts_unit": "s"}]}
    return tiny_config(root / "data", source=source, **overrides)


def test_a_budget_larger_than_the_catalogue_is_clamped_to_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = four_item_config(tmp_path)  # every default channel
    assert cfg.recall.budget > N_ITEMS
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run_until(cfg, "recall")
    assert sum(r.getMessage().startswith("[recall] recall.budget 100 is larger than the "
                                         "catalogue (4 items)") for r in caplog.records) == 1
    for phase in PHASES:
        merged = read_table(artifact_path(cfg, "candidates", phase=phase.name,
                                          kind="recommendation"))
        assert len(merged) and merged["merge_rank"].max() <= N_ITEMS
        assert not merged.duplicated(["user_id", "item_id"]).any()
    listed = read_table(artifact_path(cfg, "channel_list", phase="test", kind="recommendation",
                                      channel="popularity"))
    assert listed["rank"].max() <= N_ITEMS


class NanChannel(PopularityChannel):
    """Popularity whose own ``retrieve`` puts the user's first fitted item first with a
    NaN score: the fault the preference channel once had, on a channel's own path."""

    name = "nan_channel"

    def retrieve(self, data: RecallData, users: np.ndarray, k: int, exclude_seen: bool = True,
                 chunk: int = 0) -> TopK:
        top = super().retrieve(data, users, k, exclude_seen, chunk)
        history = data.history[users]
        has = np.flatnonzero(np.diff(history.indptr) > 0)
        top.items[has, 0] = history.indices[history.indptr[has]]
        top.scores[has, 0] = np.nan
        return top


def test_a_channel_returning_nan_or_seen_items_stops_the_stage_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CHANNELS, "nan_channel", Registered(f"{__name__}:NanChannel", 10))
    cfg = four_item_config(tmp_path, publish={"top_k": 3}, recall={"budget": 3, **only_channels(
        {"popularity": {}, "nan_channel": {}})})
    with pytest.raises(InvalidTopKError, match=r"^nan_channel channel returned invalid top-k "
                       r"lists: .*rows hold a NaN or infinite score \(e\.g\. user code \d+: "
                       r"item \d, score nan\).*an item from the user's fitted history"):
        run_until(cfg, "recall")
