"""Training for the FM and FFM scorers: optimisers, trainer, negative sampling, DDP, files.

``fit`` trains any module called as ``model(ids, weights, l2=...) -> logits`` on labelled
``Samples`` with binary cross-entropy, early-stopping on a validation metric (AUC or
logloss on ``valid``, or a callback such as NDCG supplied by the caller) and restoring
the best epoch's parameters. One seed fixes initialisation (the model's own), shuffling
and negative sampling, so two runs give identical parameters.

Scale-out: when ``torch.distributed`` is initialised (``torchrun`` sets RANK and
WORLD_SIZE; call ``init_distributed``), the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on CUDA), every rank draws the same seeded permutation and takes every
``world``-th sample of it (padded so all ranks run the same number of steps), each rank's
batch is ``batch_size / world`` so one step sees the same global batch as a single
process, and only rank 0 logs and writes.

Optimisers: models with dense gradients (the default for small tables) use torch's fused
Adagrad or Adam. With sparse gradients the row-sparse optimisers here update only the rows
a batch touched. Adagrad's update of an untouched row is zero anyway, so
``RowSparseAdagrad`` equals dense Adagrad exactly; ``RowSparseAdam`` is the lazy variant
(moments of untouched rows stand still), like ``torch.optim.SparseAdam``.

Files: ``save_model`` writes ``model.json`` and ``model.pt`` into a folder (the caller
makes that atomic); ``load_model`` reads the state dict with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.ffm import FFM
from models.fm import FM

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

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        labels = None if any(p.labels is None for p in parts) else np.concatenate(
            [p.labels for p in parts])  # type: ignore[misc]
        return Samples(np.concatenate([p.ids for p in parts]),
                       np.concatenate([p.weights for p in parts]), labels)


# --------------------------------------------------------------------------- optimisers


def _rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices and values of a sparse row gradient, duplicate rows summed.

    The models' gradients come with strictly increasing rows already (autograd drops the
    coalesced flag on the way to ``.grad``), so a cheap check replaces a second sort.
    """
    idx = grad._indices()[0]
    if grad.is_coalesced() or bool((idx[1:] > idx[:-1]).all()):
        return idx, grad._values()
    grad = grad.coalesce()
    return grad.indices()[0], grad.values()


class RowSparseAdagrad(torch.optim.Optimizer):
    """Adagrad (``torch.optim.Adagrad`` defaults) that accepts dense or sparse gradients
    and, for sparse ones, touches only the gradient's rows."""

    def __init__(self, params: Any, lr: float = 0.05, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "eps": eps, "init": initial_accumulator_value})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["sum"] = torch.full_like(p, group["init"])
                acc = state["sum"]
                if p.grad.is_sparse:
                    idx, g = _rows(p.grad)
                    s = acc.index_select(0, idx).addcmul_(g, g)
                    acc.index_copy_(0, idx, s)
                    p.index_add_(0, idx, g / s.sqrt_().add_(eps), alpha=-lr)
                else:
                    g = p.grad
                    acc.addcmul_(g, g)
                    p.addcdiv_(g, acc.sqrt().add_(eps), value=-lr)


