"""Recall channels by name; an unknown name fails loudly with the known ones listed."""

from __future__ import annotations

from models.base import RecallChannel
from models.recall.cooccurrence import CooccurrenceChannel
from models.recall.popularity import PopularityChannel, TrendingChannel

CHANNELS: dict[str, type[RecallChannel]] = {
    cls.name: cls for cls in (PopularityChannel, TrendingChannel, CooccurrenceChannel)
}


def channel_class(name: str) -> type[RecallChannel]:
    try:
        return CHANNELS[name]
    except KeyError:
        raise KeyError(f"unknown recall channel {name!r}; known: {sorted(CHANNELS)}") from None
