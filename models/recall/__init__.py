"""Recall channels by name; an unknown name fails loudly with the known ones listed.

A new channel is one module (a ``RecallChannel`` subclass) plus one line here: its class
and its default quota, and for a channel that also answers search queries by default,
its search quota and place among the search channels. The registry order is the default
channel order (ties in the merge go to the channel listed first). Classes are imported
on first use, so checking a config's channel names does not load torch or faiss.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from importlib import import_module, util
from pathlib import Path

from models.base import RecallChannel


@dataclass(frozen=True)
class Registered:
    """``path``: ``module:Class``; ``quota``: default recommendation slots; a
    ``search_quota`` makes it a default search channel, placed by ``search_order``;
    ``uses_order``: it learns from the order of events, so a run over a log without
    time leaves it out (``pipeline.ordering``)."""

    path: str
    quota: int
    search_quota: int | None = None
    search_order: int = 0
    uses_order: bool = False


CHANNELS: dict[str, Registered] = {
    "sequence": Registered("models.recall.sequence:SequenceChannel", 80, uses_order=True),
    "cooccurrence": Registered("models.recall.cooccurrence:CooccurrenceChannel", 80, 50, 3),
    "embedding": Registered("models.recall.embedding:EmbeddingChannel", 80, 50, 4),
    "ease": Registered("models.recall.ease:EaseChannel", 40),
    "text_embedding": Registered("models.recall.text_embedding:TextEmbeddingChannel",
                                 20, 100, 2),
    "inverted_index": Registered("models.recall.inverted_index:InvertedIndexChannel",
                                 20, 100, 1),
    "preference": Registered("models.recall.preference:PreferenceChannel", 40),
    "geography": Registered("models.recall.geography:GeographyChannel", 20),
    "popularity": Registered("models.recall.popularity:PopularityChannel", 30, 50, 5),
    "trending": Registered("models.recall.popularity:TrendingChannel", 30, uses_order=True),
}


def channel_class(name: str) -> type[RecallChannel]:
    try:
        module, cls = CHANNELS[name].path.split(":")
    except KeyError:
        raise KeyError(f"unknown recall channel {name!r}; known: {sorted(CHANNELS)}") from None
    return getattr(import_module(module), cls)


def constructor_keys(name: str) -> list[str] | None:
    """The keyword names channel ``name``'s constructor takes (None: any keyword).

    Read from the module's source when the class defines ``__init__`` itself, so a
    config can be checked without importing torch or faiss; otherwise from the class."""
    if name not in CHANNELS:
        channel_class(name)  # raises the unknown-name error
    module, cls = CHANNELS[name].path.split(":")
    init = _source_init(module, cls)
    if init is not None:
        args = init.args
        names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        return None if args.kwarg is not None else [n for n in names if n != "self"]
    parameters = inspect.signature(channel_class(name)).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters]


def _source_init(module: str, cls: str) -> ast.FunctionDef | None:
    """``cls.__init__`` as written in ``module``'s source, if the class defines one."""
    spec = util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return next((f for f in node.body
                         if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
    return None
