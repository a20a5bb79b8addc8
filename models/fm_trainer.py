"""Training for the FM and FFM scorers, and their files.

``fit`` trains any module called as ``model(ids, weights, l2=...) -> logits`` on labelled
``Samples`` with binary cross-entropy, early-stopping on a validation metric (AUC or
logloss on ``valid``, or a callback such as NDCG supplied by the caller) and restoring
the best epoch's parameters. One seed fixes initialisation (the model's own), shuffling
and negative sampling, so two runs give identical parameters.

Scale-out: when ``torch.distributed`` is initialised (``torchrun`` sets RANK and
WORLD_SIZE; call ``models.distributed.init_distributed``), the model is wrapped in
DistributedDataParallel, every rank takes its share of one seeded permutation
(``models.distributed.shard_order``), each rank's batch is ``batch_size / world`` so one
step sees the same global batch as a single process, and only rank 0 logs and writes.
Optimisers live in ``models.optimizers``, negative sampling in ``models.negatives``.
On CPU an FM or FFM can instead train in compiled Adagrad epochs (``backend="native"``,
``models.fm_kernel``) on the module's own parameters; everything around the steps
(shuffling, validation, early stopping, files) stays the same.

Files: ``save_model`` writes ``model.json`` and ``model.pt`` into a folder (the caller
makes that atomic); ``load_model`` reads the state dict with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.distributed import (
    broadcast_value,
    is_main_process,
    place,
    rank_and_world,
    shard_order,
    unwrap,
)
from models.early_stopping import EarlyStopping
from models.ffm import FFM, FactorTable, RowSpread
from models.fm import FM
from models.optimizers import make_optimizer

log = logging.getLogger("pipeline")

MODEL_KINDS: dict[str, type[nn.Module]] = {"fm": FM, "ffm": FFM}


# --------------------------------------------------------------------------- data


@dataclass
class Samples:
    """Encoded samples: ``ids`` [N, S] global feature ids (0 = padding), ``weights``
    [N, S] float32, ``labels`` [N] in {0, 1} (None when only scoring)."""

    ids: np.ndarray
    weights: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.ids.shape != self.weights.shape or self.ids.ndim != 2:
            raise ValueError(f"ids {self.ids.shape} and weights {self.weights.shape} must be "
                             "the same [N, S] shape")
        if self.labels is not None and len(self.labels) != len(self.ids):
            raise ValueError(f"{len(self.labels)} labels for {len(self.ids)} samples")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Samples:
        return Samples(self.ids[index], self.weights[index],
                       None if self.labels is None else self.labels[index])

    @classmethod
    def from_encoded(cls, encoded: Any, labels: np.ndarray | None = None) -> Samples:
        """From ``features.fields.EncodedFields`` (anything with ``ids`` and ``weights``)."""
        return cls(encoded.ids, encoded.weights,
                   None if labels is None else np.asarray(labels, np.float32))


# --------------------------------------------------------------------------- config, history


@dataclass
class TrainConfig:
    """Training settings (the pipeline's config maps onto these one to one)."""

    optimizer: Literal["adam", "adagrad"] = "adagrad"
    lr: float = 0.05
    l2: float = 1e-5  # lazy per-sample L2 on each sample's gathered rows (see FFM.forward)
    batch_size: int = 256  # global: divided among DDP ranks
    epochs: int = 20
    patience: int = 2  # epochs without improvement before stopping
    metric: Literal["auc", "logloss"] = "auc"  # on `valid`, unless fit() gets `evaluate`
    seed: int = 0
    device: str = "cpu"
    # bf16 autocast on CUDA: no faster for these gathers and element-wise products on an
    # H200 (16.2M fp32 vs 15.4M bf16 FFM samples/s, same AUC; RESULTS "cuda"), so off
    bf16: bool = False
    # CUDA, one process, Adagrad, a dense table: full batches replay one captured step
    # (_GraphedStep)
    cuda_graphs: bool = True
    # CUDA, a dense FM/FFM table: sum each batch's gradient through copies of the rows a
    # batch gathers most (models.ffm.RowSpread) instead of atomic adds queueing on them
    spread_rows: bool = True
    threads: int | None = None  # torch intra-op threads; None leaves torch's setting
    # "native": models.fm_kernel's compiled Adagrad epochs, used on CPU for an FM or FFM
    # with adagrad in one process; torch otherwise (CUDA, DDP, adam, a given optimizer).
    # The pipeline's fm.backend defaults to native; here torch stays the reference.
    backend: Literal["torch", "native"] = "torch"
    native_threads: int = 1  # native kernel threads; 1 is deterministic, more are Hogwild
    # native steps: "batch" (each batch's mean loss, as torch) or "sample" (every sample
    # alone, as libffm/xLearn; wants its own lr, see models.fm_kernel.AdagradKernel)
    native_update: Literal["batch", "sample"] = "batch"
    native_sample_lr: float | None = None  # lr of per-sample steps; None: lr
    eval_batch_size: int = 16384
    restore_best: bool = True


@dataclass
class History:
    """What ``fit`` did: one dict per epoch and the chosen epoch."""

    metric: str
    higher_is_better: bool
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_metric: float = float("nan")
    stopped_early: bool = False
    train_samples: int = 0  # samples through training steps (all ranks)
    train_seconds: float = 0.0  # wall time inside training steps (no validation)
    train_cpu_seconds: float = 0.0  # process CPU time inside training steps

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / max(self.train_seconds, 1e-12)

    @property
    def samples_per_cpu_second(self) -> float:
        return self.train_samples / max(self.train_cpu_seconds, 1e-12)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples_per_second"] = self.samples_per_second
        out["samples_per_cpu_second"] = self.samples_per_cpu_second
        return out


# --------------------------------------------------------------------------- scoring


def _tensor(a: np.ndarray, dtype: Any) -> torch.Tensor:
    """A tensor sharing ``a``'s memory when it is C-contiguous, writable and of ``dtype``."""
    return torch.from_numpy(np.require(a, dtype=dtype, requirements=["C", "W"]))


def _autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked, else a no-op; no cast cache, as a captured step
    (``_GraphedStep``) must not hold casts made for a step gone by."""
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda" and bf16, cache_enabled=False)


def predict(model: nn.Module, samples: Samples, batch_size: int = 16384,
            device: str | torch.device = "cpu", logits: bool = False,
            bf16: bool = False, backend: str = "torch") -> np.ndarray:
    """Scores (probabilities, or logits) of ``samples`` in batches; float32 [N].
    ``backend="native"`` scores with ``models.fm_kernel`` where it can (CPU FM/FFM)."""
    model = unwrap(model)
    dev = torch.device(device)
    if backend == "native" and dev.type == "cpu":
        from models import fm_kernel

        if fm_kernel.supports(model):
            z = torch.from_numpy(fm_kernel.predict_logits(model, samples.ids, samples.weights))
            return (z if logits else torch.sigmoid(z)).numpy()
    out = np.empty(len(samples), np.float32)
    ids_t = _tensor(samples.ids, samples.ids.dtype)
    w_t = _tensor(samples.weights, np.float32)
    with evaluating(model), torch.no_grad(), _autocast(dev, bf16):
        for lo in range(0, len(samples), batch_size):
            hi = min(lo + batch_size, len(samples))
            z = model(ids_t[lo:hi].to(dev), w_t[lo:hi].to(dev)).float()
            out[lo:hi] = (z if logits else torch.sigmoid(z)).cpu().numpy()
    return out


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode within, in its own mode after. Switched only when it is
    training: ``eval`` and ``train`` each walk every submodule on every call."""
    if not model.training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train()


@dataclass(frozen=True)
class SideTerms:
    """One side of scored pairs, per row of its samples (``FactorTable.side_terms``):
    the terms that need no partner [N] and the cross vectors, flattened so that a pair's
    cross term is one dot product [N, own fields x other fields x k]."""

    alone: torch.Tensor
    cross: torch.Tensor


def side_terms(model: nn.Module, side: Samples, slots: np.ndarray, other_slots: np.ndarray,
               *, second: bool = False, device: str | torch.device = "cpu") -> SideTerms:
    """``side``'s terms against a partner whose slots are ``other_slots`` (``slots``:
    its own, of a full row); ``second``: laid out for the second side of ``pair_scores``.
    Worked out once per distinct user or item; a table's every item can be worked out
    ahead of the requests that pair it (a served request's 300 candidates: 2 ms)."""
    model = unwrap(model)
    dev = torch.device(device)
    with evaluating(model), torch.no_grad():
        alone, cross = model.side_terms(_tensor(side.ids, side.ids.dtype).to(dev),
                                        _tensor(side.weights, np.float32).to(dev),
                                        torch.as_tensor(slots, device=dev),
                                        torch.as_tensor(other_slots, device=dev))
    # the second side's [N, own, first's fields, k] meets the first's [N, own, its, k]
    return SideTerms(alone, cross.transpose(1, 2).flatten(1) if second else cross.flatten(1))


def pair_scores(model: nn.Module, first: SideTerms, second: SideTerms, first_of: np.ndarray,
                second_of: np.ndarray, batch_size: int = 65_536,
                device: str | torch.device = "cpu", logits: bool = False) -> np.ndarray:
    """The score of each pair ``(first row first_of[j], second row second_of[j])``:
    ``bias + alone_a + alone_b + <cross_a, cross_b>``, a sigmoid unless ``logits``."""
    model = unwrap(model)
    dev = torch.device(device)
    out = np.empty(len(first_of), np.float32)
    with torch.no_grad():
        at_a, at_b = torch.as_tensor(first_of), torch.as_tensor(second_of)
        for lo in range(0, len(out), batch_size):
            a, b = at_a[lo: lo + batch_size].to(dev), at_b[lo: lo + batch_size].to(dev)
            z = (model.bias + first.alone[a] + second.alone[b]
                 + torch.linalg.vecdot(first.cross[a], second.cross[b])).float()
            out[lo: lo + len(a)] = (z if logits else torch.sigmoid(z)).cpu().numpy()
    return out


def predict_pairs(model: nn.Module, first: Samples, first_slots: np.ndarray,
                  second: Samples, second_slots: np.ndarray, first_of: np.ndarray,
                  second_of: np.ndarray, batch_size: int = 65_536,
                  device: str | torch.device = "cpu", logits: bool = False) -> np.ndarray:
    """``predict`` of the rows pairing ``first[first_of[j]]`` with ``second[second_of[j]]``
    (each side's slots at ``*_slots`` of a full row), equal up to float rounding.

    Each side's own terms and cross vectors (``side_terms``) are worked out once per
    distinct user or item; a pair then costs one dot product (``pair_scores``).
    Candidates repeat each user about 300 times, and scoring them row by row was a
    third of train-fm.
    """
    return pair_scores(model, side_terms(model, first, first_slots, second_slots,
                                         device=device),
                       side_terms(model, second, second_slots, first_slots, second=True,
                                  device=device),
                       first_of, second_of, batch_size, device, logits)


def binary_metric(name: str, labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC (sklearn's roc_auc_score) or mean logloss with probabilities clipped to 1e-7."""
    if name == "auc":
        from sklearn.metrics import roc_auc_score

        if len(np.unique(labels)) < 2:
            raise ValueError("validation labels hold one class only; AUC is undefined")
        return float(roc_auc_score(labels, probs))
    if name == "logloss":
        p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))
    raise ValueError(f"unknown metric {name!r}; expected 'auc' or 'logloss'")


# --------------------------------------------------------------------------- training


@dataclass
class _Steps:
    """One rank's training steps: the module it steps, its data and its batch shape."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    # ids, weights, labels: on a CUDA device when they fit in half its free memory (the
    # batches are then gathered there), else on the host
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    device: torch.device
    batch: int  # per rank: the global batch divided among the ranks
    l2: float
    bf16: bool  # autocast, on CUDA only
    graphs: bool  # full batches replay a captured step (CUDA, one process, dense table)
    spread: RowSpread | None = None  # the busiest rows' copies for the dense gradient
    graph: _GraphedStep | None = None
    warmups: int = 0  # eager full-batch steps taken towards the capture
    staged: tuple[torch.Tensor, ...] | None = None  # device buffers for host-held data
    positions: torch.Tensor | None = None  # 0..len(staged) - 1, the staged rows' indices

    @classmethod
    def placed(cls, model: nn.Module, train: Samples, cfg: TrainConfig, world: int,
               optimizer: torch.optim.Optimizer | None) -> _Steps:
        """Steps for ``model`` moved to its device (wrapped for DDP with several ranks),
        with the optimiser ``cfg`` names unless one is given; made after the move, as
        fused optimisers check the parameters' device."""
        net, device = place(model, torch.device(cfg.device))
        assert train.labels is not None
        data = (_tensor(train.ids, train.ids.dtype), _tensor(train.weights, np.float32),
                _tensor(train.labels, np.float32))
        if device.type == "cuda" and (sum(t.nbytes for t in data)
                                      < torch.cuda.mem_get_info(device)[0] // 2):
            data = tuple(t.to(device) for t in data)  # type: ignore[assignment]
        # Adagrad only (torch's fused Adam refuses capture unless made capturable); a
        # sparse table's steps have shapes that change with the batch (torch.unique)
        graphs = (cfg.cuda_graphs and device.type == "cuda" and world == 1
                  and optimizer is None and cfg.optimizer == "adagrad"
                  and not any(getattr(m, "sparse", False) for m in model.modules()))
        batch = max(1, math.ceil(cfg.batch_size / world))
        spread = None
        if (cfg.spread_rows and device.type == "cuda" and isinstance(model, FactorTable)
                and not model.sparse):
            spread = RowSpread.plan(data[0], model.n_features, batch)
            spread = spread.to(device) if spread is not None else None
        return cls(net, optimizer or make_optimizer(model, cfg.optimizer, cfg.lr), data, device,
                   batch, cfg.l2, cfg.bf16, graphs, spread)

    def step(self, ids: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        """One eager step on a batch; its mean loss (a device scalar)."""
        self.optimizer.zero_grad(set_to_none=True)
        spread = {} if self.spread is None else {"spread": self.spread}
        with _autocast(self.device, self.bf16):
            z = self.net(ids, weights, l2=self.l2, **spread)
        loss = F.binary_cross_entropy_with_logits(z.float(), labels)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @property
    def order_device(self) -> torch.device:
        """Where an epoch's sample order is drawn: the training device, so that a
        2M-sample order is not copied there each epoch (3.0 ms of a 19.7 ms FM epoch on an
        H200, benchmarks/RESULTS.md "cuda"), and every rank draws the same permutation
        wherever its data is held."""
        return self.device

    def full_batch(self, source: tuple[torch.Tensor, ...], rows: torch.Tensor
                   ) -> torch.Tensor:
        """A full batch's step on ``source``'s ``rows``: eager on a side stream for the first
        ``GRAPH_WARMUP`` (as capture asks), then the captured step replayed; its mean loss."""
        if self.graph is None and self.warmups < GRAPH_WARMUP:
            self.warmups += 1
            main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                loss = self.step(*(t[rows] for t in source))
            main.wait_stream(side)
            loss.record_stream(main)  # made on the side stream, summed on the main one
            return loss
        if self.graph is None:
            self.graph = _GraphedStep.capture(self.step, source, rows)
        return self.graph.replay(rows)

    def batches(self, order: torch.Tensor
                ) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """``(source, rows)`` per batch of ``order``: the data and the batch's rows of it
        when the data is on the step's device; else runs of ``STAGED_BATCHES`` batches
        gathered on the host into buffers on the device that every run reuses (a captured
        step reads them), and the batch's positions in the run."""
        if self.data[0].device.type == self.device.type:
            order = order.to(self.device)
            for lo in range(0, len(order), self.batch):
                yield self.data, order[lo: lo + self.batch]
            return
        run = self.batch * STAGED_BATCHES
        if self.staged is None:
            size = min(run, len(self.data[0]))
            self.staged = tuple(torch.empty((size, *t.shape[1:]), dtype=t.dtype,
                                            device=self.device) for t in self.data)
            self.positions = torch.arange(size, device=self.device)
        order = order.cpu()
        for rlo in range(0, len(order), run):
            ridx = order[rlo: rlo + run]
            for buf, t in zip(self.staged, self.data, strict=True):
                buf[: len(ridx)].copy_(t[ridx])
            for lo in range(0, len(ridx), self.batch):
                yield self.staged, self.positions[lo: min(lo + self.batch, len(ridx))]

    def epoch(self, order: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One pass over ``order``; the summed loss (a device scalar, read once at the end
        so steps do not wait on the device) and the number of samples."""
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        for source, rows in self.batches(order):
            n = len(rows)
            if self.graphs and n == self.batch:
                loss = self.full_batch(source, rows)
            else:
                loss = self.step(*(t[rows] for t in source))
            loss_sum.add_(loss, alpha=n)
            seen += n
        return loss_sum, seen


GRAPH_WARMUP = 3  # eager steps before a capture (torch's CUDA graph notes use a few)
STAGED_BATCHES = 64  # batches a run of host-held data brings to the device at once


@dataclass
class _GraphedStep:
    """One full-batch training step (gathering the batch's rows of its source, forward,
    backward, Adagrad) captured as a CUDA graph and replayed on new rows copied into its
    index. A step of these models is a few dozen small kernels; launched one by one from
    Python they cost about 2 ms on an H200 whatever the batch (benchmarks/RESULTS.md,
    "cuda"), so the device only beat the CPU at batches too large for the AUC to hold.
    The gather is captured too: copying each batch into the graph's inputs took 3.2 ms of
    a 19.7 ms FM epoch there."""

    graph: torch.cuda.CUDAGraph
    rows: torch.Tensor  # the replayed batch's rows of the source
    loss: torch.Tensor  # the replayed step's mean loss

    @classmethod
    def capture(cls, step: Callable[..., torch.Tensor], source: tuple[torch.Tensor, ...],
                rows: torch.Tensor) -> _GraphedStep:
        rows = rows.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = step(*(t[rows] for t in source))
        return cls(graph, rows, loss)

    def replay(self, rows: torch.Tensor) -> torch.Tensor:
        self.rows.copy_(rows)
        self.graph.replay()
        return self.loss


@dataclass
class _NativeSteps:
    """``_Steps`` for the native backend: each epoch is one call of the compiled kernel,
    which updates the module's own parameters in place."""

    kernel: Any  # models.fm_kernel.AdagradKernel
    data: tuple[np.ndarray, np.ndarray, np.ndarray]  # ids, weights, labels
    batch: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    order_device: ClassVar[torch.device] = torch.device("cpu")

    def epoch(self, order: torch.Tensor) -> tuple[float, int]:
        return self.kernel.epoch(*self.data, order.numpy(), self.batch), len(order)


def _steps(model: nn.Module, train: Samples, cfg: TrainConfig, world: int,
           optimizer: torch.optim.Optimizer | None) -> _Steps | _NativeSteps:
    """The native kernel's steps where ``cfg.backend`` asks for them and they apply (CPU,
    one process, Adagrad, no optimiser given, a float32 FM or FFM), else torch's."""
    if cfg.backend == "native":
        from models import fm_kernel

        if (torch.device(cfg.device).type == "cpu" and world == 1 and optimizer is None
                and cfg.optimizer == "adagrad" and fm_kernel.supports(model)):
            assert train.labels is not None
            per_sample = cfg.native_update == "sample" and cfg.native_sample_lr is not None
            lr = cfg.native_sample_lr if per_sample else cfg.lr
            kernel = fm_kernel.AdagradKernel(model, lr, cfg.l2, cfg.native_threads,
                                            cfg.native_update)
            return _NativeSteps(kernel, (train.ids, train.weights, train.labels),
                                cfg.batch_size)
        log.info("[train-fm] native backend does not apply (device %s, %d ranks, %s); "
                 "training with torch", cfg.device, world, cfg.optimizer)
    return _Steps.placed(model, train, cfg, world, optimizer)


def _timed_epoch(steps: _Steps | _NativeSteps, order: torch.Tensor, world: int,
                 history: History, epoch: int) -> dict[str, float]:
    """Train one epoch, add its time and samples to ``history``; the epoch's log row."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    loss_sum, seen = steps.epoch(order)
    if steps.device.type == "cuda":
        torch.cuda.synchronize(steps.device)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    history.train_seconds += wall
    history.train_cpu_seconds += cpu
    history.train_samples += seen * world
    return {"epoch": epoch, "loss": float(loss_sum) / max(seen, 1),
            "samples_per_s": seen * world / max(wall, 1e-12)}


def _watched_metric(cfg: TrainConfig, valid: Samples | None,
                    evaluate: Callable[[nn.Module], float] | None,
                    higher_is_better: bool | None) -> tuple[str, bool, bool]:
    """The early-stopping metric's name and direction (the callback's, else ``cfg.metric``)
    and whether there is anything to watch (a callback or labelled ``valid``)."""
    if evaluate is not None:
        return "custom", True if higher_is_better is None else higher_is_better, True
    return cfg.metric, cfg.metric == "auc", valid is not None and valid.labels is not None


def _validate(model: nn.Module, valid: Samples | None, cfg: TrainConfig, device: torch.device,
              evaluate: Callable[[nn.Module], float] | None) -> float:
    """The watched metric after an epoch, rank 0's number on every rank."""
    if evaluate is not None:
        value = float(evaluate(model))
    else:
        assert valid is not None and valid.labels is not None
        probs = predict(model, valid, cfg.eval_batch_size, device, bf16=cfg.bf16,
                        backend=cfg.backend)
        value = binary_metric(cfg.metric, valid.labels, probs)
    return broadcast_value(value)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _end_at_best(model: nn.Module, history: History, stopper: EarlyStopping,
                 watching: bool) -> None:
    """Restore the best epoch's parameters when they were kept; with nothing watched the
    last epoch is the chosen one."""
    if not watching:
        history.best_epoch = len(history.epochs) - 1
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)


def _log_epoch(row: dict[str, float]) -> None:
    log.info("[train-fm] %s", " ".join(
        f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


def fit(model: nn.Module, train: Samples, valid: Samples | None, cfg: TrainConfig,
        evaluate: Callable[[nn.Module], float] | None = None,
        higher_is_better: bool | None = None,
        optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train ``model`` in place; returns the history (the model ends at the best epoch).

    Early stopping watches ``evaluate(model)`` when given (``higher_is_better`` says its
    direction, default True), else ``cfg.metric`` on ``valid``; with neither, every epoch
    runs and the last is kept. ``optimizer`` replaces the one ``cfg`` names (the benchmark
    trains reference models with torch's own). ``cfg.backend="native"`` runs the epochs in
    ``models.fm_kernel`` where it applies (see ``_steps``). A NaN or infinite epoch loss raises
    ``FloatingPointError`` naming the model and the epoch instead of training on.
    """
    if train.labels is None:
        raise ValueError("training samples need labels")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world = rank_and_world()
    steps = _steps(model, train, cfg, world, optimizer)
    device = steps.device
    metric_name, higher, watching = _watched_metric(cfg, valid, evaluate, higher_is_better)
    history = History(metric=metric_name, higher_is_better=higher)
    stopper = EarlyStopping(cfg.patience, higher)
    keep = partial(_copy_state, model) if cfg.restore_best else None
    for epoch in range(cfg.epochs):
        order = shard_order(len(train), epoch, cfg.seed, rank, world, steps.order_device)
        row = _timed_epoch(steps, order, world, history, epoch)
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"{type(unwrap(model)).__name__}: loss is {row['loss']} "
                                     f"at epoch {epoch}; lower lr or check the inputs")
        if watching:
            value = row[f"valid_{metric_name}"] = _validate(model, valid, cfg, device, evaluate)
            if stopper.update(epoch, value, keep):
                history.best_metric, history.best_epoch = value, epoch
        history.epochs.append(row)
        if rank == 0:
            _log_epoch(row)
        if watching and stopper.should_stop:
            history.stopped_early = epoch + 1 < cfg.epochs
            break
    _end_at_best(model, history, stopper, watching)
    return history


# --------------------------------------------------------------------------- files


def save_model(model: nn.Module, folder: Path, extra: dict[str, Any] | None = None,
               all_ranks: bool = False) -> bool:
    """``model.json`` (constructor arguments + ``extra``) and ``model.pt`` (state dict).
    Under DDP only rank 0 writes unless ``all_ranks``; returns whether this rank wrote."""
    if not all_ranks and not is_main_process():
        return False
    model = unwrap(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, folder / "model.pt")
    meta = {"model": model.config(), "extra": extra or {}}  # type: ignore[operator]
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return True


def build_model(config: dict[str, Any], seed: int = 0) -> nn.Module:
    """An FM or FFM from ``config()``'s dict (kind, n_features, slot_field, k, sparse)."""
    kind = config.get("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](config["n_features"], config.get("slot_field"), k=config["k"],
                             sparse=config.get("sparse"),
                             init_std=config.get("init_std", 0.01), seed=seed)


def load_model(folder: Path, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model saved by ``save_model`` (weights_only load, no pickle), in eval mode, and
    its extra."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    model = build_model(meta["model"])
    state = torch.load(folder / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), meta.get("extra", {})
