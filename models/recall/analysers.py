"""Text analysers: a text in, index terms out, chosen by name from a registry.

An analyser works in two steps, so an index can keep what people typed beside what it
matched: ``tokens`` splits a text into surface words (folded), and ``term`` maps each
word to its index term, or to None for a stop word.

- ``standard``: Unicode NFKD decomposition with combining marks dropped (so "Café" and
  "cafe" meet), case-folded, split into runs of word characters (letters, digits,
  underscore); every word is its own term. Scripts without spaces between words
  (Chinese, Japanese) come out as one token per run, which only matches the same run:
  use ``jieba`` for Chinese catalogues.
- ``english``: ``standard``'s words, less Lucene's English stop words (``STOP_WORDS``),
  each stemmed by the Snowball English stemmer (PyStemmer), so "running", "runs" and
  "run" meet.
- ``jieba``: Chinese word segmentation in jieba's search mode (long words are also
  emitted as their shorter dictionary words, so "北京烤鸭" yields 北京, 烤鸭 and 北京烤鸭
  and a query for 烤鸭 finds it); the text between runs of Chinese characters goes
  through ``standard``. jieba is imported on first use and its start-up logging is
  silenced.

Documents and queries must go through the same analyser. A new one is an entry in
``ANALYSERS``; an unknown name fails with the known ones listed.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

_WORD = re.compile(r"\w+")
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RUNS = re.compile(f"([{_HAN}]+)")

# Lucene's EnglishAnalyzer default stop set
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split())


@dataclass(frozen=True)
class Analyser:
    """``tokens``: text -> surface words; ``term``: word -> index term (None: dropped)."""

    name: str
    tokens: Callable[[str], list[str]]
    term: Callable[[str], str | None]

    def __call__(self, text: str) -> list[str]:
        return [t for t in map(self.term, self.tokens(text)) if t]

    def pairs(self, text: str) -> list[tuple[str, str]]:
        """(surface word, index term) for each word that is not dropped."""
        return [(w, t) for w in self.tokens(text) if (t := self.term(w))]


def fold(text: str) -> str:
    """NFKD, combining marks removed, case-folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def same(word: str) -> str:
    return word


@cache
def _stemmer():
    import Stemmer  # PyStemmer: Snowball's C stemmers

    return Stemmer.Stemmer("english")


def english_term(word: str) -> str | None:
    return None if word in STOP_WORDS else _stemmer().stemWord(word)


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


def chinese_words(text: str) -> list[str]:
    out: list[str] = []
    for i, run in enumerate(_HAN_RUNS.split(text)):  # odd positions: runs of Chinese
        if i % 2:
            out.extend(w for w in _jieba().lcut_for_search(run) if w.strip())
        else:
            out.extend(words(run))
    return out


ANALYSERS: dict[str, Analyser] = {
    "standard": Analyser("standard", words, same),
    "english": Analyser("english", words, english_term),
    "jieba": Analyser("jieba", chinese_words, same),
}


def get_analyser(name: str) -> Analyser:
    try:
        return ANALYSERS[name]
    except KeyError:
        raise KeyError(f"unknown analyser {name!r}; known: {sorted(ANALYSERS)}") from None
