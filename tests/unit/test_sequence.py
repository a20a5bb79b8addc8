"""The sequence model (causal self-attention over a user's ordered items) and its channel.

Tiny models on hand-made sequences: causality and padding invariance of the module, a
planted next-item rule it must learn, and the channel contract (seen items excluded,
batch == single user, save/load and seeds give identical scores, tuned epochs reused).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.base import HeldOut
from models.recall.sequence import SequenceChannel
from models.sequence import (
    BitsDropout,
    SASRec,
    last_tokens,
    next_item_loss,
    next_item_scores,
    optimizers,
    train,
    training_windows,
)
from tests.conftest import recall_data_from_matrix

TINY = {"d": 16, "blocks": 1, "heads": 2, "max_len": 8, "dropout": 0.1, "lr": 1e-2,
        "batch_size": 16, "threads": 1}


def cycle_data(n_users: int = 40, n_items: int = 12, seed: int = 0,
               lengths: tuple[int, int] = (4, 10)):
    """Each user's items follow i -> i + 1 (mod n_items) from a random start.

    Returns the RecallData, each user's start and length (the next item is
    (start + length) % n_items, never one the user already has since length < n_items).
    """
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    lens = rng.integers(lengths[0], lengths[1] + 1, n_users)
    dense = np.zeros((n_users, n_items))
    ts = np.zeros((n_users, n_items), np.int64)
    for u in range(n_users):
        items = (starts[u] + np.arange(lens[u])) % n_items
        dense[u, items] = 1
        ts[u, items] = 1_000 + np.arange(lens[u]) * 60
    return recall_data_from_matrix(dense, ts), starts, lens


def tiny_model(n_items: int = 12, max_len: int = 8, seed: int = 0, blocks: int = 2) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(n_items, d=16, blocks=blocks, heads=2, max_len=max_len, dropout=0.1).eval()


# ---------------------------------------------------------------- the module


def test_bits_dropout_drops_at_its_rate_and_keeps_the_expectation() -> None:
    x = (torch.rand(64, 50, 64) + 1.0).requires_grad_()
    drop = BitsDropout(0.2)
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.2) < 0.005  # 204,800 draws: sd 0.0009
    scale = 1 / (1 - 6554 / 32768)  # p rounded to 1/32768: the expectation stays exact
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)
    for lane in range(4):  # every 16-bit lane of a random word is used, none always kept
        assert abs(1 - kept.flatten()[lane::4].float().mean().item() - 0.2) < 0.01
    torch.manual_seed(3)
    torch.testing.assert_close(drop(x), y)  # the seed decides the mask
    assert drop.eval()(x) is x
    assert BitsDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout"):
        BitsDropout(1.0)


def test_outputs_at_earlier_positions_ignore_later_items() -> None:
    model = tiny_model()
    tokens = torch.tensor([[0, 0, 3, 5, 7, 2, 9, 4]])
    changed = tokens.clone()
    changed[0, 5] = 11
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_left_padding_leaves_real_positions_unchanged() -> None:
    model = tiny_model()
    real = torch.tensor([[3, 5, 7, 2]])
    padded = torch.tensor([[0, 0, 0, 3, 5, 7, 2], [1, 2, 3, 4, 5, 6, 7]])  # batch with a long row
    with torch.no_grad():
        a, b = model(real), model(padded)
    torch.testing.assert_close(a[0], b[0, 3:], rtol=1e-5, atol=1e-6)
    assert torch.all(b[0, :3] == model.norm(torch.zeros(3, 16))), "padded positions are zeroed"


def test_sequence_longer_than_max_len_is_refused() -> None:
    with pytest.raises(ValueError, match="max_len"):
        tiny_model(max_len=4)(torch.ones(1, 5, dtype=torch.long))


def test_tied_softmax_loss_matches_cross_entropy_and_its_gradients() -> None:
    model = tiny_model(n_items=30)
    hidden = torch.randn(20, 16, dtype=torch.float32, requires_grad=True)
    targets = torch.randint(0, 30, (20,))
    ours = next_item_loss(model, hidden, targets)
    ours.backward()
    grads = hidden.grad.clone(), model.item_emb.weight.grad.clone()
    hidden.grad = None
    model.zero_grad()
    ref = F.cross_entropy(model.logits(hidden), targets)
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], model.item_emb.weight.grad)
    assert torch.all(grads[1][0] == 0), "the padding row gets no gradient"


def test_sampled_softmax_over_every_item_once_is_the_full_softmax() -> None:
    model = tiny_model(n_items=30)
    hidden = torch.randn(20, 16, dtype=torch.float32)
    targets = torch.randint(0, 30, (20,))
    full = next_item_loss(model, hidden, targets)
    # each item drawn once with equal probability: the correction is one constant, and
    # the masked copy of each target is replaced by the target's own column
    log_q = torch.full((30,), 3.0)
    every = next_item_loss(model, hidden, targets, torch.randperm(30), log_q)
    torch.testing.assert_close(every, full)
    # by hand: the softmax over the target and the drawn items, each logit less its
    # item's log-probability, the drawn copy of a target (item 6 on row 1) left out
    log_q = torch.linspace(-2.0, 1.0, 30)
    drawn = torch.tensor([0, 6, 2])
    hidden, targets = hidden[:2], torch.tensor([5, 6])
    logits = model.logits(hidden) - log_q
    by_hand = torch.stack([torch.logsumexp(logits[0, [5, 0, 6, 2]], 0) - logits[0, 5],
                           torch.logsumexp(logits[1, [6, 0, 2]], 0) - logits[1, 6]]).mean()
    torch.testing.assert_close(next_item_loss(model, hidden, targets, drawn, log_q), by_hand)


@pytest.mark.parametrize("sparse", [False, True])
def test_sampled_softmax_gradients_repeat_exactly_on_two_threads(sparse: bool) -> None:
    """Repeated targets and negatives add into the same embedding rows; the sums must
    not depend on thread timing (indexing's backward on CPU did: synthetic-10k drifted)."""
    torch.manual_seed(0)
    model = SASRec(200, d=16, blocks=2, heads=2, max_len=8, dropout=0.1,
                   sparse=sparse).train()
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4096, 16, generator=generator)  # past the parallel grain size
    targets = torch.randint(0, 200, (4096,), generator=generator)  # each item ~20 times
    negatives = torch.randint(0, 200, (1024,), generator=generator)
    log_q = torch.full((200,), -3.0)
    before = torch.get_num_threads()
    grads = []
    try:
        torch.set_num_threads(2)
        for _ in range(10):
            model.zero_grad(set_to_none=True)
            next_item_loss(model, hidden, targets, negatives, log_q).backward()
            grad = model.item_emb.weight.grad
            grads.append((grad.coalesce().to_dense() if sparse else grad).clone())
    finally:
        torch.set_num_threads(before)
    for grad in grads[1:]:
        assert torch.equal(grad, grads[0])


