"""The EASE channel against a plain numpy EASE (Steck's closed form with ``np.linalg.inv``),
its restriction to the most used items, its lambda tuning and its place in the config."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from models.base import HeldOut, RecallChannel, chunked_top_k
from models.recall import ease
from models.recall.ease import EaseChannel
from tests.conftest import recall_data_from_matrix, tiny_config
from tests.unit.recall_contract import checkerboard, checkerboard_data, planted_held_out


def reference_ease(dense: np.ndarray, lambda_: float) -> np.ndarray:
    """Steck's listing: P = (X^T X + lambda I)^-1, B = P / -diag(P), diag(B) = 0."""
    x = (np.asarray(dense) > 0).astype(np.float64)
    p = np.linalg.inv(x.T @ x + lambda_ * np.eye(x.shape[1]))
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def random_history(n_users: int, n_items: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    dense[np.arange(n_items) % n_users, np.arange(n_items)] = 1  # every item used
    return dense


@pytest.mark.parametrize("block_cells", [1 << 24, 7])  # one block; many, ragged blocks
def test_weights_match_a_plain_numpy_ease(monkeypatch: pytest.MonkeyPatch,
                                          block_cells: int) -> None:
    monkeypatch.setattr(ease, "_BLOCK_CELLS", block_cells)
    dense = random_history(30, 9, seed=1)
    data = recall_data_from_matrix(dense)
    channel = EaseChannel(lambda_=3.0).fit(data)
    expected = reference_ease(dense, 3.0)
    assert channel.weights.dtype == np.float32
    np.testing.assert_array_equal(channel.kept, np.arange(9))
    np.testing.assert_allclose(channel.weights, expected, rtol=1e-5, atol=1e-6)
    assert (np.diag(channel.weights) == 0).all()
    scores = np.where(dense.any(axis=1)[:, None], dense @ expected, -np.inf)  # empty: none
    assert np.isneginf(scores).any()
    users = data.user_index.encode(np.arange(30))  # the user without items is coded last
    np.testing.assert_allclose(channel.score(data, users), scores, rtol=1e-4, atol=1e-5)


def test_by_hand_on_two_items() -> None:
    # Both of 2 users used items 0 and 1: G = [[2, 2], [2, 2]], lambda = 1.
    # P = inv([[3, 2], [2, 3]]) = [[3, -2], [-2, 3]] / 5, so B_01 = -P_01 / P_11 = 2 / 3.
    data = recall_data_from_matrix(np.ones((2, 2)))
    weights = EaseChannel(lambda_=1.0).fit(data).weights
    np.testing.assert_allclose(weights, [[0, 2 / 3], [2 / 3, 0]], rtol=1e-6)


def test_single_precision_weights_match_double_on_skewed_counts() -> None:
    # Zipf-popular items: a few columns of G hold most of the counts, as on real logs.
    rng = np.random.default_rng(7)
    popularity = 1.0 / np.arange(1, 151) ** 1.1
    dense = (rng.random((400, 150)) < 0.6 * popularity / popularity.max()).astype(np.float32)
    x = dense.astype(np.float64)
    for lambda_ in (1.0, 50.0):
        expected = reference_ease(dense, lambda_)
        weights = ease.ease_weights(np.ascontiguousarray(x.T @ x, np.float32), lambda_)
        assert np.abs(weights - expected).max() < 1e-4 * np.abs(expected).max()
        scores, exact = dense @ weights, dense @ expected
        scores[dense > 0] = exact[dense > 0] = -np.inf
        top, top_exact = (np.argsort(-s, axis=1, kind="stable")[:, :10] for s in (scores, exact))
        same = np.mean([set(a) == set(b) for a, b in zip(top, top_exact, strict=True)])
        assert same >= 0.99, f"lambda {lambda_}: {same:.3f} of top 10s the same"


def test_a_system_single_precision_cannot_factor_is_solved_in_double(
        caplog: pytest.LogCaptureFixture) -> None:
    # G = c [[1, 1], [1, 1]] with c = 2^24: in float32 c + 0.5 rounds back to c, so
    # G + 0.5 I is singular there; in double B_01 = -P_01 / P_11 = c / (c + 0.5).
    c = float(2**24)
    with caplog.at_level(logging.INFO, logger="models.recall.ease"):
        weights = ease.ease_weights(np.full((2, 2), c, np.float32), 0.5)
    assert any("double" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(weights, [[0, c / (c + 0.5)], [c / (c + 0.5), 0]], rtol=1e-7)
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        ease.ease_weights(np.array([[1.0, 2.0], [2.0, 1.0]], np.float32), 0.5)


def test_restricted_to_the_most_used_items(caplog: pytest.LogCaptureFixture) -> None:
    # users per item: 5, 1, 4, 0, 3, 2; with max_items=3 the solve keeps items 0, 2, 4.
    dense = np.zeros((6, 6), np.float32)
    for item, n_users in enumerate([5, 1, 4, 0, 3, 2]):
        dense[:n_users, item] = 1
    dense[5] = 0
    dense[5, 1] = 1  # user 5 used only item 1, outside the solve
    data = recall_data_from_matrix(dense)
    with caplog.at_level(logging.INFO, logger="models.recall.ease"):
        channel = EaseChannel(lambda_=2.0, max_items=3).fit(data)
    assert sum("max_items" in r.getMessage() for r in caplog.records) == 1
    kept = np.array([0, 2, 4])
    np.testing.assert_array_equal(channel.kept, kept)
    np.testing.assert_allclose(channel.weights, reference_ease(dense[:, kept], 2.0),
                               rtol=1e-5, atol=1e-6)
    scores = channel.score(data, np.arange(6))
    assert np.isfinite(scores[:5][:, kept]).all()
    assert np.isneginf(np.delete(scores, kept, axis=1)).all()
    assert np.isneginf(scores[5]).all(), "no fitted item in the solve: nothing"
    top = channel.retrieve(data, np.arange(6), 6, exclude_seen=False)
    assert set(top.items[top.items >= 0].tolist()) <= set(kept.tolist())


def test_items_nobody_fitted_on_are_never_scored() -> None:
    dense = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1]], np.float32)
    channel = EaseChannel(lambda_=1.0).fit(recall_data_from_matrix(dense))
    np.testing.assert_array_equal(channel.kept, [0, 2])
    assert np.isneginf(channel.score(recall_data_from_matrix(dense), np.arange(3))[:, 1]).all()


