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

Threads: ``threads=1`` runs the batches in order and is deterministic (the torch
trainer's batches, equal up to float rounding). More threads split the epoch's order
into that many contiguous parts, each stepping its own batches and writing the shared
parameters without locks (Hogwild, as libffm and xLearn do): faster, not reproducible.
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


@njit(cache=True, fastmath=FAST)
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


@njit(cache=True, fastmath=FAST)
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


@njit(cache=True, fastmath=FAST)
def _batch_step(
    table,
    bias,
    accum,
    bias_accum,
    ids,
    w,
    y,
    order,
    lo,
    hi,
    block,
    first,
    k,
    same_block,
    lr,
    l2,
    where,
    touched,
    grad,
    part,
):
    """One Adagrad step on the samples ``order[lo:hi]``; returns their summed loss.

    Gradients go to ``grad``, one row per distinct table row the batch touched
    (``where`` maps a table row to it, -1 for none), so the update costs the rows used."""
    literally(k)
    nbk = part.shape[0] * k
    inv_b = np.float32(1.0 / (hi - lo))
    l2c = np.float32(2.0 * l2 / (hi - lo))
    n_touched = 0
    g_bias = np.float32(0)
    loss = 0.0
    for n in range(lo, hi):
        r = order[n]
        z = bias[0] + _logit(table, ids, w, r, block, first, k, same_block, part)
        loss += max(z, 0.0) - z * y[r] + math.log1p(math.exp(-abs(z)))
        gz = (np.float32(1) / (np.float32(1) + np.exp(-z)) - y[r]) * inv_b
        g_bias += gz
        for s in range(ids.shape[1]):
            i = ids[r, s]
            if i == 0:
                continue
            if where[i] < 0:
                where[i] = n_touched
                touched[n_touched] = i
                for c in range(nbk + 1):
                    grad[n_touched, c] = 0
                n_touched += 1
            t, ws, b = where[i], w[r, s], block[s]
            gw = gz * ws
            for c in range(nbk):
                grad[t, c] += gw * part[b, c] + l2c * table[i, c]
            if same_block:
                for c in range(b * k, b * k + k):
                    grad[t, c] -= gw * ws * table[i, c]
            grad[t, nbk] += gw + l2c * table[i, nbk]
    for t in range(n_touched):
        i = touched[t]
        for c in range(nbk + 1):
            g = grad[t, c]
            a = accum[i, c] + g * g
            accum[i, c] = a
            table[i, c] -= lr * g / (np.sqrt(a) + np.float32(EPS))
        where[i] = -1
    a = bias_accum[0] + g_bias * g_bias
    bias_accum[0] = a
    bias[0] -= lr * g_bias / (np.sqrt(a) + np.float32(EPS))
    return loss


@njit(cache=True, parallel=True, fastmath=FAST)
def _train_epoch(
    table,
    bias,
    accum,
    bias_accum,
    ids,
    w,
    y,
    order,
    block,
    first,
    k,
    same_block,
    batch,
    lr,
    l2,
    where,
    touched,
    grad,
    part,
    part_loss,
):
    """Every batch of ``order``; part p of ``len(part_loss)`` contiguous parts on its own
    scratch (``where[p]``...), the parts in parallel. Returns the summed loss."""
    literally(k)
    n_parts = len(part_loss)
    per = -(-len(order) // (n_parts * batch)) * batch  # whole batches per part
    lr32, l2_32 = np.float32(lr), np.float32(l2)
    for p in prange(n_parts):
        loss = 0.0
        end = min(len(order), (p + 1) * per)
        for lo in range(p * per, end, batch):
            loss += _batch_step(
                table,
                bias,
                accum,
                bias_accum,
                ids,
                w,
                y,
                order,
                lo,
                min(lo + batch, end),
                block,
                first,
                k,
                same_block,
                lr32,
                l2_32,
                where[p],
                touched[p],
                grad[p],
                part[p],
            )
        part_loss[p] = loss
    return part_loss.sum()


@njit(cache=True, fastmath=FAST)
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
    parts of each epoch run in parallel (1: deterministic, see the module docstring)."""

    def __init__(self, model: nn.Module, lr: float, l2: float, threads: int = 1) -> None:
        if not supports(model):
            raise ValueError("the native kernel takes an FM or FFM with a float32 CPU table")
        self.model, self.lr, self.l2 = model, float(lr), float(l2)
        self.threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
        table, _ = _views(model)
        self.accum = np.zeros_like(table)
        self.bias_accum = np.zeros(1, np.float32)
        self.where = np.full((self.threads, len(table)), -1, np.int32)

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
        parts, rows = self.threads, batch * ids.shape[1]
        touched = np.empty((parts, rows), np.int32)
        grad = np.empty((parts, rows, table.shape[1]), np.float32)
        part = np.empty((parts, lay.n_blocks, lay.n_blocks * lay.k), np.float32)
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
                self.lr,
                self.l2,
                self.where,
                touched,
                grad,
                part,
                np.zeros(parts),
            )
        )
