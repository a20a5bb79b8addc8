"""The native FM/FFM kernel (``models.fm_kernel``) against torch and a float64 loop.

One training step and the scores are checked against the torch modules (the same
semantics: batch-mean logistic loss, lazy L2, Adagrad) and against a naive float64 loop
over slot pairs that writes out the gradient by hand; then what the trainer builds on
it: determinism, learning a planted interaction, NaN handling, files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import fm_kernel
from models.ffm import FFM
from models.fm import FM
from models.fm_trainer import (
    TrainConfig,
    binary_metric,
    fit,
    load_model,
    predict,
    save_model,
)
from tests.unit.test_fm_ffm import LAYOUTS, planted, random_batch, randomised, split

torch.set_num_threads(1)
K = 2  # one k for the tests but the next: each k and field count is compiled once
LANE_K = 8  # a k the kernel moves in 16-byte lanes (k % 4 == 0)
N_FEATURES = 12
LR, L2 = 0.1, 0.05


def naive_step(
    table: np.ndarray,
    bias: float,
    ids: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    slot_field: list[int],
    kind: str,
    sums: list | None = None,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Logits, then one Adagrad step, in float64 over every slot pair:
    ``d/dV[i_s, block(t)] = g w_s w_t V[i_t, block(s)]``; returns (table, bias, logits).
    ``sums``: ``[table sums, bias sum]`` to start from, updated in place; zero when not
    given."""
    t = table.astype(np.float64)
    n_blocks = 1 if kind == "fm" else max(slot_field) + 1
    k = (t.shape[1] - 1) // n_blocks
    blk = [0 if kind == "fm" else f for f in slot_field]
    grad, g_bias, logits = np.zeros_like(t), 0.0, []
    b = len(ids)
    for r in range(b):
        z = bias
        for s in range(ids.shape[1]):
            z += w[r, s] * t[ids[r, s], n_blocks * k]
            for u in range(s + 1, ids.shape[1]):
                if kind == "ffm" and slot_field[s] == slot_field[u]:
                    continue
                vs = t[ids[r, s], blk[u] * k : (blk[u] + 1) * k]
                vu = t[ids[r, u], blk[s] * k : (blk[s] + 1) * k]
                z += w[r, s] * w[r, u] * vs @ vu
        logits.append(z)
        g = (1 / (1 + np.exp(-z)) - y[r]) / b
        g_bias += g
        for s in range(ids.shape[1]):
            i = ids[r, s]
            grad[i, n_blocks * k] += g * w[r, s]
            grad[i] += 2 * L2 / b * t[i]
            for u in range(ids.shape[1]):
                if u == s or (kind == "ffm" and slot_field[s] == slot_field[u]):
                    continue
                grad[i, blk[u] * k : (blk[u] + 1) * k] += (
                    g * w[r, s] * w[r, u] * t[ids[r, u], blk[s] * k : (blk[s] + 1) * k]
                )

    sums = sums if sums is not None else [np.zeros_like(t), 0.0]
    sums[0] += grad * grad
    sums[1] += g_bias * g_bias
    table_sum, bias_sum = sums
    new_t = t - LR * grad / (np.sqrt(table_sum) + 1e-10)
    new_bias = bias - LR * g_bias / (np.sqrt(bias_sum) + 1e-10)
    return new_t, float(new_bias), np.array(logits)


def random_model(cls: type, slot_field: list[int], k: int = K) -> torch.nn.Module:
    """A float32 model with non-trivial weights, as the kernel trains."""
    return randomised(cls(N_FEATURES, slot_field, k=k, seed=0)).float()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cls", [FM, FFM])