def test_tuning_walks_the_grid_up_and_stops_at_the_first_loss() -> None:
    dense = checkerboard()
    data = checkerboard_data(dense)
    grid = [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0]
    channel = EaseChannel(grid=grid).fit(data, planted_held_out(dense))
    trace = channel.trace
    values = [entry["ndcg@10"] for entry in trace]
    assert [entry["lambda_"] for entry in trace] == grid[:len(trace)]
    best = int(np.argmax(values))  # the first of equals
    assert channel.tuned() == {"lambda_": grid[best]}
    assert len(trace) == len(grid) or values[-1] <= values[best] and len(trace) == best + 2
    np.testing.assert_array_equal(channel.weights, EaseChannel(lambda_=grid[best]).fit(
        data).weights)


def test_no_usable_held_out_pair_or_an_empty_grid_keeps_lambda() -> None:
    data = recall_data_from_matrix(np.ones((2, 2)))
    for channel, held_out in [(EaseChannel(lambda_=1.0), HeldOut(np.array([-1]), np.array([0]))),
                              (EaseChannel(lambda_=1.0, grid=[]), HeldOut(np.array([0]),
                                                                          np.array([1])))]:
        channel.fit(data, held_out)
        assert channel.tuned() == {} and channel.trace == []
        np.testing.assert_allclose(channel.weights, [[0, 2 / 3], [2 / 3, 0]], rtol=1e-6)


@pytest.mark.parametrize("bad", [{"lambda_": 0.0}, {"grid": [10.0, -1.0]}, {"max_items": 0},
                                 {"extend": -1}])
def test_bad_settings_fail_at_construction(bad: dict) -> None:
    with pytest.raises(ValueError, match="ease"):
        EaseChannel(**bad)


def test_on_by_default_and_dropped_by_null(tmp_path: Path) -> None:
    assert tiny_config(tmp_path).recall.channels["ease"].quota == 40
    dropped = tiny_config(tmp_path, recall={"channels": {"ease": None}})
    assert "ease" not in dropped.recall.channels
    with pytest.raises(ValueError, match="no parameter"):
        tiny_config(tmp_path, recall={"channels": {"ease": {"params": {"lambda": 5}}}})


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_retrieving_among_the_kept_items_gives_the_catalogue_wide_top_k(
        exclude_seen: bool) -> None:
    """EASE takes its top k among the items in its solve (every other one scores -inf):
    the same items, scores and order as the top k of ``score``'s whole-catalogue rows,
    ties to the lower code, short lists padded with -1, whatever the chunking."""
    rng = np.random.default_rng(4)
    dense = (rng.random((40, 60)) < 0.08).astype(np.float32)
    dense[:, 50:] = 0  # ten items nobody fitted on
    dense[7] = 0  # a user with nothing
    data = recall_data_from_matrix(dense)
    channel = EaseChannel(lambda_=2.0, max_items=20).fit(data)
    assert len(channel.kept) == 20
    channel.weights = np.round(channel.weights, 1)  # scores that tie, at the cut too
    users = rng.permutation(data.n_users)
    fifth, sixth = np.sort(channel.score(data, users), axis=1)[:, ::-1][:, 4:6].T
    assert (np.isfinite(fifth) & (fifth == sixth)).any()  # a tie across k = 5's cut
    for k, chunk in ((5, 0), (25, 0), (25, 3), (70, 7)):
        got = channel.retrieve(data, users, k, exclude_seen, chunk)
        want = RecallChannel.retrieve(channel, data, users, k, exclude_seen, chunk)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert set(got.items[got.items >= 0].tolist()) <= set(channel.kept.tolist())
        empty = np.asarray(data.history[users].sum(axis=1)).ravel() == 0
        assert empty.any() and (got.items[empty] == -1).all()


