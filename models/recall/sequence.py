"""Sequence: the next item after each user's ordered recent items (real-time behaviour).

A SASRec-style causal self-attention model (``models.sequence``) reads a user's latest
``max_len`` fitted items and scores every item of the catalogue as the next one.

Training rows are windows of ``max_len + 1`` items cut from the end of each user's
sequence; ``windows`` keeps the latest few per user (1 = only the last max_len + 1
items, 0 = all, so every transition of the fitting data is learned once). On ML-100K
valid, all windows gave NDCG@10 0.178 against 0.169 for the last window only, at about
twice the training time.

Fitting with held-out pairs trains until the held-out NDCG@``eval_k`` stops improving
(checked every ``eval_every`` epochs, stopping after ``patience`` checks without a new
best; full ranking over all items with the user's fitted items removed; every held-out
user counts, one without history scores 0, or a seeded sample of them where users x
items passes ``tune_cells``), restores the best weights and reports their
epoch count through ``tuned()``. Fitting with ``epochs`` set (the refit on more data)
trains exactly that many epochs and looks at nothing held out; with neither, it trains
``max_epochs``.

The full softmax over the catalogue costs most of an epoch on a large one (10k items:
2.7-2.8x the time of an epoch with 1,024 sampled negatives). Past ``SAMPLED_FROM`` x
``negatives`` items, training uses a sampled softmax over ``negatives`` items a batch
(``negatives=0``: always the full one). On synthetic-10k valid it reached held-out
NDCG@10 0.173 against 0.179 for the full softmax; ML-100K and the synthetic default
(under 4,096 items) keep the full softmax. Past ``SPARSE_FROM`` items the item table is
updated sparsely too on the CPU (``models.sequence.optimizers``): a dense Adam step over
it was most of an epoch there (143-150 s an epoch at 300k items).

Seeded and deterministic on CPU for a given thread count (``threads``: training's;
scoring runs on the process's); ``device="cuda"`` moves the
model and batches to the GPU (asked for without one, it logs an error and uses the CPU).
Saved as a torch state dict (``model.pt``, loaded with ``weights_only=True``) beside the
settings, the trained epoch count and the per-epoch history.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.recall_data import RecallData
from models.base import HeldOut, RecallChannel, held_out_sample, remembered, top_k, user_chunks
from models.metrics import hits_from_keys, ndcg_at_k
from models.sequence import SASRec, last_tokens, next_item_scores, train, training_windows

log = logging.getLogger("pipeline")


def resolve_device(device: str) -> str:
    """``device`` when usable; CPU (with an error logged) when CUDA is asked but absent."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.error("[sequence] device %r asked but CUDA is not available; using cpu", device)
        return "cpu"
    return device


