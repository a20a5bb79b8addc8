"""Native CPU kernels (numba) that train and score the FM and FFM modules' parameters.

Why: a torch step is a dozen tensor operations per batch, each dispatched from Python,
so a small FM/FFM spends most of its time in overhead (about 155k samples/s on one
thread against 2.5M for xLearn's C++). Here one compiled loop does a whole epoch:
forward, hand-written backward and Adagrad, float32, no autograd.

Same model and loss as ``models.fm``/``models.ffm`` with ``models.fm_trainer``: mean
binary cross-entropy over each batch, lazy L2 (``2 * l2 / B * row`` added to the gradient
of every gathered row, as ``FFM.forward``), torch's Adagrad (``eps=1e-10``, no decay) on
the table and the bias, its denominator ``sqrt(s) + eps`` taken as ``sqrt(s + eps^2)``
(``_scaled``: the two differ by about ``eps / sqrt(s)``, relative, more than a float32
rounding only while a sum ``s`` is under about 3e-6). The kernel works in place on the
module's own tensors (numpy views), so predict, early stopping's snapshots and
``save_model`` see its updates.

One kernel serves both models. Each slot s writes to a latent block ``b(s)`` and the
per-field sums ``A[g, h] = sum_{s in field g} w_s V[i_s, h]`` give slot s's partner
towards block h as ``A[h, b(s)]``; then ``pair = 0.5 * sum_s w_s <V[i_s], partner(s)>``
and ``d pair / d V[i_s, h] = w_s partner(s, h)``. An FFM has a block per field and
leaves out the own-field block (no pairs inside a field); an FM has one block shared by
every slot, and the own block minus the slot itself is exactly ``sum_{t != s} w_t v_t``.
The FFM's pair term is then ``sum_{g < h} <A[g, h], A[h, g]>``, one dot of the sums with
their block transpose.

Where the time goes (perf on the ML-100K bench set, one thread): the shuffled samples'
ids are cache misses, so each chunk of samples is first gathered into compact lists
while the next chunk is prefetched; the field sums are whole contiguous rows; the
transpose into partner vectors is the one strided step (16-byte lanes when k % 4 == 0).

Updates: ``"batch"`` (above, the torch trainer's steps) or ``"sample"``: an Adagrad step
per sample, as libffm and xLearn take, with no gather/scatter buffers (a batch of one).

Threads: ``threads=1`` runs the batches in order and is deterministic (the torch
trainer's batches, equal up to float rounding and ``_scaled``'s form of the step). More
threads split the epoch's order into that many contiguous parts, each stepping its own
batches and writing the shared parameters without locks (Hogwild, as libffm and xLearn
do): faster, not reproducible.

Compiled with ``error_model="numpy"``: numba's default (Python's) checks every float
division for zero, which kept the Adagrad loop scalar; no divisor here can be zero.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import literally, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic
from torch import nn

# fast-math without nnan/ninf: a NaN or infinite loss must reach the trainer's check
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}
EPS = 1e-10  # torch.optim.Adagrad's default
EPS2 = np.float32(EPS * EPS)
CHUNK = 256  # samples gathered at a time for scoring


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Ask the CPU to bring ``arr[row, col]`` (a 2-D array) into cache; no other effect."""

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        inds = [context.cast(builder, v, t, types.intp)
                for v, t in zip(args[1:], sig.args[1:], strict=True)]
        ptr = cgutils.get_item_pointer2(
            context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
            inds=inds, wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch")
        # read, keep in every cache level, data
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, row, col), codegen