def test_chunked_top_k_over_some_columns_maps_them_back_and_checks_them() -> None:
    """Scores of columns standing for items 3, 5 and 9 of twelve: the top k names those
    items (NaN first, ties to the lower code, -1 past the finite ones); the user's seen
    item 5 is dropped, and columns must be distinct and ascending."""
    data = recall_data_from_matrix(np.eye(1, 12, 5, dtype=np.float32))
    rows = np.array([[0.5, 0.7, 0.5]], np.float32)
    top = chunked_top_k(lambda _: rows, data, np.array([0]), 4, False,
                        columns=np.array([3, 5, 9]))
    np.testing.assert_array_equal(top.items, [[5, 3, 9, -1]])
    top = chunked_top_k(lambda _: rows, data, np.array([0]), 2, True,
                        columns=np.array([3, 5, 9]))
    np.testing.assert_array_equal(top.items, [[3, 9]])
    nan = np.array([[0.5, np.nan, 0.9]], np.float32)
    top = chunked_top_k(lambda _: nan, data, np.array([0]), 3, False,
                        columns=np.array([3, 5, 9]))
    np.testing.assert_array_equal(top.items, [[5, 9, 3]])
    empty = chunked_top_k(lambda _: np.zeros((1, 0), np.float32), data, np.array([0]), 2,
                          True, columns=np.zeros(0, np.int64))
    np.testing.assert_array_equal(empty.items, [[-1, -1]])
    for bad in ([3, 3, 9], [5, 3, 9]):
        with pytest.raises(ValueError, match="ascending"):
            chunked_top_k(lambda _: rows, data, np.array([0]), 2, False,
                          columns=np.array(bad))


GRID = (50.0, 100.0, 200.0, 500.0, 1000.0)


@pytest.mark.parametrize(("peak", "grid", "extend", "tried", "chosen"), [
    (2000.0, GRID, 4, [50, 100, 200, 500, 1000, 2000, 4000], 2000),  # up past the top
    (1e6, GRID, 4, [50, 100, 200, 500, 1000, 2000, 4000, 8000, 16000], 16000),  # at most 4
    (10.0, GRID, 4, [50, 100, 25, 12.5, 6.25], 12.5),  # down past the bottom
    (300.0, GRID, 4, [50, 100, 200, 500], 200),  # inside the grid: nothing past it
    (2000.0, GRID, 0, [50, 100, 200, 500, 1000], 1000),
    (2000.0, (50.0,), 4, [50], 50),  # a grid of one has no end to go past
    (2000.0, (50.0, 100.0), 4, [50, 100, 200, 400, 800, 1600], 1600),  # two: up
    (10.0, (50.0, 100.0), 4, [50, 100, 25, 12.5, 6.25], 12.5),  # or down
])
def test_tuning_goes_past_the_end_of_the_grid_the_best_sits_at(
        monkeypatch: pytest.MonkeyPatch, peak: float, grid: tuple[float, ...], extend: int,
        tried: list[float], chosen: float) -> None:
    """Held-out NDCG made a function of lambda alone, highest at ``peak``: each lambda
    past an end is twice (half) the last, until one does not improve."""
    monkeypatch.setattr(ease, "ease_weights", lambda gram, lambda_: np.full(
        gram.shape, lambda_, np.float32))
    monkeypatch.setattr(EaseChannel, "_held_out_ndcg", lambda self, data, *watch: -abs(
        np.log(float(self.weights[0, 0]) / peak)))
    dense = checkerboard()
    channel = EaseChannel(grid=grid, extend=extend).fit(checkerboard_data(dense),
                                                        planted_held_out(dense))
    assert [entry["lambda_"] for entry in channel.trace] == tried
    assert channel.tuned() == {"lambda_": chosen} and channel.weights[0, 0] == chosen
