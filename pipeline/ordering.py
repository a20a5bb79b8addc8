"""A run over a log without time uses no order the log does not have.

The ``files`` source gives a log without a timestamp column one timestamp for every event,
and the split then holds out a seeded random sample per user (``pipeline.splitting``).
Whatever reads the order of events would learn the file's sort order instead (usually
user and item id: each user's "latest" items would be their highest ids). So the
channels registered as reading order (the sequence model, trending) are left out, and
seeds from a user's latest items (``recent_items``) are switched off. Half-lives and the
time features need nothing: with one timestamp every age is zero.

The runner applies this to the config every stage after the split sees, so they all
agree on which channels exist.
"""

from __future__ import annotations

import inspect
from typing import Any

from models.recall import CHANNELS, channel_class
from pipeline.config import Config


def order_free(cfg: Config) -> tuple[Config, list[str]]:
    """``cfg`` without what reads event order, and a line for each thing changed."""
    tree = cfg.to_dict()
    channels = tree["recall"]["channels"]
    notes = []
    for name in [n for n, settings in channels.items() if settings is not None]:
        if CHANNELS[name].uses_order:
            channels[name] = None
            notes.append(f"channel {name} left out (it reads the order of events)")
        elif _recent_items(name, channels[name]["params"]):
            channels[name]["params"]["recent_items"] = 0
            notes.append(f"{name}: recent_items 0 (no event is more recent than another)")
    return Config.model_validate(tree), notes


def _recent_items(name: str, params: dict[str, Any]) -> int:
    """The latest items channel ``name`` seeds from as configured (0: none, or no such
    setting)."""
    if "recent_items" in params:
        return params["recent_items"]
    default = inspect.signature(channel_class(name)).parameters.get("recent_items")
    return 0 if default is None else default.default