@njit(cache=True, fastmath=FAST, error_model="numpy", inline="always")
def _prefetch_sample(ids, w, order, n):
    """Prefetch the ids and weights of sample ``order[n]``, if there is one. The steps
    prefetch the next chunk's samples one per sample they compute, so that chunk's gather
    finds them in cache: the shuffled samples lie scattered over ``ids`` and ``w``."""
    if n < len(order):
        r, last = order[n], ids.shape[1] - 1
        _prefetch(ids, r, 0)
        _prefetch(ids, r, last)
        _prefetch(w, r, 0)
        _prefetch(w, r, last)


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _gather(ids, w, y, order, lo, hi, block, cid, cw, cblk, nact, cy):
    """Copy samples ``order[lo:hi]`` into the chunk ``cid``/``cw``/``cblk``: the row, weight
    and block of each non-padding slot, ``nact`` of them per sample, and labels ``cy``."""
    for n in range(lo, hi):
        r, q, m = order[n], n - lo, 0
        for s in range(ids.shape[1]):  # no branch: a mispredicted one stalls the loads
            i = ids[r, s]
            cid[q, m], cw[q, m], cblk[q, m] = i, w[r, s], block[s]
            m += i != 0
        nact[q] = m
        cy[q] = y[r]


@njit(cache=True, fastmath=FAST, error_model="numpy", inline="always")
def _field_sums(table, cid, cw, cblk, nact, q, sums, width):
    """``sums[b] = sum_{s in block b} w_s V[i_s]`` over chunk sample ``q``'s slots (the
    ``width`` latent columns); returns the linear term. The slots come in block order
    (``models.ffm.FFM`` requires its fields in order). Rows are added whole, one
    contiguous loop each; a block's first slot assigns and a block without slots is
    zeroed, so no row is read back before it is written."""
    a, n, lin = 0, nact[q], np.float32(0)
    for b in range(sums.shape[0]):
        if a < n and cblk[q, a] == b:
            i, ws = cid[q, a], cw[q, a]
            for c in range(width):
                sums[b, c] = ws * table[i, c]
            lin += ws * table[i, width]
            a += 1
            while a < n and cblk[q, a] == b:
                i, ws = cid[q, a], cw[q, a]
                for c in range(width):
                    sums[b, c] += ws * table[i, c]
                lin += ws * table[i, width]
                a += 1
        else:
            for c in range(width):
                sums[b, c] = 0
    return lin


@njit(cache=True, fastmath=FAST, error_model="numpy", inline="always")
def _transpose(sums, part, k, n_blocks):
    """``part[b, h*k:(h+1)*k] = sums[h, b*k:(b+1)*k]``, zero where ``h == b``. Reads
    the sums row by row and zeroes the diagonal after: a test per block made it a
    tenth slower. ``n_blocks`` is a compile-time constant, so the loops unroll into
    fixed moves (the FFM batch step 1.09x as fast as with the blocks counted at run
    time, measured interleaved)."""
    for h in range(n_blocks):
        for b in range(n_blocks):
            for j in range(k):
                part[b, h * k + j] = sums[h, b * k + j]
    for b in range(n_blocks):
        for j in range(k):
            part[b, b * k + j] = 0