def test_one_step_matches_torch_and_a_float64_loop(cls: type, layout: str) -> None:
    slot_field = LAYOUTS[layout]
    ids_t, w_t = random_batch(slot_field, N_FEATURES, b=8, seed=2)
    ids, w = ids_t.numpy().astype(np.int32), w_t.numpy().astype(np.float32)
    y = (np.arange(8) % 3 == 0).astype(np.float32)
    native, torch_model = random_model(cls, slot_field), random_model(cls, slot_field)
    want_table, want_bias, want_logits = naive_step(
        native.table.detach().numpy(), native.bias.item(), ids, w, y, slot_field, cls.kind
    )

    logits = fm_kernel.predict_logits(native, ids, w)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch_logits = torch_model(ids_t, w_t.float()).numpy()
    np.testing.assert_allclose(logits, torch_logits, rtol=1e-5, atol=1e-6)

    kernel = fm_kernel.AdagradKernel(native, LR, L2, threads=1)
    loss = kernel.epoch(ids, w, y, np.arange(8), batch=8)
    opt = torch.optim.Adagrad(torch_model.parameters(), lr=LR)
    torch_loss = F.binary_cross_entropy_with_logits(
        torch_model(ids_t, w_t.float(), l2=L2), torch.from_numpy(y)
    )
    torch_loss.backward()
    opt.step()
    assert loss / 8 == pytest.approx(torch_loss.item(), rel=1e-5)
    table = native.table.detach().numpy()
    np.testing.assert_allclose(table, want_table, atol=2e-5)
    np.testing.assert_allclose(table, torch_model.table.detach().numpy(), atol=2e-6)
    assert native.bias.item() == pytest.approx(want_bias, abs=1e-6)
    assert not table[0].any()  # padding row untouched


@pytest.mark.parametrize("slot_field", [[0, 1, 1, 2], LAYOUTS["multi-valued fields"]])
def test_a_k_moved_in_lanes_matches_a_float64_loop(slot_field: list[int]) -> None:
    """k a multiple of 4 takes the FFM's 16-byte-lane transpose: same step as the loop,
    with three fields and with four (the field count is a compile-time constant: each
    count has kernels of its own, and they run side by side in one process)."""
    ids_t, w_t = random_batch(slot_field, N_FEATURES, b=8, seed=5)
    ids, w = ids_t.numpy().astype(np.int32), w_t.numpy().astype(np.float32)
    y = (np.arange(8) % 2).astype(np.float32)
    native = random_model(FFM, slot_field, k=LANE_K)
    want_table, want_bias, want_logits = naive_step(
        native.table.detach().numpy(), native.bias.item(), ids, w, y, slot_field, "ffm"
    )
    np.testing.assert_allclose(fm_kernel.predict_logits(native, ids, w), want_logits,
                               rtol=1e-5, atol=1e-5)
    fm_kernel.AdagradKernel(native, LR, L2).epoch(ids, w, y, np.arange(8), batch=8)
    np.testing.assert_allclose(native.table.detach().numpy(), want_table, atol=2e-5)
    assert native.bias.item() == pytest.approx(want_bias, abs=1e-6)


@pytest.mark.parametrize("cls", [FM, FFM])
def test_calls_after_the_first_go_straight_to_compiled_code(cls: type) -> None:
    """An epoch or a scoring call after the first costs microseconds here: with the
    model's shape passed as ``literally`` arguments numba type-inferred every call
    again (25-30 ms an epoch, 0.6 s a scoring), 40 of each took about 25 s. The bound
    is 5 s, far from both, so a loaded machine cannot fail it."""
    slot_field = LAYOUTS["multi-valued fields"]
    ids_t, w_t = random_batch(slot_field, N_FEATURES, b=8, seed=6)
    ids, w = ids_t.numpy().astype(np.int32), w_t.numpy().astype(np.float32)
    y = (np.arange(8) % 2).astype(np.float32)
    model = random_model(cls, slot_field)
    kernel = fm_kernel.AdagradKernel(model, LR, L2)
    kernel.epoch(ids, w, y, np.arange(8), batch=4)  # compiles, or loads the cache
    fm_kernel.predict_logits(model, ids, w)
    started = time.perf_counter()
    for _ in range(40):
        kernel.epoch(ids, w, y, np.arange(8), batch=4)
        fm_kernel.predict_logits(model, ids, w)
    assert time.perf_counter() - started < 5.0