def test_a_sparse_item_table_gets_the_same_loss_and_gradient() -> None:
    """Past SPARSE_FROM items the table's gradient is sparse (the rows a batch used), for
    SparseAdam: the same loss and, made dense, the same gradient as the dense table."""
    dense = tiny_model(n_items=200).train()
    sparse = SASRec(200, d=16, blocks=2, heads=2, max_len=8, dropout=0.1,
                    sparse=True).train()
    sparse.load_state_dict(dense.state_dict())
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 16, generator=generator)
    targets = torch.randint(0, 200, (64,), generator=generator)
    negatives = torch.randint(0, 200, (32,), generator=generator)
    log_q = torch.full((200,), -3.0)
    losses = []
    for model in (dense, sparse):
        loss = next_item_loss(model, hidden, targets, negatives, log_q)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0])
    assert sparse.item_emb.weight.grad.is_sparse
    torch.testing.assert_close(sparse.item_emb.weight.grad.to_dense(),
                               dense.item_emb.weight.grad)
    steps = optimizers(sparse, lr=0.01, weight_decay=0.0)
    assert [type(o).__name__ for o in steps] == ["SparseAdam", "Adam"]
    before = sparse.item_emb.weight.detach().clone()
    for o in steps:
        o.step()
    moved = (sparse.item_emb.weight.detach() != before).any(dim=1)
    used = torch.zeros(201, dtype=torch.bool)
    used[torch.cat([targets, negatives]) + 1] = True
    assert torch.equal(moved, used)  # the rows the batch used, and no other


