"""``order_free``: a run over a log without time drops what reads event order, and
leaves alone the channels a user already dropped (null in ``recall.channels``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.ordering import order_free
from tests.conftest import only_channels, tiny_config


def test_channels_dropped_by_the_user_are_left_as_they_are(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, recall=only_channels(
        {"cooccurrence": {"params": {"recent_items": 3}}, "sequence": {}, "popularity": {}}))
    free, notes = order_free(cfg)
    kept = {name for name, c in free.recall.channels.items() if c is not None}
    assert kept == {"cooccurrence", "popularity"}
    assert free.recall.channels["cooccurrence"].params["recent_items"] == 0
    assert notes == ["channel sequence left out (it reads the order of events)",
                     "cooccurrence: recent_items 0 (no event is more recent than another)"]
