"""Optimisers for the FM and FFM tables.

Models with dense gradients (the default for small tables) use torch's fused Adagrad or
Adam. With sparse gradients the row-sparse optimisers here update only the rows a batch
touched. Adagrad's update of an untouched row is zero anyway, so ``RowSparseAdagrad``
equals dense Adagrad exactly; ``RowSparseAdam`` is the lazy variant (moments of untouched
rows stand still), like ``torch.optim.SparseAdam``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


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
