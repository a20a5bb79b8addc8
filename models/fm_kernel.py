"""Native CPU kernels (numba) that train and score the FM and FFM modules' parameters.

Why: a torch step is a dozen tensor operations per batch, each dispatched from Python,
so a small FM/FFM spends most of its time in overhead (about 155k samples/s on one
thread against 2.5M for xLearn's C++). Here one compiled loop does a whole epoch:
forward, hand-written backward and Adagrad, float32, no autograd.

Same model and loss as ``models.fm``/``models.ffm`` with ``models.fm_trainer``: mean
binary cross-entropy over each batch, lazy L2 (``2 * l2 / B * row`` added to the gradient
of every gathered row, as ``FFM.forward``), torch's Adagrad (``eps=1e-10``, no decay) on
the table and the bias. The kernel works in place on the module's own tensors (numpy
views), so predict, early stopping's snapshots and ``save_model`` see its updates.

One kernel serves both models. Each slot s writes to a latent block ``b(s)`` and the
per-field sums ``A[g, h] = sum_{s in field g} w_s V[i_s, h]`` give slot s's partner
towards block h as ``A[h, b(s)]``; then ``pair = 0.5 * sum_s w_s <V[i_s], partner(s)>``
and ``d pair / d V[i_s, h] = w_s partner(s, h)``. An FFM has a block per field and
leaves out the own-field block (no pairs inside a field); an FM has one block shared by
every slot, and the own block minus the slot itself is exactly ``sum_{t != s} w_t v_t``.

Updates: ``"batch"`` (above, the torch trainer's steps) or ``"sample"``: an Adagrad step
per sample, as libffm and xLearn take, with no gather/scatter buffers (a batch of one).

Threads: ``threads=1`` runs the batches in order and is deterministic (the torch
trainer's batches, equal up to float rounding). More threads split the epoch's order
into that many contiguous parts, each stepping its own batches and writing the shared
parameters without locks (Hogwild, as libffm and xLearn do): faster, not reproducible.

Compiled with ``error_model="numpy"``: numba's default (Python's) checks every float
division for zero, which kept the Adagrad loop scalar; no divisor here can be zero.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import literally, njit, prange
from torch import nn

# fast-math without nnan/ninf: a NaN or infinite loss must reach the trainer's check
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
EPS = 1e-10  # torch.optim.Adagrad's default


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _partners(table, ids, w, r, block, first, k, same_block, part):
    """Fill ``part[b]``, the partner vector of a slot of block b in sample ``r``:
    ``part[b, h*k:(h+1)*k] = A[h, b]``, its own block zero (FFM) or still holding the slot
    itself (FM: the callers take it out). Returns the linear term. ``k`` is a compile-time
    constant (``literally``), so a k-block is one vector operation; the first slot of each
    block assigns instead of adding, so nothing is zeroed per sample."""
    literally(k)
    n_blocks = part.shape[0]
    lin = np.float32(0)
    for s in range(ids.shape[1]):
        i, ws, g = ids[r, s], w[r, s], block[s]
        if first[s]:  # padding included: row 0 is zero
            for h in range(n_blocks):
                for j in range(k):
                    part[h, g * k + j] = ws * table[i, h * k + j]
        elif i != 0:
            for h in range(n_blocks):
                for j in range(k):
                    part[h, g * k + j] += ws * table[i, h * k + j]
        lin += ws * table[i, n_blocks * k]
    if not same_block:
        for b in range(n_blocks):
            for j in range(k):
                part[b, b * k + j] = 0
    return lin


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _logit(table, ids, w, r, block, first, k, same_block, part):
    """Linear plus pairwise terms of sample ``r`` (no bias); leaves its partner vectors
    in ``part`` for the backward pass."""
    literally(k)
    lin = _partners(table, ids, w, r, block, first, k, same_block, part)
    pair = np.float32(0)
    for s in range(ids.shape[1]):
        i, ws, b = ids[r, s], w[r, s], block[s]
        if i == 0:
            continue
        dot = np.float32(0)
        for c in range(part.shape[1]):
            dot += table[i, c] * part[b, c]
        if same_block:  # an FM slot is no partner of itself
            for c in range(b * k, b * k + k):
                dot -= ws * table[i, c] * table[i, c]
        pair += ws * dot
    return lin + np.float32(0.5) * pair


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _loss_grad(z, y):
    """Logistic loss of logit ``z`` against label ``y`` (float64) and its derivative."""
    loss = max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
    return loss, np.float32(1) / (np.float32(1) + np.exp(-z)) - y


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _slot_grad(table, i, ws, gz, part, b, l2c, k, same_block, g):
    """Into ``g[0]``: the gradient of row ``i`` from a slot of block ``b`` and weight
    ``ws`` (its partner vector ``part[b]``) when the loss has slope ``gz`` in the logit,
    plus lazy L2. Rows are indexed, never sliced: a slice is a reference-counted view."""
    literally(k)
    n = part.shape[1]
    gw = gz * ws
    for c in range(n):
        g[0, c] = gw * part[b, c] + l2c * table[i, c]
    if same_block:  # an FM slot is no partner of itself
        for c in range(b * k, b * k + k):
            g[0, c] -= gw * ws * table[i, c]
    g[0, n] = gw + l2c * table[i, n]


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _adagrad(table, accum, i, grad, t, lr):
    """torch's Adagrad step (no decay) on row ``i`` with gradient ``grad[t]``."""
    for c in range(grad.shape[1]):
        a = accum[i, c] + grad[t, c] * grad[t, c]
        accum[i, c] = a
        table[i, c] -= lr * grad[t, c] / (np.sqrt(a) + np.float32(EPS))


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _bias_step(bias, bias_accum, g, lr):
    a = bias_accum[0] + g * g
    bias_accum[0] = a
    bias[0] -= lr * g / (np.sqrt(a) + np.float32(EPS))


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _sample_step(table, bias, accum, bias_accum, ids, w, y, r, block, first, k, same_block,
                 lr, l2c, part, g):
    """One Adagrad step on sample ``r`` alone (a batch of one, the mode of libffm and
    xLearn), each row updated as soon as its gradient is known: no gather, no scatter.
    Returns its loss. A row in two slots of the sample is updated twice."""
    literally(k)
    z = bias[0] + _logit(table, ids, w, r, block, first, k, same_block, part)
    loss, gz = _loss_grad(z, y[r])
    for s in range(ids.shape[1]):
        i, b = ids[r, s], block[s]
        if i != 0:
            _slot_grad(table, i, w[r, s], gz, part, b, l2c, k, same_block, g)
            _adagrad(table, accum, i, g, 0, lr)
    _bias_step(bias, bias_accum, gz, lr)
    return loss


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _batch_step(table, bias, accum, bias_accum, ids, w, y, order, lo, hi, block, first, k,
                same_block, lr, l2, where, touched, grad, part, g):
    """One Adagrad step on the samples ``order[lo:hi]``; returns their summed loss.

    Gradients go to ``grad``, one row per distinct table row the batch touched
    (``where`` maps a table row to it, -1 for none), so the update costs the rows used."""
    literally(k)
    inv_b = np.float32(1.0 / (hi - lo))
    l2c = np.float32(2.0 * l2 / (hi - lo))
    n_touched = 0
    g_bias = np.float32(0)
    loss = 0.0
    for n in range(lo, hi):
        r = order[n]
        z = bias[0] + _logit(table, ids, w, r, block, first, k, same_block, part)
        sample_loss, gz = _loss_grad(z, y[r])
        loss += sample_loss
        gz *= inv_b
        g_bias += gz
        for s in range(ids.shape[1]):
            i = ids[r, s]
            if i == 0:
                continue
            if where[i] < 0:
                where[i] = n_touched
                touched[n_touched] = i
                for c in range(grad.shape[1]):
                    grad[n_touched, c] = 0
                n_touched += 1
            _slot_grad(table, i, w[r, s], gz, part, block[s], l2c, k, same_block, g)
            t = where[i]
            for c in range(g.shape[1]):
                grad[t, c] += g[0, c]
    for t in range(n_touched):
        i = touched[t]
        _adagrad(table, accum, i, grad, t, lr)
        where[i] = -1
    _bias_step(bias, bias_accum, g_bias, lr)
    return loss


