"""The contract every recall channel honours, checked on data with a planted answer.

Two blocks of users each use only their own block of items (a checkerboard); one more
user is cold (in the user index, no fitted history). A channel's test is a subclass of
``RecallChannelContract`` whose ``make_channel()`` returns a small configured instance;
pytest runs every check below on it:
- ``retrieve`` is the top k of ``score`` with the user's fitted items removed, sorted;
- batch, chunked and single-user retrieval agree;
- save then load gives the same scores and lists, from plain files only;
- a search channel's ``retrieve_queries`` ranks like its ``score_queries``;
- a cold user gets nothing or a valid list, never a crash or a seen item;
- ``score_pairs`` gathers ``score`` (NaN where there is none);
- what ``tuned()`` chose on held-out pairs, passed back as constructor keywords, fits
  again without them (``check_refit`` adds each channel's own check);
- an unfitted channel says so instead of failing somewhere inside;
- served users whose new events are added together (``RecallData.with_events``) each
  score as with their own events alone, though their events put their clocks apart;
- on random logs of awkward shapes (twenty years of timestamps with users last seen
  decades ago, a catalogue of 1, 2 or 4 items, users with one event, a user who has every
  item, one timestamp for all) it fits and retrieves with k beyond the catalogue, and
  every list is valid: real items first, then -1 padding; finite scores, best first; no
  item twice; none of the user's fitted items.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.recall_data import RecallData, build_recall_data
from models.base import HeldOut, NotFittedError, RecallChannel, SearchChannel, TopK
from tests.conftest import recall_data_from_matrix

N_USERS, N_ITEMS = 40, 20  # the checkerboard; user N_USERS is the cold one
COLD = N_USERS
SAVED_SUFFIXES = {".json", ".npy", ".npz", ".faiss", ".pt"}


def checkerboard(n_users: int = N_USERS, n_items: int = N_ITEMS, seed: int = 0) -> np.ndarray:
    """Users in the first half use items of the first half, and so on; ~60% density."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_users, n_items), np.float32)
    half_u, half_i = n_users // 2, n_items // 2
    dense[:half_u, :half_i] = rng.random((half_u, half_i)) < 0.6
    dense[half_u:, half_i:] = rng.random((n_users - half_u, n_items - half_i)) < 0.6
    dense[:, 0] = 0
    dense[0, 0] = 1  # one user, one rare item: every user keeps at least one item
    return dense