def test_batches_follow_the_order_given() -> None:
    """Two batches of 4 in a given order equal two torch steps on those batches."""
    slot_field = LAYOUTS["multi-valued fields"]
    ids_t, w_t = random_batch(slot_field, N_FEATURES, b=8, seed=3)
    y = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.float32)
    order = np.array([5, 1, 7, 0, 2, 6, 3, 4])
    native, torch_model = random_model(FFM, slot_field), random_model(FFM, slot_field)
    fm_kernel.AdagradKernel(native, LR, L2).epoch(
        ids_t.numpy(), w_t.numpy(), y.numpy(), order, batch=4
    )
    opt = torch.optim.Adagrad(torch_model.parameters(), lr=LR)
    for part in (order[:4], order[4:]):
        opt.zero_grad()
        z = torch_model(ids_t[part], w_t[part].float(), l2=L2)
        F.binary_cross_entropy_with_logits(z, y[part]).backward()
        opt.step()
    np.testing.assert_allclose(
        native.table.detach().numpy(), torch_model.table.detach().numpy(), atol=5e-6
    )


def test_sample_updates_match_a_float64_loop_of_one_sample_steps() -> None:
    """``update="sample"``: each sample an Adagrad step of its own, in the order given,
    the sums carried from one to the next (distinct ids per sample, as encoders give)."""
    slot_field = LAYOUTS["multi-valued fields"]
    rng = np.random.default_rng(4)
    ids = np.stack([rng.permutation(np.arange(1, N_FEATURES))[: len(slot_field)]
                    for _ in range(6)]).astype(np.int32)
    _, w_t = random_batch(slot_field, N_FEATURES, b=6, seed=4)
    w = w_t.numpy().astype(np.float32)
    ids[w == 0] = 0
    y = np.array([1, 0, 0, 1, 1, 0], np.float32)
    order = np.array([3, 0, 5, 1, 4, 2])
    for cls in (FM, FFM):
        native = random_model(cls, slot_field)
        table, bias = native.table.detach().numpy().astype(np.float64), native.bias.item()
        sums: list = [np.zeros_like(table), 0.0]
        for r in order:
            table, bias, _ = naive_step(table, bias, ids[r : r + 1], w[r : r + 1], y[r : r + 1],
                                        slot_field, cls.kind, sums)
        kernel = fm_kernel.AdagradKernel(native, LR, L2, update="sample")
        kernel.epoch(ids, w, y, order, batch=4)  # the batch size does not matter here
        np.testing.assert_allclose(native.table.detach().numpy(), table, atol=2e-5)
        assert native.bias.item() == pytest.approx(bias, abs=1e-5)
        np.testing.assert_allclose(kernel.accum, sums[0], rtol=1e-4, atol=1e-7)


def native_cfg(**over: object) -> TrainConfig:
    base = {
        "lr": 0.1,
        "l2": 1e-4,
        "batch_size": 128,
        "epochs": 6,
        "patience": 2,
        "threads": 1,
        "backend": "native",
    }
    return TrainConfig(**{**base, **over})  # type: ignore[arg-type]


@pytest.mark.parametrize("update", ["batch", "sample"])
@pytest.mark.parametrize("cls", [FM, FFM])
def test_one_thread_is_deterministic(cls: type, update: str) -> None:
    data, enc = planted(1500, seed=2)

    def run(seed: int) -> torch.Tensor:
        model = cls(enc.n_features, enc.slot_field, k=K, seed=3)
        fit(model, data, None, native_cfg(epochs=2, seed=seed, native_update=update))
        return model.table.detach().clone()

    first = run(7)
    torch.testing.assert_close(run(7), first, rtol=0, atol=0)
    assert not torch.equal(run(8), first)


