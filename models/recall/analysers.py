"""Text analysers: a text in, a list of index terms out, chosen by name from a registry.

- ``standard``: Unicode NFKD decomposition with combining marks dropped (so "Café" and
  "cafe" meet), case-folded, split into runs of word characters (letters, digits,
  underscore). Scripts without spaces between words (Chinese, Japanese) come out as one
  token per run, which only matches the same run: use ``jieba`` for Chinese catalogues.
- ``jieba``: Chinese word segmentation in jieba's search mode (long words are also
  emitted as their shorter dictionary words, so "北京烤鸭" yields 北京, 烤鸭 and 北京烤鸭
  and a query for 烤鸭 finds it); the text between runs of Chinese characters goes
  through ``standard``. jieba is imported on first use and its start-up logging is silenced.

Documents and queries must go through the same analyser. A new one is an entry in
``ANALYSERS``; an unknown name fails with the known ones listed.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable

Analyser = Callable[[str], list[str]]

_WORD = re.compile(r"\w+")
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RUNS = re.compile(f"([{_HAN}]+)")


def fold(text: str) -> str:
    """NFKD, combining marks removed, case-folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def standard(text: str) -> list[str]:
    return _WORD.findall(fold(text))


_jieba_ready = False


def _jieba():
    global _jieba_ready
    import jieba  # imported lazily: it loads a 20 MB dictionary

    if not _jieba_ready:
        jieba.setLogLevel(logging.WARNING)
        logging.getLogger("jieba").setLevel(logging.WARNING)
        jieba.initialize()
        _jieba_ready = True
    return jieba


def chinese(text: str) -> list[str]:
    out: list[str] = []
    for i, run in enumerate(_HAN_RUNS.split(text)):  # odd positions: runs of Chinese
        if i % 2:
            out.extend(w for w in _jieba().lcut_for_search(run) if w.strip())
        else:
            out.extend(standard(run))
    return out


ANALYSERS: dict[str, Analyser] = {"standard": standard, "jieba": chinese}


def get_analyser(name: str) -> Analyser:
    try:
        return ANALYSERS[name]
    except KeyError:
        raise KeyError(f"unknown analyser {name!r}; known: {sorted(ANALYSERS)}") from None