def checkerboard_data(dense: np.ndarray) -> RecallData:
    """The checkerboard with side tables that agree with it: each block of items has its
    own category and tags, each block of users its own region."""
    n_users, n_items = dense.shape
    block_i = np.where(np.arange(n_items) < n_items // 2, "a", "b")
    block_u = np.where(np.arange(n_users) < n_users // 2, "a", "b")
    items = pd.DataFrame({"item_id": np.arange(n_items), "title": [f"t{j}" for j in range(n_items)],
                          "category": block_i, "tags": [[f"{b}1", f"{b}2"] for b in block_i]})
    users = pd.DataFrame({"user_id": np.arange(n_users), "region": block_u})
    return recall_data_from_matrix(dense, items=items, users=users)


def planted_held_out(dense: np.ndarray) -> HeldOut:
    """Per user with history, the first item of their own block they have not used."""
    half_u, half_i = N_USERS // 2, N_ITEMS // 2
    users, items = [], []
    for u in range(N_USERS):
        block = np.arange(half_i) if u < half_u else np.arange(half_i, N_ITEMS)
        unused = block[dense[u, block] == 0]
        if len(unused):
            users.append(u)
            items.append(unused[0])
    return HeldOut(np.array(users), np.array(items))


def assert_same_ranking(expected: TopK, got: TopK, tol: float = 1e-5) -> None:
    """Same scores rank by rank; items may differ only among scores tied within ``tol``
    (float noise between an index search and a dense product reorders near-ties)."""
    np.testing.assert_allclose(got.scores, expected.scores, rtol=tol, atol=tol)
    s = expected.scores
    padded = np.pad(s, ((0, 0), (1, 1)), constant_values=np.nan)
    distinct = ~(np.isclose(s, padded[:, :-2], rtol=tol, atol=tol)
                 | np.isclose(s, padded[:, 2:], rtol=tol, atol=tol))
    distinct[:, -1] = False  # the last place may tie with the first item left out
    np.testing.assert_array_equal(got.items[distinct], expected.items[distinct])


def assert_no_seen(top: TopK, seen: np.ndarray, users: np.ndarray) -> None:
    """No list holds one of its user's fitted items; lists are best first, -1 padded."""
    for row, u in enumerate(users):
        got = top.items[row][top.items[row] >= 0]
        assert not seen[u, got].any(), f"user {u} got a seen item"
        assert np.all(np.diff(top.scores[row][top.items[row] >= 0]) <= 0), "not sorted"
        assert (top.items[row][len(got):] == -1).all(), "a gap inside a list"


YEAR = 365 * 86_400
JAN_2004 = 1_072_915_200  # unix seconds


def random_log(n_users: int, n_items: int, per_user: tuple[int, int], seed: int, *,
               start: int = JAN_2004, span: int = 30 * 86_400, old_users: int = 0,
               full_user: bool = False) -> RecallData:
    """Each user picks ``per_user`` (low, high inclusive) distinct items at random times
    in [start, start + span), except the first ``old_users``: user u is active in year u
    only, so their events are up to 20 years older than the last one (a 30-day half-life
    takes weights into float32's subnormals after 10 years, to zero after 12); with
    ``full_user`` user 0 has every item. Side tables as in the checkerboard (two
    categories, tags, two regions, titles), so every channel has something to use."""
    rng = np.random.default_rng(seed)
    users, items, seconds = [], [], []
    for u in range(n_users):
        n = n_items if full_user and u == 0 else int(rng.integers(per_user[0], per_user[1] + 1))
        n = min(n, n_items)
        first, window = (start + u * YEAR, YEAR) if u < old_users else (start, span)
        users += [u] * n
        items += rng.choice(n_items, n, replace=False).tolist()
        seconds += (first + rng.integers(0, max(window, 1), n)).tolist()
    fit = pd.DataFrame({"user_id": users, "item_id": items, "weight": 1.0,
                        "ts": pd.to_datetime(np.array(seconds, np.int64), unit="s")})
    block = np.where(np.arange(n_items) % 2, "a", "b")
    item_table = pd.DataFrame({"item_id": np.arange(n_items),
                               "title": [f"t{j} film {block[j]}" for j in range(n_items)],
                               "category": block, "tags": [[f"{b}1", f"{b}2"] for b in block]})
    user_table = pd.DataFrame({"user_id": np.arange(n_users),
                               "region": np.where(np.arange(n_users) % 2, "a", "b")})
    return build_recall_data(fit, item_table, user_table, extra_users=np.arange(n_users))


AWKWARD_LOGS = {
    "twenty_years": lambda: random_log(30, 15, (2, 8), 1, span=20 * YEAR, old_users=20),
    "one_item": lambda: random_log(6, 1, (0, 1), 2),
    "two_items": lambda: random_log(8, 2, (0, 2), 3),
    "four_items": lambda: random_log(12, 4, (1, 4), 4, full_user=True),
    "one_event_each": lambda: random_log(25, 12, (1, 1), 5),
    "user_with_every_item": lambda: random_log(20, 10, (2, 6), 6, full_user=True),
    "constant_timestamp": lambda: random_log(25, 12, (2, 6), 7, span=0),
}


def assert_valid_lists(top: TopK, data: RecallData, users: np.ndarray, k: int) -> None:
    """Every row: distinct unseen catalogue items with finite scores, best first, then
    only -1 with -inf; written out row by row, independently of ``check_top_k``."""
    assert top.items.shape == top.scores.shape == (len(users), k)
    for row, u in enumerate(users):
        items, scores = top.items[row], top.scores[row]
        n = int((items >= 0).sum())
        assert (items[:n] >= 0).all() and (items[n:] == -1).all(), f"user {u}: a gap {items}"
        assert (items[:n] < data.n_items).all(), f"user {u}: not an item {items}"
        assert np.isfinite(scores[:n]).all(), f"user {u}: scores {scores[:n]}"
        assert np.isneginf(scores[n:]).all(), f"user {u}: padding scores {scores[n:]}"
        assert len(set(items[:n].tolist())) == n, f"user {u}: an item twice {items}"
        assert (np.diff(scores[:n]) <= 0).all(), f"user {u}: not sorted {scores[:n]}"
        seen = data.history[u].indices
        assert not np.isin(items[:n], seen).any(), f"user {u}: seen {items[:n]} of {seen}"


class RecallChannelContract:
    """Subclass per channel and define ``make_channel``; every test below then runs."""

    k = 8
    queries = ["t1 t3", "category:a", "t15 b1", "nothing known", "a2 t12"]
    query_users = np.array([0, 25, 3, COLD, 30])

    def make_channel(self) -> RecallChannel:
        raise NotImplementedError

    def check_refit(self, tuned: RecallChannel, refit: RecallChannel,
                    choice: dict) -> None:
        """A channel's own check that the refit used what was tuned (none by default)."""

    @pytest.fixture(scope="class")
    def planted(self) -> tuple[np.ndarray, RecallData]:
        dense = np.vstack([checkerboard(), np.zeros((1, N_ITEMS), np.float32)])  # + cold
        return dense, checkerboard_data(dense)

    @pytest.fixture(scope="class")
    def fitted(self, planted) -> RecallChannel:
        return self.make_channel().fit(planted[1])

    def test_retrieve_is_the_top_k_of_score_without_seen_items(self, planted, fitted) -> None:
        dense, data = planted
        users = np.arange(data.n_users)
        top = fitted.retrieve(data, users, self.k)
        assert top.items.shape == top.scores.shape == (len(users), self.k)
        assert_no_seen(top, dense > 0, users)
        assert_same_ranking(RecallChannel.retrieve(fitted, data, users, self.k), top)

    def test_batch_chunked_and_single_users_agree(self, planted, fitted) -> None:
        _, data = planted
        users = np.arange(data.n_users)
        top = fitted.retrieve(data, users, self.k)
        singles = [fitted.retrieve(data, users[u:u + 1], self.k) for u in (0, 1, 21, COLD)]
        assert_same_ranking(TopK(top.items[[0, 1, 21, COLD]], top.scores[[0, 1, 21, COLD]]),
                            TopK(np.vstack([t.items for t in singles]),
                                 np.vstack([t.scores for t in singles])))
        assert_same_ranking(top, fitted.retrieve(data, users, self.k, chunk=3))

    def test_save_load_round_trip_gives_identical_output(self, planted, fitted,
                                                         tmp_path: Path) -> None:
        _, data = planted
        users = np.arange(data.n_users)
        fitted.save(tmp_path / "channel")
        files = [p for p in (tmp_path / "channel").rglob("*") if p.is_file()]
        assert {p.suffix for p in files} <= SAVED_SUFFIXES, "an unexpected (pickled?) file"
        loaded = type(fitted).load(tmp_path / "channel")
        assert loaded.params == fitted.params and loaded.tuned() == fitted.tuned()
        before, after = fitted.retrieve(data, users, self.k), loaded.retrieve(data, users, self.k)
        np.testing.assert_array_equal(after.items, before.items)
        np.testing.assert_array_equal(after.scores, before.scores)
        np.testing.assert_array_equal(loaded.score(data, users), fitted.score(data, users))
        if isinstance(fitted, SearchChannel):
            np.testing.assert_array_equal(loaded.score_queries(data, self.queries),
                                          fitted.score_queries(data, self.queries))

    def test_search_ranks_like_the_query_scores(self, planted, fitted) -> None:
        if not isinstance(fitted, SearchChannel):
            pytest.skip(f"{fitted.name} does not answer queries")
        dense, data = planted
        top = fitted.retrieve_queries(data, self.queries, self.query_users, self.k)
        assert_no_seen(top, dense > 0, self.query_users)
        generic = SearchChannel.retrieve_queries(fitted, data, self.queries, self.query_users,
                                                 self.k)  # score_queries, then top-k
        assert_same_ranking(generic, top)
        assert (top.items >= 0).any(), "no query found anything"

    def test_cold_user_gets_nothing_or_a_valid_list(self, planted, fitted) -> None:
        _, data = planted
        top = fitted.retrieve(data, np.array([COLD]), self.k)
        found = top.items[0] >= 0
        assert ((top.items[0] >= 0) & (top.items[0] < data.n_items) | ~found).all()
        assert np.isfinite(top.scores[0][found]).all()
        assert np.isneginf(top.scores[0][~found]).all()
        assert fitted.score(data, np.array([COLD])).shape == (1, data.n_items)

    def test_score_pairs_gather_score_with_nan_for_none(self, planted, fitted) -> None:
        _, data = planted
        rng = np.random.default_rng(4)
        users = np.r_[rng.integers(0, data.n_users, 60), COLD, COLD]
        items = rng.integers(0, data.n_items, len(users))
        unique, rows = np.unique(users, return_inverse=True)
        dense = fitted.score(data, unique)[rows, items].astype(np.float64)
        got = fitted.score_pairs(data, users, items)
        assert got.dtype == np.float64 and got.shape == (len(users),)
        np.testing.assert_allclose(got, np.where(np.isfinite(dense), dense, np.nan), rtol=1e-6)

    def test_tuned_choice_refits_without_held_out(self, planted) -> None:
        dense, data = planted
        tuned = self.make_channel().fit(data, planted_held_out(dense))
        choice = tuned.tuned()
        json.dumps(choice)  # written to the run's manifest
        assert set(choice) <= set(tuned.params), "tuned() must name constructor keywords"
        refit = type(tuned)(**{**tuned.params, **choice}).fit(data)
        assert refit.is_fitted()
        assert all(refit.params[key] == value for key, value in choice.items())
        top = refit.retrieve(data, np.arange(data.n_users), self.k)
        assert_no_seen(top, dense > 0, np.arange(data.n_users))
        self.check_refit(tuned, refit, choice)

    def test_unfitted_channel_says_so(self, planted, tmp_path: Path) -> None:
        _, data = planted
        channel = self.make_channel()
        users = np.arange(3)
        calls = [lambda: channel.retrieve(data, users, self.k),
                 lambda: channel.score(data, users),
                 lambda: channel.score_pairs(data, users, users),
                 lambda: channel.save(tmp_path / "channel")]
        if isinstance(channel, SearchChannel):
            calls += [lambda: channel.score_queries(data, self.queries),
                      lambda: channel.retrieve_queries(data, self.queries, self.query_users,
                                                       self.k)]
        for call in calls:
            with pytest.raises(NotFittedError, match=f"{channel.name} channel is not fitted"):
                call()
        assert not (tmp_path / "channel").exists()

    @pytest.mark.parametrize("timed", [True, False])
    def test_users_with_events_added_together_score_as_each_alone(self, planted, fitted,
                                                                    timed: bool) -> None:
        """Untimed, the log's span is 0 and only the users who click get a span (and a
        half-life) of their own."""
        _, data = planted
        if not timed:
            data = replace(data, log=data.log.assign(ts=0), now=0, start=None)
        channel = copy.copy(fitted)
        if "half_life_share" in getattr(channel, "params", {}):  # ages count: a real decay
            channel.params = {**channel.params, "half_life_days": None, "half_life_share": 0.5}
        now = data.now
        events = {0: ([5, 9], [now + 3, now + 30]), 21: ([3], [now - 5]), COLD: ([7], [now + 7])}
        users = np.array([0, 1, 21, COLD])
        with_all = data.for_users(users).with_events(
            np.repeat(list(events), [len(i) for i, _ in events.values()]),
            np.concatenate([i for i, _ in events.values()]),
            np.concatenate([t for _, t in events.values()]))
        together = channel.score(with_all, users)
        for row, user in enumerate(users):
            alone = data.with_events(user, *map(np.array, events[user])) if (
                user in events) else data
            # up to float rounding: a product over four users' rows may sum in another order
            np.testing.assert_allclose(together[row], channel.score(alone, users[row:row + 1])[0],
                                       rtol=1e-5, atol=1e-7, err_msg=f"user {user}")

    @pytest.mark.parametrize("shape", list(AWKWARD_LOGS))
    def test_awkward_logs_give_valid_lists(self, shape: str) -> None:
        data = AWKWARD_LOGS[shape]()
        channel = self.make_channel().fit(data)
        users = np.arange(data.n_users)
        k = data.n_items + 3  # more than the catalogue holds
        assert_valid_lists(channel.retrieve(data, users, k), data, users, k)
        assert_valid_lists(channel.retrieve(data, users, k, chunk=2), data, users, k)
        if isinstance(channel, SearchChannel):
            queries = [f"t{u % data.n_items} film" for u in users]
            assert_valid_lists(channel.retrieve_queries(data, queries, users, k), data, users,
                               k)