def test_loss_decreases_and_every_parameter_gets_a_gradient() -> None:
    data, _, _ = cycle_data()
    windows = training_windows(data.log, max_len=8)
    model = tiny_model().train()
    tokens = torch.as_tensor(windows)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    used = (inputs != 0) & (targets != 0)
    next_item_loss(model, model(inputs)[used], targets[used] - 1).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    result = train(tiny_model(), windows, lr=1e-2, batch_size=16, max_epochs=8)
    losses = [h["loss"] for h in result.history]
    assert result.epochs == 8 and len(losses) == 8
    assert losses[-1] < 0.7 * losses[0]


def test_train_stops_on_stale_evaluations_and_restores_the_best_weights() -> None:
    data, _, _ = cycle_data()
    windows = training_windows(data.log, max_len=8)
    scores = iter([0.2, 0.5, 0.4, 0.5, 0.3])  # a tie is not an improvement
    snapshots: list[torch.Tensor] = []

    def evaluate(model: SASRec) -> float:
        snapshots.append(model.item_emb.weight.detach().clone())
        return next(scores)

    model = tiny_model()
    result = train(model, windows, lr=1e-2, batch_size=16, max_epochs=20, patience=3,
                   eval_every=2, evaluate=evaluate)
    assert [h.get("held_out") for h in result.history] == [None, 0.2, None, 0.5, None, 0.4,
                                                           None, 0.5, None, 0.3]
    assert result.epochs == 4
    torch.testing.assert_close(model.item_emb.weight.detach(), snapshots[1], rtol=0, atol=0)
    assert not any(m.training for m in model.modules())  # ready to score, on any thread


def test_a_nan_loss_stops_training_naming_the_model_and_the_epoch() -> None:
    data, _, _ = cycle_data()
    windows = training_windows(data.log, max_len=8)
    with pytest.raises(FloatingPointError,
                       match=r"^sequence: loss is nan at epoch 1; lower lr or check the inputs"):
        train(tiny_model(), windows, lr=1e30, batch_size=16, max_epochs=4)
    evaluations = []

    def poison_after_two(model: SASRec) -> float:  # an inf weight from epoch 3 on
        evaluations.append(1)
        if len(evaluations) == 2:
            with torch.no_grad():
                model.item_emb.weight[3, 0] = float("inf")
        return 0.5

    with pytest.raises(FloatingPointError, match=r"^next-item: loss is nan at epoch 3;"):
        train(tiny_model(), windows, lr=1e-2, batch_size=16, max_epochs=6,
              evaluate=poison_after_two, name="next-item")
    assert len(evaluations) == 2


def test_no_sequence_to_learn_from_trains_nothing_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = train(model, np.zeros((0, 9), np.int64), max_epochs=2, name="seq")
    assert [h["loss"] for h in result.history] == [0.0, 0.0]  # not nan, so no error
    assert "[seq] no sequence of two or more items to learn from" in caplog.text
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


# ---------------------------------------------------------------- sequences from the log


def test_last_tokens_are_the_latest_items_left_padded() -> None:
    # user 0: items 2, 0, 1 in time order; user 1: items 3, 4; user 2: none (cold)
    dense = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    ts = np.array([[20, 30, 10, 0, 0], [0, 0, 0, 5, 6], [0, 0, 0, 0, 0]])
    data = recall_data_from_matrix(dense, ts)
    users = data.user_index.encode(np.array([0, 1, 2]))
    got = last_tokens(data.log, users, max_len=2)
    np.testing.assert_array_equal(got, [[1, 2], [4, 5], [0, 0]])  # tokens are item + 1
    np.testing.assert_array_equal(last_tokens(data.log, users[:1], 4), [[0, 3, 1, 2]])


def test_training_windows_hold_every_transition_once() -> None:
    # one user with 12 items in order 0..11 and one with 2: max_len 5 cuts the first
    # into windows [7..11], [2..7] (sharing item 7) and [0..2]
    dense = np.zeros((2, 12))
    dense[0] = 1
    dense[1, [4, 9]] = 1
    ts = np.tile(np.arange(12), (2, 1))
    data = recall_data_from_matrix(dense, ts)
    rows = training_windows(data.log, max_len=5, windows=0)
    tok = {tuple(r) for r in rows.tolist()}
    item = data.item_index.encode(np.arange(12)) + 1
    assert tok == {(item[6], item[7], item[8], item[9], item[10], item[11]),
                   (item[1], item[2], item[3], item[4], item[5], item[6]),
                   (0, 0, 0, 0, item[0], item[1]),
                   (0, 0, 0, 0, item[4], item[9])}
    pairs = [(r[i], r[i + 1]) for r in rows.tolist() for i in range(5) if r[i] and r[i + 1]]
    assert len(pairs) == len(set(pairs)) == 11 + 1
    latest = training_windows(data.log, max_len=5, windows=1)
    assert len(latest) == 2 and set(map(tuple, latest.tolist())) <= tok