@njit(cache=True, fastmath=FAST, error_model="numpy", inline="always")
def _logit(table, cid, cw, cblk, nact, q, k, same_block, n_blocks, sums, part, flat_sums,
           flat_part):
    """Linear plus pairwise terms of chunk sample ``q`` (no bias). Leaves its partner
    vectors in ``part`` for the backward pass: ``part[b, h*k:(h+1)*k] = A[h, b]`` with
    ``A[h, b] = sums[h, b*k:(b+1)*k]``, the own block zero (FFM), or the sum ``S`` of the
    FM's one block (the callers take each slot out of it). ``k``, ``same_block`` and
    ``n_blocks`` are compile-time constants (``literally``): a k-block is one unrolled
    run, an FM's rows are k wide, and the transpose is fixed moves."""
    width = k if same_block else sums.shape[1]
    lin = _field_sums(table, cid, cw, cblk, nact, q, sums, width)
    pair = np.float32(0)
    if same_block:  # FM: 0.5 * (<S, S> - sum_s w_s^2 <v_s, v_s>)
        for a in range(nact[q]):
            i, ws = cid[q, a], cw[q, a]
            for c in range(width):
                pair -= ws * ws * table[i, c] * table[i, c]
        for c in range(width):
            part[0, c] = sums[0, c]
            pair += sums[0, c] * sums[0, c]
        return lin + np.float32(0.5) * pair
    if k % 4 == 0:  # FFM: part[b] is column b of the sums, moved in 16-byte lanes
        _transpose(sums.view(np.complex128), part.view(np.complex128), k // 4, n_blocks)
    else:
        _transpose(sums, part, k, n_blocks)
    for c in range(len(flat_sums)):  # sum_{b != h} <A[b, h], A[h, b]> = 2 * pair
        pair += flat_sums[c] * flat_part[c]  # one long loop (flat views): one reduction
    return lin + np.float32(0.5) * pair


@njit(cache=True, fastmath=FAST, error_model="numpy", inline="always")
def _loss_grad(z, y):
    """Logistic loss of logit ``z`` against label ``y`` (float64) and its derivative."""
    loss = max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
    return loss, np.float32(1) / (np.float32(1) + np.exp(-z)) - y


@njit(cache=True, fastmath=FAST, error_model="numpy", inline="always")
def _scaled(g, s):
    """Adagrad's ``g / (sqrt(s) + eps)`` as ``g / sqrt(s + eps^2)``: the two differ by
    about ``eps / sqrt(s)``, relative (1e-4 at ``s = 1e-12``, under a float32 rounding
    from ``s`` = 3e-6 up), and this form lets LLVM take a reciprocal square root
    estimate and a Newton step for the square root and the division (the FFM batch step
    1.10x as fast, measured interleaved)."""
    return g / np.sqrt(s + EPS2)


@njit(cache=True, fastmath=FAST, error_model="numpy", inline="always")
def _bias_step(bias, bias_accum, g, lr):
    a = bias_accum[0] + g * g
    bias_accum[0] = a
    bias[0] -= lr * _scaled(g, a)


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _sample_steps(table, bias, accum, bias_accum, cid, cw, cblk, nact, y, k, same_block,
                  n_blocks, lr, l2c, sums, part, ids, w, order, ahead):
    """An Adagrad step on each chunk sample alone (a batch of one, the mode of libffm and
    xLearn), each row updated as soon as its gradient is known: no gather, no scatter.
    Returns their summed loss. A row in two slots of a sample is updated twice.

    Row ``i`` of a slot of block ``b`` and weight ``w`` gets ``gz w part[b] + l2c V_i``,
    less ``gz w^2 V_i`` in an FM, whose one block is the slot's own (no self-pair); the
    own block of an FFM slot has partner zero."""
    literally(k)
    literally(same_block)
    literally(n_blocks)
    width = k if same_block else part.shape[1]
    flat_sums, flat_part = sums.reshape(sums.size), part.reshape(part.size)
    loss = 0.0
    for q in range(len(y)):
        _prefetch_sample(ids, w, order, ahead + q)
        z = bias[0] + _logit(table, cid, cw, cblk, nact, q, k, same_block, n_blocks, sums,
                             part, flat_sums, flat_part)
        sample_loss, gz = _loss_grad(z, y[q])
        loss += sample_loss
        for a in range(nact[q]):
            i, b = cid[q, a], cblk[q, a]
            gw = gz * cw[q, a]
            shrink = l2c - gw * cw[q, a] if same_block else l2c
            for c in range(width):
                g = gw * part[b, c] + shrink * table[i, c]
                s = accum[i, c] + g * g
                accum[i, c] = s
                table[i, c] -= lr * _scaled(g, s)
            g = gw + l2c * table[i, width]
            s = accum[i, width] + g * g
            accum[i, width] = s
            table[i, width] -= lr * _scaled(g, s)
        _bias_step(bias, bias_accum, gz, lr)
    return loss


@njit(cache=True, fastmath=FAST, error_model="numpy")
def _batch_step(table, bias, accum, bias_accum, cid, cw, cblk, nact, y, k, same_block,
                n_blocks, lr, l2, where, touched, count, grad, sums, part, ids, w, order,
                ahead):
    """One Adagrad step on the chunk's samples; returns their summed loss.

    Gradients go to ``grad``, one row per distinct table row the batch touched
    (``where`` maps a table row to it, -1 for none), so the update costs the rows used.
    The lazy L2 term, the same for every use of a row in a batch, is added once per row
    at the update, times ``count``, its number of uses."""
    literally(k)
    literally(same_block)
    literally(n_blocks)
    n_samples, width = len(y), k if same_block else part.shape[1]
    flat_sums, flat_part = sums.reshape(sums.size), part.reshape(part.size)
    inv_b = np.float32(1.0 / n_samples)
    l2c = np.float32(2.0 * l2 / n_samples)
    n_touched = 0
    g_bias = np.float32(0)
    loss = 0.0
    for q in range(n_samples):
        _prefetch_sample(ids, w, order, ahead + q)
        z = bias[0] + _logit(table, cid, cw, cblk, nact, q, k, same_block, n_blocks, sums,
                             part, flat_sums, flat_part)
        sample_loss, gz = _loss_grad(z, y[q])
        loss += sample_loss
        gz *= inv_b
        g_bias += gz
        for a in range(nact[q]):
            i, b, ws = cid[q, a], cblk[q, a], cw[q, a]
            t = where[i]
            if t < 0:
                t = where[i] = n_touched
                touched[t], count[t] = i, 0
                for c in range(width + 1):
                    grad[t, c] = 0
                n_touched += 1
            count[t] += 1
            gw = gz * ws
            for c in range(width):
                grad[t, c] += gw * part[b, c]
            if same_block:  # an FM slot is no partner of itself
                for c in range(width):
                    grad[t, c] -= gw * ws * table[i, c]
            grad[t, width] += gw
    for t in range(n_touched):
        i = touched[t]
        shrink = l2c * np.float32(count[t])
        for c in range(width + 1):
            g = grad[t, c] + shrink * table[i, c]
            s = accum[i, c] + g * g
            accum[i, c] = s
            table[i, c] -= lr * _scaled(g, s)
        where[i] = -1
    _bias_step(bias, bias_accum, g_bias, lr)
    return loss


@functools.cache
def _entry_points(k: int, same_block: bool, n_blocks: int) -> tuple[Callable, Callable]:
    """The epoch and scoring kernels for one model shape, ``k``, ``same_block`` and
    ``n_blocks`` compile-time constants of the closure. Passed from Python as ``literally``
    arguments instead, they cost 25-30 ms a call (a third of an ML-100K epoch, 0.6 s a
    scoring call): numba type-infers the plain-int signature on every call, stops at
    ``literally`` and only then finds the compiled literal one."""

    @njit(cache=True, parallel=True, fastmath=FAST, error_model="numpy")
    def train_epoch(table, bias, accum, bias_accum, ids, w, y, order, block, batch,
                    per_sample, lr, l2, where, touched, count, grad, sums, part, cid, cw,
                    cblk, nact, cy, part_loss):
        """Every sample of ``order``, in batches of ``batch`` or one by one
        (``per_sample``, gathered in chunks of ``batch``); part p of ``len(part_loss)``
        contiguous parts on its own scratch (``where[p]``...), the parts in parallel;
        ``sums`` and ``part`` carry spare rows past the model's blocks. Returns the
        summed loss."""
        n_parts = len(part_loss)
        per = -(-len(order) // (n_parts * batch)) * batch  # whole batches per part
        lr32, l2_32, l2c = np.float32(lr), np.float32(l2), np.float32(2.0 * l2)
        for p in prange(n_parts):
            loss = 0.0
            end = min(len(order), (p + 1) * per)
            for lo in range(p * per, end, batch):
                hi = min(lo + batch, end)
                _gather(ids, w, y, order, lo, hi, block, cid[p], cw[p], cblk[p], nact[p],
                        cy[p])
                if per_sample:
                    loss += _sample_steps(table, bias, accum, bias_accum, cid[p], cw[p],
                                          cblk[p], nact[p], cy[p, :hi - lo], k, same_block,
                                          n_blocks, lr32, l2c, sums[p, :n_blocks],
                                          part[p, :n_blocks], ids, w, order, hi)
                else:
                    loss += _batch_step(table, bias, accum, bias_accum, cid[p], cw[p],
                                        cblk[p], nact[p], cy[p, :hi - lo], k, same_block,
                                        n_blocks, lr32, l2_32, where[p], touched[p],
                                        count[p], grad[p], sums[p, :n_blocks],
                                        part[p, :n_blocks], ids, w, order, hi)
            part_loss[p] = loss
        return part_loss.sum()

    @njit(cache=True, fastmath=FAST, error_model="numpy")
    def logits(table, bias, ids, w, block, chunk):
        """Logits of every sample, gathered in chunks (serial: safe from any thread)."""
        n, n_slots = ids.shape
        out = np.empty(n, np.float32)
        part = np.empty((n_blocks, n_blocks * k), np.float32)
        sums = np.empty((n_blocks, n_blocks * k), np.float32)
        flat_sums, flat_part = sums.reshape(sums.size), part.reshape(part.size)
        cid = np.empty((chunk, n_slots), np.int32)
        cw = np.empty((chunk, n_slots), np.float32)
        cblk = np.empty((chunk, n_slots), np.int64)
        nact = np.empty(chunk, np.int64)
        no_labels, cy = np.zeros(n, np.float32), np.empty(chunk, np.float32)
        order = np.arange(n)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            _gather(ids, w, no_labels, order, lo, hi, block, cid, cw, cblk, nact, cy)
            for r in range(lo, hi):
                out[r] = bias[0] + _logit(table, cid, cw, cblk, nact, r - lo, k, same_block,
                                          n_blocks, sums, part, flat_sums, flat_part)
        return out

    return train_epoch, logits


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
    return Layout(block, int(block.max()) + 1, model.k, model.kind == "fm")


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
    logits = _entry_points(lay.k, lay.same_block, lay.n_blocks)[1]
    return logits(table, bias, ids, weights, lay.block, CHUNK)


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
        parts, width, n_slots = self.threads, table.shape[1], ids.shape[1]
        rows = 0 if self.per_sample else batch * n_slots  # batch mode's gradient rows
        # the field sums and partners of each part, written every sample, and 64 spare
        # bytes or more after them, so two parts never share a cache line (an FM's are
        # 16 bytes: unspaced, both threads wrote one line every sample)
        blocks = (lay.n_blocks + -(-64 // (lay.n_blocks * lay.k * 4)), lay.n_blocks * lay.k)
        numba.set_num_threads(parts)
        train_epoch = _entry_points(lay.k, lay.same_block, lay.n_blocks)[0]
        return float(
            train_epoch(
                table,
                bias,
                self.accum,
                self.bias_accum,
                ids,
                weights,
                np.require(labels, np.float32, ["C"]),
                np.require(order, np.int64, ["C"]),
                lay.block,
                batch,
                self.per_sample,
                self.lr,
                self.l2,
                self.where,
                np.empty((parts, rows), np.int32),
                np.empty((parts, rows), np.int32),
                np.empty((parts, rows, width), np.float32),
                np.empty((parts, *blocks), np.float32),
                np.empty((parts, *blocks), np.float32),
                np.empty((parts, batch, n_slots), np.int32),
                np.empty((parts, batch, n_slots), np.float32),
                np.empty((parts, batch, n_slots), np.int32),
                np.empty((parts, batch), np.int64),
                np.empty((parts, batch), np.float32),
                np.zeros(parts),
            )
        )
