"""FM and FFM against slow, obviously-correct float64 references; gradients; training.

The references loop over every pair of slots exactly as the papers write the models
(Rendle 2010 for FM, Juan et al. 2016 for FFM), so the vectorised forward passes, the
hand-written backward passes and the row-sparse optimisers are each checked against
something with no cleverness in it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from features.fields import FieldEncoder
from models.distributed import shard_order
from models.ffm import FFM, FFMFunction, RowSpread, gather_blocks
from models.fm import FM, FMFunction
from models.fm_trainer import (
    Samples,
    TrainConfig,
    binary_metric,
    fit,
    load_model,
    pair_scores,
    predict,
    predict_pairs,
    save_model,
    side_terms,
)
from models.negatives import sample_negatives
from models.optimizers import RowSparseAdagrad, RowSparseAdam, make_optimizer

torch.set_num_threads(1)

LAYOUTS = {
    "one slot per field": [0, 1, 2, 3],
    "multi-valued fields": [0, 1, 1, 1, 2, 3, 3],
}


def random_batch(slot_field: list[int], n_features: int, b: int = 6, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids/weights: multi-slot fields get random weights summing to one and some
    padding (id 0, weight 0); single-slot fields weight 1."""
    g = torch.Generator().manual_seed(seed)
    sf = np.asarray(slot_field)
    ids = torch.randint(1, n_features, (b, len(sf)), generator=g)
    w = torch.ones(b, len(sf), dtype=torch.float64)
    for f in np.unique(sf):
        cols = np.flatnonzero(sf == f)
        if len(cols) > 1:
            raw = torch.rand(b, len(cols), generator=g, dtype=torch.float64)
            raw[:, -1] = torch.where(torch.arange(b) % 2 == 0, 0.0, raw[:, -1])  # padding
            w[:, cols] = raw / raw.sum(1, keepdim=True)
    ids[w == 0] = 0
    return ids, w