class RowSparseAdam(torch.optim.Optimizer):
    """Adam for dense gradients; lazy Adam (only the gradient's rows) for sparse ones."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                step_size = lr / (1 - b1**t)
                root_bc2 = math.sqrt(1 - b2**t)
                m, v = state["m"], state["v"]
                if p.grad.is_sparse:
                    idx, g = _rows(p.grad)
                    mr = m.index_select(0, idx).mul_(b1).add_(g, alpha=1 - b1)
                    vr = v.index_select(0, idx).mul_(b2).addcmul_(g, g, value=1 - b2)
                    m.index_copy_(0, idx, mr)
                    v.index_copy_(0, idx, vr)
                    denom = vr.sqrt_().div_(root_bc2).add_(eps)
                    p.index_add_(0, idx, mr / denom, alpha=-step_size)
                else:
                    g = p.grad
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    p.addcdiv_(m, v.sqrt().div_(root_bc2).add_(eps), value=-step_size)


def make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """The row-sparse optimisers when any parameter gets sparse gradients, else torch's
    fused dense kernels (one pass over each table: faster than ours on a small table)."""
    if name not in ("adagrad", "adam"):
        raise ValueError(f"unknown optimizer {name!r}; expected 'adam' or 'adagrad'")
    sparse = any(getattr(m, "sparse", False) for m in model.modules())
    fused = {"fused": True} if _fused_ok(model, name) else {}
    if name == "adagrad":
        if sparse:
            return RowSparseAdagrad(model.parameters(), lr=lr)
        return torch.optim.Adagrad(model.parameters(), lr=lr, **fused)
    if sparse:
        return RowSparseAdam(model.parameters(), lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr, **fused)


def _fused_ok(model: nn.Module, name: str) -> bool:
    """torch's fused optimisers take float tensors; fused Adam runs on CPU and CUDA,
    fused Adagrad on CPU only (torch refuses it on CUDA)."""
    devices = ("cpu",) if name == "adagrad" else ("cpu", "cuda")
    params = list(model.parameters())
    return bool(params) and all(p.dtype in (torch.float32, torch.float64)
                                and p.device.type in devices for p in params)


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
    device: str = "cpu"  # "cuda" trains under bf16 autocast
    bf16: bool = True  # autocast on CUDA only
    threads: int | None = None  # torch intra-op threads; None leaves torch's setting
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


# --------------------------------------------------------------------------- distributed


def init_distributed(device: str = "cpu", backend: str | None = None) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
    environment): gloo for CPU training, nccl for CUDA. False when not launched so."""
    if dist.is_available() and dist.is_initialized():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    backend = backend or ("nccl" if torch.device(device).type == "cuda" else "gloo")
    dist.init_process_group(backend=backend)
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def shard_order(n: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample order for an epoch: a seeded permutation shared by all ranks,
    padded by wrapping to a multiple of ``world``, every ``world``-th entry from ``rank``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    if world > 1:
        pad = (-n) % world
        if pad:
            perm = torch.cat([perm, perm[:pad]])
        perm = perm[rank::world]
    return perm


# --------------------------------------------------------------------------- training


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _tensor(a: np.ndarray, dtype: Any) -> torch.Tensor:
    """A tensor sharing ``a``'s memory when it is C-contiguous, writable and of ``dtype``."""
    return torch.from_numpy(np.require(a, dtype=dtype, requirements=["C", "W"]))


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda" and bf16)


def predict(model: nn.Module, samples: Samples, batch_size: int = 16384,
            device: str | torch.device = "cpu", logits: bool = False,
            bf16: bool = True) -> np.ndarray:
    """Scores (probabilities, or logits) of ``samples`` in batches; float32 [N]."""
    model = _unwrap(model)
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    out = np.empty(len(samples), np.float32)
    ids_t = _tensor(samples.ids, samples.ids.dtype)
    w_t = _tensor(samples.weights, np.float32)
    with torch.no_grad(), _autocast(dev, bf16):
        for lo in range(0, len(samples), batch_size):
            hi = min(lo + batch_size, len(samples))
            z = model(ids_t[lo:hi].to(dev), w_t[lo:hi].to(dev)).float()
            out[lo:hi] = (z if logits else torch.sigmoid(z)).cpu().numpy()
    model.train(was_training)
    return out


def score_frame(model: nn.Module, encoder: Any, frame: Any, chunk: int = 65_536,
                device: str | torch.device = "cpu", logits: bool = False) -> np.ndarray:
    """Scores of the rows of ``frame`` (e.g. candidate (user, item) pairs joined with their
    attributes), encoded by a fitted ``features.fields.FieldEncoder`` ``chunk`` rows at a
    time so the encoded slots never exist for the whole frame at once."""
    out = np.empty(len(frame), np.float32)
    for lo in range(0, len(frame), chunk):
        part = frame.iloc[lo: lo + chunk]
        out[lo: lo + len(part)] = predict(model, Samples.from_encoded(encoder.transform(part)),
                                          batch_size=chunk, device=device, logits=logits)
    return out


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


def fit(model: nn.Module, train: Samples, valid: Samples | None, cfg: TrainConfig,
        evaluate: Callable[[nn.Module], float] | None = None,
        higher_is_better: bool | None = None,
        optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train ``model`` in place; returns the history (the model ends at the best epoch).

    Early stopping watches ``evaluate(model)`` when given (``higher_is_better`` says its
    direction, default True), else ``cfg.metric`` on ``valid``; with neither, every epoch
    runs and the last is kept. ``optimizer`` replaces the one ``cfg`` names (the benchmark
    trains reference models with torch's own).
    """
    if train.labels is None:
        raise ValueError("training samples need labels")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    rank, world = rank_and_world()
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    main = rank == 0
    model.to(device)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    optimizer = optimizer or make_optimizer(model, cfg.optimizer, cfg.lr)

    if evaluate is not None:
        metric_name, higher = "custom", True if higher_is_better is None else higher_is_better
    else:
        metric_name, higher = cfg.metric, cfg.metric == "auc"
    watching = evaluate is not None or (valid is not None and valid.labels is not None)
    history = History(metric=metric_name, higher_is_better=higher)
    sign = 1.0 if higher else -1.0

    ids_t = _tensor(train.ids, train.ids.dtype)
    w_t = _tensor(train.weights, np.float32)
    y_t = _tensor(train.labels, np.float32)
    per_rank_batch = max(1, math.ceil(cfg.batch_size / world))
    chunk = per_rank_batch * 64
    cuda_amp = device.type == "cuda" and cfg.bf16

    def amp() -> Any:
        return (torch.autocast("cuda", dtype=torch.bfloat16) if cuda_amp
                else contextlib.nullcontext())
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0

    for epoch in range(cfg.epochs):
        net.train()
        order = shard_order(len(train), epoch, cfg.seed, rank, world)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for clo in range(0, len(order), chunk):  # gather a run of batches at once
            cidx = order[clo: clo + chunk]
            c_ids, c_w, c_y = (t[cidx].to(device, non_blocking=True) for t in (ids_t, w_t, y_t))
            for lo in range(0, len(cidx), per_rank_batch):
                hi = lo + per_rank_batch
                optimizer.zero_grad(set_to_none=True)
                with amp():
                    z = net(c_ids[lo:hi], c_w[lo:hi], l2=cfg.l2)
                loss = F.binary_cross_entropy_with_logits(z.float(), c_y[lo:hi])
                loss.backward()
                optimizer.step()
                n = len(z)
                loss_sum.add_(loss.detach(), alpha=n)
                seen += n
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        history.train_seconds += wall
        history.train_cpu_seconds += cpu
        history.train_samples += seen * world
        row: dict[str, float] = {"epoch": epoch, "loss": float(loss_sum.item()) / max(seen, 1),
                                 "samples_per_s": seen * world / max(wall, 1e-12)}

        if watching:
            if evaluate is not None:
                value = float(evaluate(model))
            else:
                assert valid is not None and valid.labels is not None
                probs = predict(model, valid, cfg.eval_batch_size, device, bf16=cfg.bf16)
                value = binary_metric(cfg.metric, valid.labels, probs)
            if world > 1:  # every rank follows rank 0's number
                t = torch.tensor([value], dtype=torch.float64)
                dist.broadcast(t, src=0)
                value = float(t.item())
            row[f"valid_{metric_name}"] = value
            if best_state is None or sign * value > sign * history.best_metric:
                history.best_metric, history.best_epoch, since_best = value, epoch, 0
                if cfg.restore_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
        history.epochs.append(row)
        if main:
            log.info("[train-fm] %s", " ".join(
                f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if watching and since_best >= cfg.patience:
            history.stopped_early = epoch + 1 < cfg.epochs
            break
    if not watching:
        history.best_epoch = len(history.epochs) - 1
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


# --------------------------------------------------------------------------- negatives


def sample_negatives(pos_users: np.ndarray, pos_items: np.ndarray, n_items: int, ratio: int,
                     rng: np.random.Generator, *, popularity: np.ndarray | None = None,
                     alpha: float = 1.0, hard_users: np.ndarray | None = None,
                     hard_items: np.ndarray | None = None, hard_share: float = 0.5,
                     max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``ratio`` negative (user, item) codes per positive, positives' users repeated.

    Each negative is, with probability ``hard_share`` when the user has any, one of the
    user's hard negatives (e.g. unclicked recall candidates, drawn uniformly), otherwise
    an item drawn with probability proportional to ``popularity ** alpha`` (default: the
    items' counts among the positives, plus one so every item can be drawn). Draws that
    hit one of the user's positives are redrawn up to ``max_rounds`` times; codes are
    0-based. Vectorised: no loop over users or samples.
    """
    pos_users = np.asarray(pos_users, np.int64)
    pos_items = np.asarray(pos_items, np.int64)
    users = np.repeat(pos_users, ratio)
    n = len(users)
    if popularity is None:
        popularity = np.bincount(pos_items, minlength=n_items).astype(np.float64) + 1.0
    p = np.asarray(popularity, np.float64)[:n_items] ** alpha
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    pos_keys = np.unique(pos_users * n_items + pos_items)

    def is_pos(u: np.ndarray, i: np.ndarray) -> np.ndarray:
        keys = u * n_items + i
        at = np.minimum(np.searchsorted(pos_keys, keys), len(pos_keys) - 1)
        return pos_keys[at] == keys

    def popular(m: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(m), side="right"), n_items - 1)

    items = popular(n)
    hard = np.zeros(n, bool)
    if hard_users is not None and hard_items is not None and len(hard_users) and hard_share > 0:
        hu = np.asarray(hard_users, np.int64)
        hi = np.asarray(hard_items, np.int64)
        keep = ~is_pos(hu, hi)
        hu, hi = hu[keep], hi[keep]
        order = np.argsort(hu, kind="stable")
        hu, hi = hu[order], hi[order]
        n_users = int(max(users.max(initial=0), hu.max(initial=0))) + 1
        counts = np.bincount(hu, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        hard = (rng.random(n) < hard_share) & (counts[users] > 0)
        hu_sel = users[hard]
        pick = starts[hu_sel] + np.floor(rng.random(len(hu_sel)) * counts[hu_sel]).astype(
            np.int64)
        items[hard] = hi[pick]
    for _ in range(max_rounds):
        clash = ~hard & is_pos(users, items)
        if not clash.any():
            break
        items[clash] = popular(int(clash.sum()))
    return users, items


# --------------------------------------------------------------------------- files


def save_model(model: nn.Module, folder: Path, extra: dict[str, Any] | None = None,
               all_ranks: bool = False) -> bool:
    """``model.json`` (constructor arguments + ``extra``) and ``model.pt`` (state dict).
    Under DDP only rank 0 writes unless ``all_ranks``; returns whether this rank wrote."""
    if not all_ranks and not is_main_process():
        return False
    model = _unwrap(model)
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
    """The model saved by ``save_model`` (weights_only load, no pickle) and its extra."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    model = build_model(meta["model"])
    state = torch.load(folder / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device), meta.get("extra", {})