@pytest.mark.parametrize("update", ["batch", "sample"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cls", [FM, FFM])
def test_native_training_learns_a_planted_interaction(
    cls: type, threads: int, update: str, caplog: pytest.LogCaptureFixture
) -> None:
    data, enc = planted(6000, seed=0)
    train, valid = split(data, 5000)
    model = cls(enc.n_features, enc.slot_field, k=K, seed=0)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        hist = fit(model, train, valid, native_cfg(native_threads=threads,
                                                   native_update=update))
    assert "native backend does not apply" not in caplog.text
    auc = binary_metric("auc", valid.labels, predict(model, valid))  # torch's scores
    assert auc > 0.8
    assert auc == pytest.approx(hist.best_metric, abs=1e-4)  # native scores, best restored
    assert hist.train_samples == 5000 * len(hist.epochs)


def test_torch_trains_where_the_kernel_does_not_apply(caplog: pytest.LogCaptureFixture) -> None:
    data, enc = planted(500, seed=1)
    model = FFM(enc.n_features, enc.slot_field, k=K)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        fit(model, data, None, native_cfg(epochs=1, optimizer="adam"))
    assert "native backend does not apply (device cpu, 1 ranks, adam)" in caplog.text


@pytest.mark.parametrize("cls", [FM, FFM])
def test_a_nan_loss_stops_native_training_as_it_stops_torch(cls: type) -> None:
    data, enc = planted(800, seed=1)
    model = cls(enc.n_features, enc.slot_field, k=K)
    with pytest.raises(
        FloatingPointError,
        match=rf"^{cls.__name__}: loss is nan at epoch 0; "
        "lower lr or check the inputs",
    ):
        fit(model, data, None, native_cfg(lr=1e30, epochs=3))
    evaluations = []

    def poison_after_two(m: torch.nn.Module) -> float:  # inf weights from epoch 2 on
        evaluations.append(1)
        if len(evaluations) == 2:
            with torch.no_grad():
                m.table.fill_(float("inf"))
        return 0.5

    model = cls(enc.n_features, enc.slot_field, k=K)
    with pytest.raises(FloatingPointError, match=rf"^{cls.__name__}: loss is nan at epoch 2;"):
        fit(model, data, None, native_cfg(epochs=5, patience=5), evaluate=poison_after_two)


def test_sample_steps_take_their_own_lr() -> None:
    """``native_sample_lr`` drives per-sample steps only; batch steps keep ``lr``."""
    data, enc = planted(800, seed=1)
    cfg = {"lr": 1e-3, "native_sample_lr": 1e30, "epochs": 1}
    fit(FFM(enc.n_features, enc.slot_field, k=K), data, None, native_cfg(**cfg))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        fit(FFM(enc.n_features, enc.slot_field, k=K), data, None,
            native_cfg(**cfg, native_update="sample"))


def test_natively_trained_models_save_and_load(tmp_path: Path) -> None:
    data, enc = planted(500, seed=3)
    for cls in (FM, FFM):
        model = cls(enc.n_features, enc.slot_field, k=K, seed=1)
        fit(model, data, None, native_cfg(epochs=1))
        assert save_model(model, tmp_path / cls.kind)
        back, _ = load_model(tmp_path / cls.kind)
        scores = predict(back, data, backend="native")
        np.testing.assert_array_equal(scores, predict(model, data, backend="native"))
        np.testing.assert_allclose(scores, predict(back, data), atol=1e-6)


def test_kernel_refuses_what_it_cannot_train() -> None:
    model = FFM(N_FEATURES, [0, 1], k=K).double()
    assert not fm_kernel.supports(model)
    with pytest.raises(ValueError, match="float32 CPU table"):
        fm_kernel.AdagradKernel(model, LR, L2)
    with pytest.raises(ValueError, match="3 slots for an FFM built for 2"):
        fm_kernel.predict_logits(
            FFM(N_FEATURES, [0, 1], k=K), np.ones((2, 3), np.int32), np.ones((2, 3), np.float32)
        )