# ---------------------------------------------------------------- the channel


def test_channel_learns_the_planted_next_item() -> None:
    data, starts, lens = cycle_data()
    channel = SequenceChannel(**TINY, epochs=40).fit(data)
    users = data.user_index.encode(np.arange(40))
    top = channel.retrieve(data, users, k=1)
    expected = data.item_index.encode((starts + lens) % 12)
    assert (top.items[:, 0] == expected).mean() >= 0.9


def test_a_large_catalogue_learns_with_a_sampled_softmax(caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    data, starts, lens = cycle_data()
    users = data.user_index.encode(np.arange(40))
    expected = data.item_index.encode((starts + lens) % 12)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        sampled = SequenceChannel(**TINY, epochs=40, negatives=2).fit(data)  # 12 > 4 x 2
    assert "sampled softmax over 2 negatives" in caplog.text
    assert (sampled.retrieve(data, users, k=1).items[:, 0] == expected).mean() >= 0.9
    full = SequenceChannel(**TINY, epochs=3, negatives=3).fit(data)  # 12 = 4 x 3: full
    again = SequenceChannel(**TINY, epochs=3, negatives=0).fit(data)
    np.testing.assert_array_equal(full.score(data, users), again.score(data, users))
    assert not np.array_equal(SequenceChannel(**TINY, epochs=3, negatives=2).fit(data)
                              .score(data, users), full.score(data, users))


def test_a_catalogue_past_sparse_from_learns_with_sparse_updates(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    data, starts, lens = cycle_data()
    users = data.user_index.encode(np.arange(40))
    expected = data.item_index.encode((starts + lens) % 12)
    monkeypatch.setattr(SequenceChannel, "SPARSE_FROM", 10)  # 12 items: past it
    with caplog.at_level(logging.INFO, logger="pipeline"):
        channel = SequenceChannel(**TINY, epochs=40, negatives=2).fit(data)
    assert "the item table updated sparsely" in caplog.text
    assert channel.model.item_emb.sparse
    assert (channel.retrieve(data, users, k=1).items[:, 0] == expected).mean() >= 0.9
    assert not channel.model.item_emb.weight[0].any()  # the padding row stays zero
    again = SequenceChannel(**TINY, epochs=40, negatives=2).fit(data)
    np.testing.assert_array_equal(again.score(data, users), channel.score(data, users))
    with pytest.raises(ValueError, match="needs a sampled softmax"):
        train(SASRec(12, d=16, sparse=True), training_windows(data.log, 8), max_epochs=1)


def test_channel_contract(tmp_path: Path) -> None:
    data, _, _ = cycle_data(n_users=30)
    users = data.user_index.encode(np.arange(30))
    channel = SequenceChannel(**TINY, epochs=5).fit(data)
    top = channel.retrieve(data, users, k=6)
    seen = data.history.toarray() > 0
    for row, u in enumerate(users):
        assert not seen[u, top.items[row][top.items[row] >= 0]].any(), "a seen item came back"
    single = np.vstack([channel.retrieve(data, users[i:i + 1], k=6).items for i in range(6)])
    np.testing.assert_array_equal(single, top.items[:6])
    np.testing.assert_array_equal(channel.retrieve(data, users, k=6, chunk=4).items, top.items)
    scores = channel.score(data, users)
    assert scores.dtype == np.float32 and scores.shape == (30, data.n_items)
    channel.save(tmp_path / "seq")
    loaded = SequenceChannel.load(tmp_path / "seq")
    assert not any(m.training for m in loaded.model.modules())
    np.testing.assert_array_equal(loaded.score(data, users), scores)
    again = SequenceChannel(**TINY, epochs=5).fit(data)
    np.testing.assert_array_equal(again.score(data, users), scores)
    other = SequenceChannel(**{**TINY, "seed": 7}, epochs=5).fit(data)
    assert not np.array_equal(other.score(data, users), scores)


def test_cold_users_get_nothing() -> None:
    dense = np.zeros((5, 12))
    dense[:3, :4] = 1  # users 3 and 4 have no history
    data = recall_data_from_matrix(dense)
    channel = SequenceChannel(**TINY, epochs=1).fit(data)
    cold = data.user_index.encode(np.array([3, 4]))
    assert np.isneginf(channel.score(data, cold)).all()
    assert (channel.retrieve(data, cold, k=3).items == -1).all()


def test_early_stopping_records_the_best_epoch_and_the_refit_trains_exactly_that() -> None:
    data, starts, lens = cycle_data(n_users=30)
    users = data.user_index.encode(np.arange(30))
    held_out = HeldOut(users, data.item_index.encode((starts + lens) % 12))
    params = {**TINY, "max_epochs": 12, "patience": 3}
    channel = SequenceChannel(**params).fit(data, held_out)
    tuned = channel.tuned()
    history = channel.history
    scored = [h["held_out"] for h in history]
    assert set(tuned) == {"epochs"} and 1 <= tuned["epochs"] <= 12
    assert tuned["epochs"] == int(np.argmax(scored)) + 1
    best_stale = len(history) - tuned["epochs"]
    assert len(history) == 12 or best_stale == 3, "stopped after `patience` evaluations"
    # the best weights were restored: the held-out metric recomputed equals the best
    recomputed = channel._held_out_metric(data, held_out)(channel.model)
    assert recomputed == pytest.approx(max(scored), abs=1e-9)
    refit = SequenceChannel(**{**params, **tuned}).fit(data, held_out)
    assert len(refit.history) == tuned["epochs"] == refit.tuned()["epochs"]
    assert all("held_out" not in h for h in refit.history), "a refit looks at nothing held out"


def test_the_held_out_ranking_samples_users_past_its_cell_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every epoch ranks the whole catalogue for the held-out users: past ``tune_cells``
    (users x items) a seeded sample of them, the mean over those alone."""
    data, starts, lens = cycle_data(n_users=30)
    users = data.user_index.encode(np.arange(30))
    held_out = HeldOut(users, data.item_index.encode((starts + lens) % 12))
    channel = SequenceChannel(**TINY, epochs=3).fit(data)
    scored: list[int] = []

    def counting(model: SASRec, tokens: np.ndarray, **kwargs) -> np.ndarray:
        scored.append(len(tokens))
        return next_item_scores(model, tokens, **kwargs)

    monkeypatch.setattr("models.recall.sequence.next_item_scores", counting)
    whole = channel._held_out_metric(data, held_out)(channel.model)
    assert sum(scored) == 30
    scored.clear()
    channel.params["tune_cells"] = 12 * 7  # 7 users of 12 items
    sampled = channel._held_out_metric(data, held_out)(channel.model)
    assert sum(scored) == 7
    # the mean over the seeded sample alone: the whole metric on just those users
    drawn = np.sort(np.random.default_rng(channel.params["seed"]).choice(
        np.unique(held_out.users), 7, replace=False))
    mine = np.isin(held_out.users, drawn)
    channel.params["tune_cells"] = 10**9
    alone = channel._held_out_metric(data, HeldOut(held_out.users[mine],
                                                   held_out.items[mine]))(channel.model)
    assert sampled == pytest.approx(alone, abs=1e-12)
    assert whole > 0


def test_batched_scores_match_one_row_at_a_time() -> None:
    model = tiny_model()
    tokens = np.array([[0, 0, 0, 0, 0, 3, 5, 7], [1, 2, 3, 4, 5, 6, 7, 8],
                       [0, 0, 0, 0, 0, 0, 0, 9]])
    batched = next_item_scores(model, tokens, batch_size=2)
    single = np.vstack([next_item_scores(model, tokens[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_cuda_asked_but_absent_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    if torch.cuda.is_available():
        assert SequenceChannel(device="cuda").device == "cuda"
        return
    with caplog.at_level(logging.ERROR, logger="pipeline"):
        channel = SequenceChannel(device="cuda")
    assert channel.device == "cpu"
    assert "CUDA is not available" in caplog.text


def test_scoring_keeps_the_process_threads_and_the_thread_count_keeps_the_scores() -> None:
    data, _, _ = cycle_data(n_users=30)
    users = data.user_index.encode(np.arange(30))
    channel = SequenceChannel(**{**TINY, "threads": 2}, epochs=2).fit(data)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a served request's pin: the fit's 2 must not come back
        one = channel.score(data, users)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        np.testing.assert_array_equal(channel.score(data, users), one)
    finally:
        torch.set_num_threads(before)