class SequenceChannel(RecallChannel):
    name = "sequence"
    state = ("trained_epochs", "history")
    SAMPLED_FROM = 4  # catalogues past this many times ``negatives`` use a sampled softmax
    SPARSE_FROM = 50_000  # and past this many items, sparse updates of the item table

    def __init__(self, d: int = 64, blocks: int = 2, heads: int = 1, max_len: int = 50,
                 dropout: float = 0.2, norm_first: bool = True, windows: int = 0,
                 lr: float = 3e-3, weight_decay: float = 0.0, batch_size: int = 128,
                 max_epochs: int = 200, patience: int = 5, eval_every: int = 1,
                 eval_k: int = 10, epochs: int | None = None, device: str = "cpu",
                 seed: int = 42, threads: int | None = None, negatives: int = 1024,
                 tune_cells: int = 10**9) -> None:
        if threads is None:
            threads = int(os.environ.get("OMP_NUM_THREADS", 1))
        self.params: dict[str, Any] = {
            "d": d, "blocks": blocks, "heads": heads, "max_len": max_len, "dropout": dropout,
            "norm_first": norm_first, "windows": windows, "lr": lr,
            "weight_decay": weight_decay, "batch_size": batch_size, "max_epochs": max_epochs,
            "patience": patience, "eval_every": eval_every, "eval_k": eval_k, "epochs": epochs,
            "device": device, "seed": seed, "threads": threads, "negatives": negatives,
            "tune_cells": tune_cells,
        }
        self.device = resolve_device(device)
        self.model: SASRec | None = None
        self.trained_epochs = 0
        self.history: list[dict] = []

    def _new_model(self, n_items: int, sparse: bool = False) -> SASRec:
        p = self.params
        return SASRec(n_items, d=p["d"], blocks=p["blocks"], heads=p["heads"],
                      max_len=p["max_len"], dropout=p["dropout"], norm_first=p["norm_first"],
                      sparse=sparse)

    def _held_out_metric(self, data: RecallData, held_out: HeldOut):
        """Mean held-out NDCG@eval_k over the held-out users (full ranking, seen removed),
        a seeded sample of them where users x items passes ``tune_cells``: the ranking
        runs every epoch, and on 20k users of a 300k-item catalogue it took about 80 s
        of an epoch (deduced: 113 s ranking every user, 45 s ranking a sixth)."""
        users, pairs = held_out_sample(held_out, data.n_items, None, self.params["seed"],
                                       self.params["tune_cells"])
        n_relevant = np.bincount(np.searchsorted(users, pairs // data.n_items),
                                 minlength=len(users))
        k, max_len = self.params["eval_k"], self.params["max_len"]

        def evaluate(model: SASRec) -> float:
            total = 0.0
            for rows in user_chunks(len(users), data.n_items):
                block = users[rows]
                tokens = last_tokens(data.log, block, max_len)
                scores = next_item_scores(model, tokens, device=self.device)
                scores[~(tokens != 0).any(axis=1)] = -np.inf
                seen_r, seen_c = data.history[block].nonzero()
                scores[seen_r, seen_c] = -np.inf
                lo, hi = np.searchsorted(pairs, [block[0] * data.n_items,
                                                 (block[-1] + 1) * data.n_items])
                local = pairs[lo:hi]  # re-keyed by row within the chunk
                user_of = np.searchsorted(block, local // data.n_items)
                local = user_of * data.n_items + local % data.n_items
                hits = hits_from_keys(top_k(scores, k).items, local, data.n_items)
                total += ndcg_at_k(hits, n_relevant[rows], k).sum()
            return total / max(len(users), 1)

        return evaluate

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> SequenceChannel:
        p = self.params
        torch.set_num_threads(p["threads"])
        torch.manual_seed(p["seed"])
        negatives = p["negatives"] if data.n_items > self.SAMPLED_FROM * p["negatives"] else 0
        # on a GPU a dense step over the table is cheap, and the sparse one is untimed
        sparse = bool(negatives) and data.n_items > self.SPARSE_FROM and self.device == "cpu"
        self.model = self._new_model(data.n_items, sparse).to(self.device)
        sequences = training_windows(data.log, p["max_len"], p["windows"])
        if negatives:
            log.info("[sequence] %d items: sampled softmax over %d negatives a batch%s",
                     data.n_items, negatives,
                     ", the item table updated sparsely" if sparse else "")
        look = held_out is not None and p["epochs"] is None
        result = train(self.model, sequences, lr=p["lr"], weight_decay=p["weight_decay"],
                       batch_size=p["batch_size"],
                       max_epochs=p["max_epochs"] if p["epochs"] is None else p["epochs"],
                       patience=p["patience"], eval_every=p["eval_every"], seed=p["seed"],
                       device=self.device,
                       evaluate=self._held_out_metric(data, held_out) if look else None,
                       name=self.name, negatives=negatives)
        self.trained_epochs, self.history = result.epochs, result.history
        return self

    def tuned(self) -> dict[str, Any]:
        return {"epochs": self.trained_epochs}

    def is_fitted(self) -> bool:
        """The weights are what scoring needs (``state`` holds only the epoch record)."""
        return self.model is not None

    @remembered
    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        """On the process's threads, not ``threads`` (the fit's): the CLI pins them, and
        a served request of one user on two threads spun at OpenMP barriers (8 -> 300 ms
        on two busy cores). The thread count leaves the scores' bits as they are."""
        self._require_fitted()
        tokens = last_tokens(data.log, np.asarray(users), self.params["max_len"])
        scores = next_item_scores(self.model, tokens, device=self.device)
        scores[~(tokens != 0).any(axis=1)] = -np.inf
        return scores

    def _save_extra(self, folder: Path) -> None:
        torch.save(self.model.state_dict(), folder / "model.pt")

    def _load_extra(self, folder: Path) -> None:
        weights = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        model = self._new_model(weights["item_emb.weight"].shape[0] - 1)  # row 0: padding
        model.load_state_dict(weights)
        self.model = model.to(self.device).eval()