@njit(cache=True, parallel=True, fastmath=FAST, error_model="numpy")
def _train_epoch(table, bias, accum, bias_accum, ids, w, y, order, block, first, k,
                 same_block, batch, per_sample, lr, l2, where, touched, grad, part, g,
                 part_loss):
    """Every sample of ``order``, in batches of ``batch`` or one by one (``per_sample``);
    part p of ``len(part_loss)`` contiguous parts on its own scratch (``where[p]``...),
    the parts in parallel. Returns the summed loss."""
    literally(k)
    n_parts = len(part_loss)
    step = 1 if per_sample else batch
    per = -(-len(order) // (n_parts * step)) * step  # whole batches per part
    lr32, l2_32, l2c = np.float32(lr), np.float32(l2), np.float32(2.0 * l2)
    for p in prange(n_parts):
        loss = 0.0
        end = min(len(order), (p + 1) * per)
        if per_sample:
            for n in range(p * per, end):
                loss += _sample_step(table, bias, accum, bias_accum, ids, w, y, order[n],
                                     block, first, k, same_block, lr32, l2c, part[p], g[p])
        else:
            for lo in range(p * per, end, batch):
                loss += _batch_step(table, bias, accum, bias_accum, ids, w, y, order, lo,
                                    min(lo + batch, end), block, first, k, same_block, lr32,
                                    l2_32, where[p], touched[p], grad[p], part[p], g[p])
        part_loss[p] = loss
    return part_loss.sum()


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _logits(table, bias, ids, w, block, first, k, same_block, n_blocks):
    """Logits of every sample (serial: safe to call from any thread)."""
    literally(k)
    out = np.empty(len(ids), np.float32)
    part = np.empty((n_blocks, n_blocks * k), np.float32)
    for r in range(len(ids)):
        out[r] = bias[0] + _logit(table, ids, w, r, block, first, k, same_block, part)
    return out


def supports(model: nn.Module) -> bool:
    """Whether the kernels can run ``model``: an FM or FFM with a float32 CPU table."""
    table = getattr(model, "table", None)
    return (
        getattr(model, "kind", None) in ("fm", "ffm")
        and table is not None
        and table.dtype == torch.float32
        and table.device.type == "cpu"
    )


class Layout(NamedTuple):
    """How a model's slots map onto its latent blocks (see the module docstring)."""

    block: np.ndarray  # [S] each slot's block: its field (FFM), 0 (FM)
    first: np.ndarray  # [S] whether a slot is the first of its block's run of slots
    n_blocks: int
    k: int
    same_block: bool  # FM: pairs within a block count; FFM: they do not


def _layout(model: nn.Module, n_slots: int) -> Layout:
    if model.kind == "fm":
        block = np.zeros(n_slots, np.int64)
    else:
        block = model.slot_field.cpu().numpy().astype(np.int64)
        if len(block) != n_slots:
            raise ValueError(f"{n_slots} slots for an FFM built for {len(block)}")
    first = np.ones(n_slots, np.bool_)
    first[1:] = block[1:] != block[:-1]
    return Layout(block, first, int(block.max()) + 1, model.k, model.kind == "fm")


def _inputs(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids and float32 weights, C-ordered: one compiled signature for every call."""
    return (np.require(ids, np.int32, ["C"]), np.require(weights, np.float32, ["C"]))


def _views(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The module's table and bias as numpy arrays sharing their memory."""
    return model.table.detach().numpy(), model.bias.detach().view(1).numpy()


def predict_logits(model: nn.Module, ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Logits of ``model`` (an FM or FFM) on ``ids``/``weights`` [N, S]; float32 [N]."""
    ids, weights = _inputs(ids, weights)
    lay = _layout(model, ids.shape[1])
    table, bias = _views(model)
    return _logits(
        table, bias, ids, weights, lay.block, lay.first, lay.k, lay.same_block, lay.n_blocks
    )


class AdagradKernel:
    """Adagrad training of an FM or FFM module's parameters in place, an epoch per call.

    Holds the Adagrad sums (zero at first, as torch's) and per-part scratch; ``threads``
    parts of each epoch run in parallel (1: deterministic, see the module docstring).
    ``update="batch"`` steps on each batch's mean loss, as the torch trainer does;
    ``"sample"`` steps on every sample alone (the batch size then only names the epoch's
    order), which wants its own learning rate."""

    def __init__(self, model: nn.Module, lr: float, l2: float, threads: int = 1,
                 update: str = "batch") -> None:
        if not supports(model):
            raise ValueError("the native kernel takes an FM or FFM with a float32 CPU table")
        if update not in ("batch", "sample"):
            raise ValueError(f"update is 'batch' or 'sample', not {update!r}")
        self.model, self.lr, self.l2 = model, float(lr), float(l2)
        self.per_sample = update == "sample"
        self.threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        table, _ = _views(model)
        self.accum = np.zeros_like(table)
        self.bias_accum = np.zeros(1, np.float32)
        self.where = np.full((self.threads, 0 if self.per_sample else len(table)), -1, np.int32)

    def epoch(
        self,
        ids: np.ndarray,
        weights: np.ndarray,
        labels: np.ndarray,
        order: np.ndarray,
        batch: int,
    ) -> float:
        """Train on ``order`` (sample indices, in batches of ``batch``); the summed loss."""
        ids, weights = _inputs(ids, weights)
        lay = _layout(self.model, ids.shape[1])
        table, bias = _views(self.model)
        parts, width = self.threads, table.shape[1]
        rows = 0 if self.per_sample else batch * ids.shape[1]  # batch mode's gather buffer
        numba.set_num_threads(parts)
        return float(
            _train_epoch(
                table,
                bias,
                self.accum,
                self.bias_accum,
                ids,
                weights,
                np.require(labels, np.float32, ["C"]),
                np.require(order, np.int64, ["C"]),
                lay.block,
                lay.first,
                lay.k,
                lay.same_block,
                batch,
                self.per_sample,
                self.lr,
                self.l2,
                self.where,
                np.empty((parts, rows), np.int32),
                np.empty((parts, rows, width), np.float32),
                np.empty((parts, lay.n_blocks, lay.n_blocks * lay.k), np.float32),
                np.empty((parts, 1, width), np.float32),
                np.zeros(parts),
            )
        )
