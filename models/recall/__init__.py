"""Recall channels by name; an unknown name fails loudly with the known ones listed.

Classes are imported on first use, so checking a config's channel names does not load
torch or faiss.
"""

from __future__ import annotations

from importlib import import_module

from models.base import RecallChannel

CHANNELS: dict[str, str] = {
    "popularity": "models.recall.popularity:PopularityChannel",
    "trending": "models.recall.popularity:TrendingChannel",
    "cooccurrence": "models.recall.cooccurrence:CooccurrenceChannel",
    "preference": "models.recall.preference:PreferenceChannel",
    "geography": "models.recall.geography:GeographyChannel",
    "embedding": "models.recall.embedding:EmbeddingChannel",
    "text_embedding": "models.recall.text_embedding:TextEmbeddingChannel",
    "sequence": "models.recall.sequence:SequenceChannel",
    "inverted_index": "models.recall.inverted_index:InvertedIndexChannel",
}


def channel_class(name: str) -> type[RecallChannel]:
    try:
        module, cls = CHANNELS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown recall channel {name!r}; known: {sorted(CHANNELS)}") from None
    return getattr(import_module(module), cls)
