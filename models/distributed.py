"""Data-parallel training set-up: process group, rank, and each rank's share of an epoch.

``torchrun`` sets RANK and WORLD_SIZE; ``init_distributed`` joins the group (gloo on CPU,
nccl on CUDA). Every rank draws the same seeded permutation and takes every
``world``-th sample of it, padded so all ranks run the same number of steps.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


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
    """This process's rank and the number of ranks; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that logs and writes."""
    return rank_and_world()[0] == 0


def shard_order(n: int, epoch: int, seed: int, rank: int, world: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """This rank's sample order for an epoch: a seeded permutation shared by all ranks,
    padded by wrapping to a multiple of ``world``, every ``world``-th entry from ``rank``;
    drawn on ``device`` (a CUDA generator draws another permutation than the CPU's for the
    same seed, the same one every time on the same kind of card)."""
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen, device=device)
    if world > 1:
        pad = (-n) % world
        if pad:
            perm = torch.cat([perm, perm[:pad]])
        perm = perm[rank::world]
    return perm


def place(model: nn.Module, device: torch.device) -> tuple[nn.Module, torch.device]:
    """Move ``model`` to this rank's device (``cuda`` means the rank's LOCAL_RANK card) and,
    with several ranks, wrap it in DistributedDataParallel so steps average gradients.
    Returns the module to step and the device."""
    world = rank_and_world()[1]
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model.to(device)
    if world == 1:
        return model, device
    ids = [device.index or 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids), device


def broadcast_value(value: float) -> float:
    """Rank 0's ``value`` on every rank (so all ranks take the same early-stopping
    decision); the value itself outside a process group."""
    if rank_and_world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
