"""The embedded synthetic data set: a log with structure a good recommender can find.

Every draw is vectorised and comes from one seeded generator. What is planted:
- items belong to latent topics, with Zipf popularity, a category, tags and text drawn
  from the topic's vocabulary; a share of items is sold in one region only;
- users have sparse (Dirichlet) topic tastes that drift over the log, and a home region;
- events come in sessions that mostly stay on one topic, so items of a session co-occur;
- a share of events are searches for the clicked item, typed as people type: its title
  words, a word's first syllables, a misspelled word, a tag, or the topic's synonyms
  that no item text contains (shared by every item of the topic: the head queries).
Popularity alone ignores all of it, so models that use the structure beat it widely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.recall_data import SECONDS_PER_DAY
from pipeline import schema as S
from pipeline.config import SyntheticSource
from pipeline.sources import RawTables

_SYLLABLES = np.array(["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe",
                       "gu", "hi", "jo", "ba", "ce", "ly", "mo", "nu"])
_WORDS_PER_TOPIC = 30
_TAGS_PER_TOPIC = 8
_GLOBAL_WORDS = 60
_SUBCATEGORIES = 3
_MEAN_SESSION = 8
_START = np.datetime64("2026-01-01T00:00:00", "s")
_CHUNK = 1 << 20


def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct pseudo-words of three syllables."""
    k = len(_SYLLABLES)
    codes = rng.choice(k**3, size=n, replace=False)
    return np.char.add(np.char.add(_SYLLABLES[codes // k**2], _SYLLABLES[(codes // k) % k]),
                       _SYLLABLES[codes % k])


def _join_rows(words: np.ndarray) -> list[str]:
    return [" ".join(row) for row in words.tolist()]


def _categorical(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One draw per entry of ``rows`` from the distribution ``probs[row]`` (chunked)."""
    out = np.empty(len(rows), np.int64)
    cum = np.cumsum(probs, axis=1)
    for lo in range(0, len(rows), _CHUNK):
        sel = rows[lo: lo + _CHUNK]
        u = rng.random(len(sel))[:, None] * cum[sel, -1:]
        out[lo: lo + _CHUNK] = np.minimum((cum[sel] < u).sum(axis=1), probs.shape[1] - 1)
    return out


class _ItemSampler:
    """Draws an item of a given topic with probability proportional to its popularity."""

    def __init__(self, topic: np.ndarray, weight: np.ndarray, n_topics: int) -> None:
        self.order = np.argsort(topic, kind="stable")
        self.cum = np.cumsum(weight[self.order])
        bounds = np.searchsorted(topic[self.order], np.arange(n_topics + 1))
        self.lo = np.concatenate([[0.0], self.cum])[bounds[:-1]]
        self.hi = np.concatenate([[0.0], self.cum])[bounds[1:]]

    def draw(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        r = self.lo[topics] + rng.random(len(topics)) * (self.hi[topics] - self.lo[topics])
        pos = np.minimum(np.searchsorted(self.cum, r, side="right"), len(self.cum) - 1)
        return self.order[pos]


@dataclass
class _Catalogue:
    """What the events need to know about the items (0-based item codes)."""

    topic: np.ndarray
    weight: np.ndarray  # Zipf popularity
    region: np.ndarray  # -1 = sold everywhere
    created: np.ndarray  # seconds from _START
    title_words: np.ndarray  # items x 3, the words search queries are drawn from
    tags: np.ndarray  # items x 4, each item's tags first
    n_tags: np.ndarray  # how many of them it has


@dataclass
class _Tastes:
    """Per user: topic mixtures at the start and the end of the log, and home region."""

    early: np.ndarray
    late: np.ndarray
    region: np.ndarray


@dataclass
class _Sessions:
    """Events before items are drawn: user, session and time of each, plus per session
    its start time and user."""

    user: np.ndarray
    session: np.ndarray
    ts: np.ndarray
    start: np.ndarray
    session_user: np.ndarray


def _vocabulary(rng: np.random.Generator, n_topics: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-topic words (topics x words), per-topic tags (topics x tags), and words shared
    by every topic."""
    words = _words(rng, n_topics * (_WORDS_PER_TOPIC + _TAGS_PER_TOPIC) + _GLOBAL_WORDS)
    topic_words = words[: n_topics * _WORDS_PER_TOPIC].reshape(n_topics, _WORDS_PER_TOPIC)
    tag_start = n_topics * _WORDS_PER_TOPIC
    topic_tags = words[tag_start: tag_start + n_topics * _TAGS_PER_TOPIC].reshape(
        n_topics, _TAGS_PER_TOPIC)
    return topic_words, topic_tags, words[tag_start + n_topics * _TAGS_PER_TOPIC:]


def _items(rng: np.random.Generator, src: SyntheticSource, span: int
           ) -> tuple[pd.DataFrame, _Catalogue]:
    """The item table (title, text, category and tags from the item's topic) and the
    facts the events are drawn from."""
    n_items = src.n_items
    topic_words, topic_tags, global_words = _vocabulary(rng, src.n_topics)
    item_topic = rng.integers(src.n_topics, size=n_items)
    pop_rank = rng.permutation(n_items)
    pop_weight = 1.0 / (pop_rank + 1.0) ** src.zipf_exponent
    item_region = np.where(rng.random(n_items) < src.regional_item_share,
                           rng.integers(src.n_regions, size=n_items), -1)
    new_item = rng.random(n_items) < 0.2
    created = np.where(new_item, rng.random(n_items) * span * 0.8,
                       -rng.random(n_items) * 365 * SECONDS_PER_DAY).astype(np.int64)
    title_idx = rng.integers(_WORDS_PER_TOPIC, size=(n_items, 3))
    title_words = topic_words[item_topic[:, None], title_idx]
    text_idx = rng.integers(_WORDS_PER_TOPIC, size=(n_items, 10))
    text_topic = topic_words[item_topic[:, None], text_idx]
    text_global = global_words[rng.integers(_GLOBAL_WORDS, size=(n_items, 3))]
    n_tags = rng.integers(2, 5, size=n_items)
    tag_idx = np.argsort(rng.random((n_items, _TAGS_PER_TOPIC)), axis=1)[:, :4]
    tags_all = topic_tags[item_topic[:, None], tag_idx]
    subcat = rng.integers(_SUBCATEGORIES, size=n_items)
    items = pd.DataFrame({
        S.ITEM: np.arange(1, n_items + 1),
        S.TITLE: _join_rows(title_words),
        S.TEXT: _join_rows(np.concatenate([title_words, text_topic, text_global], axis=1)),
        S.CATEGORY: [f"{topic_words[t, 0]}/{c}" for t, c in zip(item_topic, subcat, strict=True)],
        S.TAGS: [row[:k] for row, k in zip(tags_all.tolist(), n_tags.tolist(), strict=True)],
        S.REGION: pd.Series(np.where(item_region >= 0, np.char.add("r", item_region.astype(str)),
                                     None), dtype="string"),
        S.CREATED_TS: _START + created,
    })
    return items, _Catalogue(item_topic, pop_weight, item_region, created, title_words,
                             tags_all, n_tags)


def _users(rng: np.random.Generator, src: SyntheticSource) -> tuple[pd.DataFrame, _Tastes]:
    """The user table and each user's sparse tastes, drifting towards a second mixture."""
    n_users, n_topics = src.n_users, src.n_topics
    taste0 = rng.gamma(0.3, size=(n_users, n_topics)) + 1e-9
    taste0 /= taste0.sum(axis=1, keepdims=True)
    fresh = rng.gamma(0.3, size=(n_users, n_topics)) + 1e-9
    taste1 = 0.6 * taste0 + 0.4 * fresh / fresh.sum(axis=1, keepdims=True)
    user_region = rng.integers(src.n_regions, size=n_users)
    users = pd.DataFrame({
        S.USER: np.arange(1, n_users + 1),
        "age": rng.integers(16, 70, size=n_users),
        "gender": rng.choice(np.array(["f", "m"]), size=n_users),
        S.REGION: np.char.add("r", user_region.astype(str)),
    })
    return users, _Tastes(taste0, taste1, user_region)


def _sessions(rng: np.random.Generator, src: SyntheticSource, span: int) -> _Sessions:
    """Lognormal event counts per user, split into sessions of a few minutes per event."""
    n_users = src.n_users
    sigma = 0.8
    n_per_user = np.maximum(3, np.round(rng.lognormal(
        np.log(src.mean_interactions) - sigma**2 / 2, sigma, size=n_users))).astype(np.int64)
    n_sessions = np.maximum(1, np.ceil(n_per_user / _MEAN_SESSION)).astype(np.int64)
    user = np.repeat(np.arange(n_users), n_per_user)
    session = (np.floor(rng.random(len(user)) * n_sessions[user]).astype(np.int64)
               + np.repeat(np.cumsum(n_sessions) - n_sessions, n_per_user))
    order = np.argsort(session, kind="stable")
    user, session = user[order], session[order]
    first = np.searchsorted(session, session, side="left")
    position = np.arange(len(session)) - first
    session_start = rng.random(n_sessions.sum()) * (span - 6 * 3600)
    ts = (session_start[session] + position * rng.uniform(60, 600, size=len(session))).astype(
        np.int64)
    return _Sessions(user, session, ts, session_start, np.repeat(np.arange(n_users), n_sessions))


def _event_topics(rng: np.random.Generator, src: SyntheticSource, tastes: _Tastes,
                  sessions: _Sessions, span: int) -> np.ndarray:
    """Each event's topic: its session's (from the early or late taste, more often late
    as the log goes on), or with probability 1 - coherence a stray one."""
    drift = sessions.start / span
    late = rng.random(len(sessions.start)) < drift
    session_topic = np.where(late, _categorical(rng, tastes.late, sessions.session_user),
                             _categorical(rng, tastes.early, sessions.session_user))
    stray = rng.random(len(sessions.user)) >= src.session_coherence
    topic = session_topic[sessions.session]
    topic[stray] = _categorical(rng, tastes.early, sessions.user[stray])
    return topic


def _draw_items(rng: np.random.Generator, catalogue: _Catalogue, user_region: np.ndarray,
                user: np.ndarray, topic: np.ndarray, ts: np.ndarray, n_topics: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An item of each event's topic by popularity; regional items rarely leave their
    region and items exist only once made (events still without one are dropped)."""
    sampler = _ItemSampler(catalogue.topic, catalogue.weight, n_topics)
    region, created = catalogue.region, catalogue.created
    item = sampler.draw(rng, topic)
    for _ in range(4):
        wrong_region = (region[item] >= 0) & (region[item] != user_region[user])
        retry = (wrong_region & (rng.random(len(item)) < 0.9)) | (created[item] > ts)
        if not retry.any():
            break
        item[retry] = sampler.draw(rng, topic[retry])
    keep = created[item] <= ts
    return user[keep], item[keep], ts[keep]


# What a search event's query is, by share: the title words the old generator used alone
# (BM25 then found the clicked item every time), a title word's first two syllables, a
# title word with a letter dropped, one of the item's tags (shared by its topic), and one
# of the topic's synonyms (words of four syllables: never an item word, nor equal to a
# prefix or a misspelling of one), alone or with a tag: words only the queries that led
# to an item's clicks can teach.
QUERY_KINDS = {"title": 0.3, "prefix": 0.15, "misspelled": 0.15, "tag": 0.1, "synonym": 0.3}
_SYNONYMS_PER_TOPIC = 3


def _queries(rng: np.random.Generator, catalogue: _Catalogue, n_topics: int,
             item: np.ndarray) -> list[str]:
    """A query for each searched item (``QUERY_KINDS``)."""
    n = n_topics * _SYNONYMS_PER_TOPIC  # distinct stems of three syllables, one more added
    synonyms = np.char.add(_words(rng, n), _SYLLABLES[rng.integers(len(_SYLLABLES), size=n)])
    synonyms = synonyms.reshape(n_topics, _SYNONYMS_PER_TOPIC)
    kind = rng.choice(list(QUERY_KINDS), size=len(item), p=list(QUERY_KINDS.values()))
    pick = rng.integers(3, size=(len(item), 2))
    first, second = catalogue.title_words[item[:, None], pick].T
    synonym = synonyms[catalogue.topic[item], rng.integers(_SYNONYMS_PER_TOPIC, size=len(item))]
    tag_at, drop_at, with_tag = rng.random(len(item)), rng.integers(6, size=len(item)), \
        rng.random(len(item)) < 0.5
    tag = catalogue.tags[item, (tag_at * catalogue.n_tags[item]).astype(np.int64)]
    queries = {
        "title": np.where(first == second, first, _joined(first, second)),
        "prefix": np.strings.slice(first, 0, 4),
        "misspelled": np.char.add(np.strings.slice(first, 0, drop_at), np.strings.slice(
            first, drop_at + 1, np.strings.str_len(first))),
        "tag": tag,
        "synonym": np.where(with_tag, _joined(synonym, tag), synonym),
    }
    return np.select([kind == k for k in queries], list(queries.values()), "").tolist()


def _joined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.char.add(np.char.add(a, " "), b)


def _interactions(rng: np.random.Generator, src: SyntheticSource, catalogue: _Catalogue,
                  user_region: np.ndarray, user: np.ndarray, item: np.ndarray,
                  ts: np.ndarray) -> pd.DataFrame:
    """The interaction table: event kinds (searches with a query for the clicked item, a
    few purchases, clicks), sorted by time."""
    search = rng.random(len(item)) < src.search_share
    purchase = ~search & (rng.random(len(item)) < 0.05)
    event = np.where(search, "search", np.where(purchase, "purchase", "click"))
    query = np.full(len(item), None, dtype=object)
    query[search] = _queries(rng, catalogue, src.n_topics, item[search])
    return pd.DataFrame({
        S.USER: user + 1,
        S.ITEM: item + 1,
        S.TS: _START + ts,
        S.EVENT: event,
        S.WEIGHT: np.where(purchase, 3.0, 1.0),
        S.QUERY: pd.Series(query, dtype="string"),
        S.REGION: np.char.add("r", user_region[user].astype(str)),
    }).sort_values([S.TS, S.USER], kind="stable").reset_index(drop=True)


def generate(src: SyntheticSource, seed: int) -> RawTables:
    """Items, users and their events from one seeded generator (draws in a fixed order,
    so a seed always gives the same tables)."""
    rng = np.random.default_rng(seed)
    span = src.days * SECONDS_PER_DAY
    items, catalogue = _items(rng, src, span)
    users, tastes = _users(rng, src)
    sessions = _sessions(rng, src, span)
    topic = _event_topics(rng, src, tastes, sessions, span)
    user, item, ts = _draw_items(rng, catalogue, tastes.region, sessions.user, topic,
                                 sessions.ts, src.n_topics)
    interactions = _interactions(rng, src, catalogue, tastes.region, user, item, ts)
    origin = "synthetic generator"
    return RawTables(interactions=[(origin, interactions)], items=(origin, items),
                     users=(origin, users))