def ffm_reference(table: torch.Tensor, bias: float, ids: torch.Tensor, w: torch.Tensor,
                  slot_field: list[int], k: int) -> torch.Tensor:
    """bias + sum_s w_s lin_s + sum_{s<t, f(s) != f(t)} w_s w_t <V[i_s, f(t)], V[i_t, f(s)]>."""
    t = table.detach().double()
    n_fields = max(slot_field) + 1
    out = []
    for b in range(ids.shape[0]):
        total = bias
        for s in range(ids.shape[1]):
            i, fs = int(ids[b, s]), slot_field[s]
            total += float(w[b, s] * t[i, n_fields * k])
            for u in range(s + 1, ids.shape[1]):
                j, fu = int(ids[b, u]), slot_field[u]
                if fs == fu:
                    continue
                total += float(w[b, s] * w[b, u]
                               * (t[i, fu * k:(fu + 1) * k] * t[j, fs * k:(fs + 1) * k]).sum())
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def fm_reference(table: torch.Tensor, bias: float, ids: torch.Tensor, w: torch.Tensor,
                 k: int) -> torch.Tensor:
    """bias + sum_s w_s lin_s + sum_{s<t} w_s w_t <v_s, v_t> (every pair)."""
    t = table.detach().double()
    out = []
    for b in range(ids.shape[0]):
        total = bias
        for s in range(ids.shape[1]):
            i = int(ids[b, s])
            total += float(w[b, s] * t[i, k])
            for u in range(s + 1, ids.shape[1]):
                j = int(ids[b, u])
                total += float(w[b, s] * w[b, u] * (t[i, :k] * t[j, :k]).sum())
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """float64 copy with non-trivial linear weights and bias (padding row kept zero)."""
    model = model.double()
    with torch.no_grad():
        model.table.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        model.table[0] = 0
        model.bias.fill_(0.3)
    return model


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ffm_matches_reference(layout: str) -> None:
    sf = LAYOUTS[layout]
    model = randomised(FFM(13, sf, k=3))
    ids, w = random_batch(sf, 13)
    got = model(ids, w)
    want = ffm_reference(model.table, 0.3, ids, w, sf, 3)
    torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_ffm_float32_matches_reference_for_every_block_width(k: int) -> None:
    """The partner gather moves k-float blocks as wide elements; every k must agree."""
    sf = LAYOUTS["multi-valued fields"]
    model = randomised(FFM(13, sf, k=k)).float()
    ids, w = random_batch(sf, 13, b=9)
    want = ffm_reference(model.table, 0.3, ids, w, sf, k)
    torch.testing.assert_close(model(ids, w.float()).detach().double(), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("width", [1, 2, 3, 4, 6, 8])
def test_gather_blocks_equals_index_select(dtype: torch.dtype, width: int) -> None:
    x = torch.randn(20, width).to(dtype)
    index = torch.tensor([3, 3, 0, 19, 7])
    torch.testing.assert_close(gather_blocks(x, index), x.index_select(0, index),
                               rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fm_matches_reference(layout: str) -> None:
    sf = LAYOUTS[layout]
    model = randomised(FM(13, sf, k=3))
    ids, w = random_batch(sf, 13)
    torch.testing.assert_close(model(ids, w).detach(), fm_reference(model.table, 0.3, ids, w, 3),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("copies", [False, True])
def test_hand_written_backward_passes_gradcheck(layout: str, copies: bool) -> None:
    sf = LAYOUTS[layout]
    ids, w = random_batch(sf, 9, b=4)
    spread = RowSpread.plan(ids, n_rows=9, batch=4, per_address=1) if copies else None
    ffm = randomised(FFM(9, sf, k=2))
    table = ffm.table.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: FFMFunction.apply(t, ids, w, ffm.slot_field, ffm.partner, ffm.same,
                                    ffm.n_fields, 2, False, 0.0, spread),
        (table,))
    fm_table = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: FMFunction.apply(t, ids, w, False, 0.0, spread),
                                    (fm_table,))


def test_row_spread_sums_each_row_through_its_copies() -> None:
    """A row gathered often gets copies in proportion (a batch's expected gathers over
    ``per_address``), every gathered row's gradient lands in one copy of its own row, and
    the copies sum to ``index_add_``'s dense gradient."""
    ids = torch.tensor([[0, 1, 5], [0, 2, 5], [0, 3, 5], [0, 1, 6]] * 50)  # 200 samples
    spread = RowSpread.plan(ids, n_rows=8, batch=64, per_address=4)
    # row 0: 64 gathers a batch -> 16 copies; row 5: 48 -> 12; row 1: 32 -> 8; rows 4, 7: 1
    assert spread.count.tolist() == [16, 8, 4, 4, 1, 12, 4, 1]
    assert spread.owner.tolist() == sum(([r] * c for r, c in enumerate(spread.count.tolist())),
                                        [])
    batch = ids[:64]
    d_rows = torch.randn(64 * 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = torch.zeros(8, 5, dtype=torch.float64).index_add_(0, batch.reshape(-1), d_rows)
    torch.testing.assert_close(spread.sum_rows(batch.reshape(-1), d_rows, 8, slots=3), want)
    # no row busier than per_address a batch: no copies needed
    assert RowSpread.plan(ids, n_rows=8, batch=2, per_address=4) is None


@pytest.mark.parametrize("cls", [FM, FFM])
def test_gradient_through_row_copies_equals_the_plain_one(cls: type) -> None:
    sf = LAYOUTS["multi-valued fields"]
    ids, w = random_batch(sf, 11, b=40)
    spread = RowSpread.plan(ids, n_rows=11, batch=40, per_address=3)
    assert spread is not None and int(spread.count.max()) > 1
    plain, copied = randomised(cls(11, sf, k=3)), randomised(cls(11, sf, k=3))
    plain(ids, w, l2=0.3).sum().backward()
    copied(ids, w, l2=0.3, spread=spread).sum().backward()
    torch.testing.assert_close(copied.table.grad, plain.table.grad)


@pytest.mark.parametrize("cls", [FM, FFM])
def test_l2_and_sparse_gradients_match_dense_autograd(cls: type) -> None:
    sf = LAYOUTS["multi-valued fields"]
    ids, w = random_batch(sf, 11)
    dense = randomised(cls(11, sf, k=3))
    sparse = randomised(cls(11, sf, k=3, sparse=True))
    l2 = 0.3
    dense(ids, w, l2=l2).sum().backward()
    sparse(ids, w, l2=l2).sum().backward()
    assert sparse.table.grad.is_sparse
    torch.testing.assert_close(sparse.table.grad.to_dense(), dense.table.grad)
    # l2 = gradient of l2 * sum over samples of the squares of their gathered rows / B
    plain = randomised(cls(11, sf, k=3))
    loss = plain(ids, w).sum() + l2 * (plain.table[ids] ** 2).sum() / len(ids)
    loss.backward()
    torch.testing.assert_close(dense.table.grad, plain.table.grad)


@pytest.mark.parametrize("cls", [FM, FFM])
def test_gradient_flows_to_used_rows_only(cls: type) -> None:
    sf = LAYOUTS["multi-valued fields"]
    model = randomised(cls(40, sf, k=3))
    ids, w = random_batch(sf, 20)
    model(ids, w).sum().backward()
    grad = model.table.grad
    assert model.bias.grad is not None and model.bias.grad.item() != 0
    used = torch.unique(ids[w > 0])
    assert torch.all(grad[used].abs().sum(1) > 0)
    unused = torch.ones(40, dtype=torch.bool)
    unused[used] = False
    assert unused[0]  # padding
    assert torch.all(grad[unused] == 0)


def two_sides(slot_field: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A row's slots split into two interleaved sides: fields 0 and 2 on one, 1 and 3 on
    the other (as a user's and an item's fields share a row)."""
    first = np.isin(slot_field, [0, 2])
    return np.flatnonzero(first), np.flatnonzero(~first)


def side(ids: torch.Tensor, w: torch.Tensor, rows: slice, slots: np.ndarray) -> Samples:
    """``rows`` of a random batch at one side's ``slots``, as samples."""
    return Samples(ids[rows, slots].numpy().astype(np.int32),
                   w[rows, slots].numpy().astype(np.float32))


@pytest.mark.parametrize("cls", [FM, FFM])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pairs_scored_side_by_side_equal_whole_rows(cls: type, layout: str) -> None:
    sf = LAYOUTS[layout]
    first_slots, second_slots = two_sides(sf)
    model = randomised(cls(30, sf, k=3)).float()
    ids, w = random_batch(sf, 30, b=12, seed=4)
    first = side(ids, w, slice(0, 5), first_slots)
    second = side(ids, w, slice(5, None), second_slots)
    rng = np.random.default_rng(0)
    first_of, second_of = rng.integers(0, 5, 40), rng.integers(0, 7, 40)
    rows = Samples(np.zeros((40, len(sf)), np.int32), np.zeros((40, len(sf)), np.float32))
    rows.ids[:, first_slots], rows.weights[:, first_slots] = (first.ids[first_of],
                                                              first.weights[first_of])
    rows.ids[:, second_slots], rows.weights[:, second_slots] = (second.ids[second_of],
                                                                second.weights[second_of])
    whole = predict(model, rows, logits=True)
    paired = predict_pairs(model, first, first_slots, second, second_slots, first_of,
                           second_of, batch_size=16, logits=True)
    assert whole.std() > 0.1  # the pairs differ, so a wrong cross term would show
    np.testing.assert_allclose(paired, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        predict_pairs(model, second, second_slots, first, first_slots, second_of, first_of),
        predict(model, rows), rtol=1e-5, atol=1e-6)  # either side may come first


@pytest.mark.parametrize("cls", [FM, FFM])
def test_a_tables_terms_worked_out_ahead_give_the_pairs_scores_bit_for_bit(cls: type) -> None:
    """A served request pairs one user with a few of the catalogue's items: the items'
    side terms worked out once for the whole table and gathered score as those worked
    out for just the items asked about (``predict_pairs``), to the last bit."""
    sf = LAYOUTS["multi-valued fields"]
    first_slots, second_slots = two_sides(sf)
    model = randomised(cls(30, sf, k=3)).float()
    ids, w = random_batch(sf, 30, b=300, seed=6)
    user = side(ids, w, slice(0, 1), first_slots)
    table = side(ids, w, slice(None), second_slots)
    ahead = side_terms(model, table, second_slots, first_slots, second=True)
    asked = np.random.default_rng(1).choice(300, 40, replace=False)
    of = np.random.default_rng(2).integers(0, 40, 90)
    want = predict_pairs(model, user, first_slots, table.take(asked), second_slots,
                         np.zeros(90, np.int64), of)
    got = pair_scores(model, side_terms(model, user, first_slots, second_slots), ahead,
                      np.zeros(90, np.int64), asked[of])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("training", [True, False])
def test_scoring_scores_in_eval_mode_and_leaves_the_mode_as_it_was(training: bool) -> None:
    sf = LAYOUTS["multi-valued fields"]
    first_slots, second_slots = two_sides(sf)
    model = randomised(FFM(30, sf, k=3)).float()
    ids, w = random_batch(sf, 30, b=8, seed=5)
    rows = Samples(ids.numpy().astype(np.int32), w.numpy().astype(np.float32))
    model.eval()
    want = model(ids, w).detach().numpy()
    model.train(training)
    modes = []  # FM/FFM have no dropout: their scores alone cannot tell the modes apart
    model.register_forward_pre_hook(lambda module, _: modes.append(module.training))
    np.testing.assert_allclose(predict(model, rows, logits=True), want, rtol=1e-6)
    assert modes and not any(modes)  # every forward pass ran in eval mode
    side_terms(model, side(ids, w, slice(0, 1), first_slots), first_slots, second_slots)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_ffm_rejects_unordered_slot_fields() -> None:
    with pytest.raises(ValueError, match="slot_field"):
        FFM(5, [1, 0])
    with pytest.raises(ValueError, match="slot_field"):
        FFM(5, [0, 2])


def test_oov_values_are_encoded_and_scored() -> None:
    fit_df = pd.DataFrame({"u": [1, 2, 3, 1], "g": [["a"], ["b", "a"], ["c"], ["a"]]})
    enc = FieldEncoder({"u": "categorical", "g": "multi"}).fit(fit_df)
    new = enc.transform(pd.DataFrame({"u": [42], "g": [["zzz", "a"]]}))
    assert new.ids[0, 0] == enc.oov_ids("u")[0]
    assert new.ids[0, 1] == enc.oov_ids("g")[0]
    for cls in (FM, FFM):
        model = randomised(cls(enc.n_features, enc.slot_field, k=2))
        ids, w = torch.from_numpy(new.ids).long(), torch.from_numpy(new.weights).double()
        score = model(ids, w)
        assert torch.isfinite(score).all()
        want = (ffm_reference(model.table, 0.3, ids, w, enc.slot_field.tolist(), 2)
                if cls is FFM else fm_reference(model.table, 0.3, ids, w, 2))
        torch.testing.assert_close(score.detach(), want)
        score.sum().backward()
        assert model.table.grad[enc.oov_ids("u")[0]].abs().sum() > 0


# ---------------------------------------------------------------- optimisers


@pytest.mark.parametrize("ours,theirs", [
    (lambda p: RowSparseAdagrad(p, lr=0.1), lambda p: torch.optim.Adagrad(p, lr=0.1)),
    (lambda p: RowSparseAdam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
])
def test_row_sparse_optimisers_match_torch_on_dense_gradients(ours, theirs) -> None:
    sf = LAYOUTS["multi-valued fields"]
    a, b = FFM(30, sf, k=3, seed=4), FFM(30, sf, k=3, seed=4)
    opt_a, opt_b = ours(a.parameters()), theirs(b.parameters())
    for step in range(5):
        ids, w = random_batch(sf, 30, seed=step)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(ids, w.float()).square().mean().backward()
            opt.step()
    torch.testing.assert_close(a.table, b.table, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [RowSparseAdagrad, RowSparseAdam])
def test_row_sparse_optimisers_sum_duplicate_rows(cls: type) -> None:
    """An uncoalesced gradient (rows repeated, unordered, as after a DDP all-reduce) gives
    the same step as its coalesced form."""
    a = torch.nn.Parameter(torch.ones(5, 2))
    b = torch.nn.Parameter(torch.ones(5, 2))
    idx = torch.tensor([[3, 1, 3]])
    vals = torch.tensor([[1.0, 2.0], [0.5, 0.5], [-3.0, 1.0]])
    a.grad = torch.sparse_coo_tensor(idx, vals, (5, 2), check_invariants=True)
    b.grad = a.grad.coalesce()
    opt_a, opt_b = cls([a]), cls([b])
    opt_a.step()
    opt_b.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)
    assert torch.equal(a.detach()[[0, 2, 4]], torch.ones(3, 2))  # untouched rows


def test_optimizer_choice_follows_gradient_kind() -> None:
    small = FFM(30, [0, 1], k=2)  # auto: a small table gets dense gradients
    big = FFM(300_000, [0, 1], k=2)  # auto: big enough for row-sparse gradients
    assert not small.sparse and big.sparse
    assert isinstance(make_optimizer(big, "adagrad", 0.1), RowSparseAdagrad)
    assert isinstance(make_optimizer(big, "adam", 0.1), RowSparseAdam)
    assert type(make_optimizer(small, "adagrad", 0.1)) is torch.optim.Adagrad
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(small, "sgd", 0.1)


def test_sparse_adagrad_equals_dense_adagrad_exactly() -> None:
    sf = LAYOUTS["multi-valued fields"]
    dense, sparse = FFM(30, sf, k=3, seed=2).double(), FFM(30, sf, k=3, seed=2,
                                                           sparse=True).double()
    opts = [torch.optim.Adagrad(dense.parameters(), lr=0.1),
            RowSparseAdagrad(sparse.parameters(), lr=0.1)]
    for step in range(5):
        ids, w = random_batch(sf, 30, seed=step)
        for model, opt in zip((dense, sparse), opts, strict=True):
            opt.zero_grad()
            model(ids, w).square().mean().backward()
            opt.step()
    torch.testing.assert_close(dense.table, sparse.table, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- trainer


def planted(n: int, seed: int) -> tuple[Samples, FieldEncoder]:
    """Clicks follow the product of a hidden user sign and item sign (a pure interaction
    no linear model can see), plus a weighted tag field that carries no signal."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 60, n), rng.integers(0, 40, n)
    us, is_ = np.where(np.arange(60) % 2 == 0, 1, -1), np.where(np.arange(40) % 3 == 0, 1, -1)
    p = 1 / (1 + np.exp(-3.0 * us[users] * is_[items]))
    df = pd.DataFrame({"user": users, "item": items,
                       "tags": [list(rng.choice(["a", "b", "c", "d"], rng.integers(1, 4)))
                                for _ in range(n)]})
    enc = FieldEncoder({"user": "categorical", "item": "categorical", "tags": "multi"}).fit(df)
    e = enc.transform(df)
    return Samples(e.ids, e.weights, (rng.random(n) < p).astype(np.float32)), enc


def split(s: Samples, at: int) -> tuple[Samples, Samples]:
    return s.take(np.arange(at)), s.take(np.arange(at, len(s)))


@pytest.mark.parametrize("cls,sparse", [(FFM, True), (FM, False)])
def test_trainer_learns_a_planted_interaction(cls: type, sparse: bool,
                                              caplog: pytest.LogCaptureFixture) -> None:
    data, enc = planted(6000, seed=0)
    train, valid = split(data, 5000)
    model = cls(enc.n_features, enc.slot_field, k=4, sparse=sparse, seed=0)
    cfg = TrainConfig(lr=0.1, l2=1e-4, batch_size=128, epochs=8, patience=2, threads=1)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        hist = fit(model, train, valid, cfg)
    auc = binary_metric("auc", valid.labels, predict(model, valid))
    assert auc > 0.8
    assert auc == pytest.approx(hist.best_metric, abs=1e-9)  # best epoch restored
    assert hist.samples_per_second > 0 and hist.train_samples >= 5000
    lines = [r.getMessage() for r in caplog.records if "epoch=" in r.getMessage()]
    assert len(lines) == len(hist.epochs)
    assert "loss=" in lines[0] and "valid_auc=" in lines[0] and "samples_per_s=" in lines[0]


def test_early_stopping_restores_the_best_epoch() -> None:
    data, enc = planted(800, seed=1)
    model = FFM(enc.n_features, enc.slot_field, k=2, sparse=True)
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.95, 0.99])
    snapshots: list[torch.Tensor] = []

    def evaluate(m: torch.nn.Module) -> float:
        snapshots.append(m.table.detach().clone())
        return next(scores)

    hist = fit(model, data, None, TrainConfig(epochs=6, patience=2, threads=1),
               evaluate=evaluate)
    assert [round(e["valid_custom"], 2) for e in hist.epochs] == [0.5, 0.9, 0.8, 0.7]
    assert hist.stopped_early and hist.best_epoch == 1
    torch.testing.assert_close(model.table.detach(), snapshots[1], rtol=0, atol=0)
    # logloss: lower is better
    model2 = FM(enc.n_features, enc.slot_field, k=2)
    hist2 = fit(model2, data, data, TrainConfig(epochs=2, metric="logloss", threads=1))
    assert not hist2.higher_is_better
    assert hist2.best_metric == min(e["valid_logloss"] for e in hist2.epochs)


@pytest.mark.parametrize("cls", [FM, FFM])
def test_a_nan_loss_stops_training_naming_the_model_and_the_epoch(cls: type) -> None:
    data, enc = planted(800, seed=1)
    model = cls(enc.n_features, enc.slot_field, k=2, sparse=True)
    with pytest.raises(FloatingPointError, match=rf"^{cls.__name__}: loss is nan at epoch 0; "
                                                 "lower lr or check the inputs"):
        fit(model, data, None, TrainConfig(lr=1e30, epochs=3, threads=1))
    evaluations = []

    def poison_after_two(m: torch.nn.Module) -> float:  # inf weights from epoch 2 on
        evaluations.append(1)
        if len(evaluations) == 2:
            with torch.no_grad():
                next(m.parameters()).fill_(float("inf"))
        return 0.5

    model = cls(enc.n_features, enc.slot_field, k=2, sparse=True)
    with pytest.raises(FloatingPointError, match=rf"^{cls.__name__}: loss is nan at epoch 2;"):
        fit(model, data, None, TrainConfig(epochs=5, patience=5, threads=1),
            evaluate=poison_after_two)


def test_without_restore_best_it_still_stops_but_keeps_the_last_epoch() -> None:
    data, enc = planted(800, seed=1)
    model = FM(enc.n_features, enc.slot_field, k=2)
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.95])
    snapshots: list[torch.Tensor] = []

    def evaluate(m: torch.nn.Module) -> float:
        snapshots.append(m.table.detach().clone())
        return next(scores)

    hist = fit(model, data, None, TrainConfig(epochs=5, patience=2, threads=1,
                                              restore_best=False), evaluate=evaluate)
    assert hist.stopped_early and len(hist.epochs) == 4
    assert (hist.best_epoch, hist.best_metric) == (1, 0.9)
    torch.testing.assert_close(model.table.detach(), snapshots[-1], rtol=0, atol=0)


def test_same_seed_same_parameters() -> None:
    data, enc = planted(1500, seed=2)
    cfg = TrainConfig(lr=0.05, epochs=2, batch_size=64, seed=7, threads=1, optimizer="adam")

    def run(seed: int) -> torch.Tensor:
        model = FFM(enc.n_features, enc.slot_field, k=3, sparse=True, seed=3)
        fit(model, data, None, TrainConfig(**{**cfg.__dict__, "seed": seed}))
        return model.table.detach().clone()

    first = run(7)
    torch.testing.assert_close(run(7), first, rtol=0, atol=0)
    assert not torch.equal(run(8), first)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    data, enc = planted(500, seed=3)
    for cls in (FM, FFM):
        model = cls(enc.n_features, enc.slot_field, k=3, sparse=True, seed=1)
        fit(model, data, None, TrainConfig(epochs=1, threads=1))
        folder = tmp_path / cls.kind
        assert save_model(model, folder, extra={"valid_auc": 0.5})
        back, extra = load_model(folder)
        assert isinstance(back, cls) and extra == {"valid_auc": 0.5} and not back.training
        np.testing.assert_array_equal(predict(back, data), predict(model, data))


def test_shard_order_covers_every_sample_once_per_epoch() -> None:
    parts = [shard_order(11, epoch=3, seed=5, rank=r, world=3) for r in range(3)]
    assert len({len(p) for p in parts}) == 1  # same number of steps on every rank
    joined = torch.cat(parts)
    assert set(joined.tolist()) == set(range(11)) and len(joined) == 12  # one wrapped pad
    torch.testing.assert_close(shard_order(11, 3, 5, 0, 1).sort().values, torch.arange(11))


# ---------------------------------------------------------------- negatives


def test_negative_sampler_follows_popularity_and_avoids_positives() -> None:
    rng = np.random.default_rng(0)
    n_items = 6
    pos_users = np.array([0, 0, 1, 2])
    pos_items = np.array([0, 1, 0, 2])
    popularity = np.array([0.0, 1, 2, 3, 4, 0])
    users, items = sample_negatives(pos_users, pos_items, n_items, 5000, rng,
                                    popularity=popularity)
    assert len(users) == len(items) == 4 * 5000
    np.testing.assert_array_equal(users, np.repeat(pos_users, 5000))
    positives = set(zip(pos_users.tolist(), pos_items.tolist(), strict=True))
    assert not any((u, i) in positives for u, i in zip(users.tolist(), items.tolist(),
                                                        strict=True))
    assert not np.isin(items, [0, 5]).any()  # zero popularity is never drawn
    # user 2 (no positive among items 1, 3, 4) sees them in proportion 1 : 3 : 4
    share = np.bincount(items[users == 2], minlength=n_items)[[1, 3, 4]] / 5000
    np.testing.assert_allclose(share, np.array([1, 3, 4]) / 8, atol=0.02)


def test_negative_sampler_mixes_in_hard_negatives() -> None:
    rng = np.random.default_rng(1)
    users, items = sample_negatives(
        np.array([0, 1]), np.array([0, 0]), 50, 4000, rng,
        hard_users=np.array([0, 0, 0]), hard_items=np.array([7, 8, 0]), hard_share=0.25)
    u0 = items[users == 0]
    hard_rate = np.isin(u0, [7, 8]).mean()
    assert 0.2 < hard_rate < 0.32  # 25% hard, plus the odd popularity draw of 7 or 8
    assert not (u0 == 0).any()  # the clicked candidate is never a negative
    assert np.isin(items[users == 1], [7, 8]).mean() < 0.1  # user 1 has no hard candidates


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_cuda_bf16_when_available(sparse: bool, optimizer: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    data, enc = planted(2000, seed=4)
    model = FFM(enc.n_features, enc.slot_field, k=4, sparse=sparse)
    hist = fit(model, data, data, TrainConfig(epochs=2, device="cuda", threads=1,
                                              optimizer=optimizer, bf16=True))
    assert np.isfinite(hist.best_metric)
    assert np.isfinite(predict(model, data, device="cuda")).all()


@pytest.mark.parametrize("kind", [FM, FFM])
@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("held", ["device", "host"])
def test_cuda_graph_steps_train_as_eager_steps(kind: type, bf16: bool, held: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The captured step replays the eager step: same parameters after the same epochs
    (up to the atomic adds' order), with a last partial batch taken eagerly; the captured
    one sums its gradient through row copies (RowSpread), the eager one by plain adds.
    Data too big for the device stays on the host and reaches it in staged runs."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from models import fm_trainer

    if held == "host":  # no room on the device: the data stays on the host, and comes in
        # runs of two batches, so the device's buffers are reused and the last run is short
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 1))
        monkeypatch.setattr(fm_trainer, "STAGED_BATCHES", 2)
    made = []
    placed = fm_trainer._Steps.placed.__func__
    monkeypatch.setattr(fm_trainer._Steps, "placed",
                        classmethod(lambda cls, *a: made.append(placed(cls, *a)) or made[-1]))

    replays, spread = [], []
    replay = fm_trainer._GraphedStep.replay
    monkeypatch.setattr(fm_trainer._GraphedStep, "replay",
                        lambda self, *batch: replays.append(1) or replay(self, *batch))
    sum_rows = RowSpread.sum_rows
    monkeypatch.setattr(RowSpread, "sum_rows",
                        lambda self, *a: spread.append(1) or sum_rows(self, *a))
    data, enc = planted(2100, seed=5)  # 2100 = 8 full batches of 256 and one of 52
    trained = []
    for graphs in (False, True):
        model = kind(enc.n_features, enc.slot_field, k=4, sparse=False, seed=1)
        cfg = TrainConfig(lr=0.1, batch_size=256, epochs=3, device="cuda", bf16=bf16,
                          cuda_graphs=graphs, spread_rows=graphs, restore_best=False)
        hist = fit(model, data, None, cfg)
        trained.append((model.table.detach().cpu(), hist.epochs[-1]["loss"]))
    (eager, eager_loss), (graphed, graphed_loss) = trained
    # the atomic adds' order moves float32 sums by about 1e-7, which bf16 rounding can
    # turn into about 1e-4 (seen on an H200); a lost or repeated step would move every
    # row it touches by up to lr = 0.1 (Adagrad's first step is lr times the sign)
    assert torch.allclose(eager, graphed, atol=1e-3 if bf16 else 1e-5)
    assert graphed_loss == pytest.approx(eager_loss, rel=1e-3 if bf16 else 1e-5)
    assert len(replays) == 3 * 8 - fm_trainer.GRAPH_WARMUP  # every full batch past warm-up
    assert len(spread) == fm_trainer.GRAPH_WARMUP + 1 + 3  # warm-ups, capture, partials
    assert [st.staged is not None for st in made] == [held == "host"] * 2
    assert not torch.equal(graphed, kind(enc.n_features, enc.slot_field, k=4, seed=1).table)
