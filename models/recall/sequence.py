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
user counts, one without history scores 0), restores the best weights and reports their
epoch count through ``tuned()``. Fitting with ``epochs`` set (the refit on more data)
trains exactly that many epochs and looks at nothing held out; with neither, it trains
``max_epochs``.

Seeded and deterministic on CPU for a given thread count; ``device="cuda"`` moves the
model and batches to the GPU (asked for without one, it logs an error and uses the CPU).
Saved as a torch state dict plus ``params.json``; loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.recall_data import RecallData
from models.base import HeldOut, RecallChannel, top_k, user_chunks
from models.sequence import SASRec, last_tokens, next_item_scores, train, training_windows

log = logging.getLogger("pipeline")


def resolve_device(device: str) -> str:
    """``device`` when usable; CPU (with an error logged) when CUDA is asked but absent."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.error("[sequence] device %r asked but CUDA is not available; using cpu", device)
        return "cpu"
    return device


def ndcg_per_user(top: np.ndarray, relevant: np.ndarray, n_relevant: np.ndarray,
                  n_items: int, k: int) -> np.ndarray:
    """NDCG@k of each row of ``top`` (item codes, -1 = none): binary gain, discount
    1 / log2(rank + 1), IDCG of min(n_relevant, k) hits; ``relevant`` holds the sorted
    keys row * n_items + item of the relevant pairs. A row with nothing retrieved is 0."""
    top = top[:, :k]
    keys = np.arange(len(top))[:, None] * n_items + top
    hits = np.isin(keys, relevant) & (top >= 0)
    disc = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    return (hits * disc).sum(axis=1) / ideal[np.minimum(n_relevant, k)]


class SequenceChannel(RecallChannel):
    name = "sequence"

    def __init__(self, d: int = 64, blocks: int = 2, heads: int = 1, max_len: int = 50,
                 dropout: float = 0.2, norm_first: bool = True, windows: int = 0,
                 lr: float = 3e-3, weight_decay: float = 0.0, batch_size: int = 128,
                 max_epochs: int = 200, patience: int = 5, eval_every: int = 1,
                 eval_k: int = 10, epochs: int | None = None, device: str = "cpu",
                 seed: int = 42, threads: int | None = None) -> None:
        if threads is None:
            threads = int(os.environ.get("OMP_NUM_THREADS", 1))
        self.params: dict[str, Any] = {
            "d": d, "blocks": blocks, "heads": heads, "max_len": max_len, "dropout": dropout,
            "norm_first": norm_first, "windows": windows, "lr": lr,
            "weight_decay": weight_decay, "batch_size": batch_size, "max_epochs": max_epochs,
            "patience": patience, "eval_every": eval_every, "eval_k": eval_k, "epochs": epochs,
            "device": device, "seed": seed, "threads": threads,
        }
        self.device = resolve_device(device)
        self.model: SASRec | None = None
        self.trained_epochs = 0
        self.history: list[dict] = []

    def _new_model(self, n_items: int) -> SASRec:
        p = self.params
        return SASRec(n_items, d=p["d"], blocks=p["blocks"], heads=p["heads"],
                      max_len=p["max_len"], dropout=p["dropout"], norm_first=p["norm_first"])

    def _held_out_metric(self, data: RecallData, held_out: HeldOut):
        """Mean held-out NDCG@eval_k over the held-out users (full ranking, seen removed)."""
        keep = (held_out.users >= 0) & (held_out.items >= 0)
        pairs = np.unique(held_out.users[keep] * data.n_items + held_out.items[keep])
        users, n_relevant = np.unique(pairs // data.n_items, return_counts=True)
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
                total += ndcg_per_user(top_k(scores, k).items, local, n_relevant[rows],
                                       data.n_items, k).sum()
            return total / max(len(users), 1)

        return evaluate

    def fit(self, data: RecallData, held_out: HeldOut | None = None) -> SequenceChannel:
        p = self.params
        torch.set_num_threads(p["threads"])
        torch.manual_seed(p["seed"])
        self.model = self._new_model(data.n_items).to(self.device)
        sequences = training_windows(data.log, p["max_len"], p["windows"])
        look = held_out is not None and p["epochs"] is None
        result = train(self.model, sequences, lr=p["lr"], weight_decay=p["weight_decay"],
                       batch_size=p["batch_size"],
                       max_epochs=p["max_epochs"] if p["epochs"] is None else p["epochs"],
                       patience=p["patience"], eval_every=p["eval_every"], seed=p["seed"],
                       device=self.device,
                       evaluate=self._held_out_metric(data, held_out) if look else None,
                       name=self.name)
        self.trained_epochs, self.history = result.epochs, result.history
        return self

    def tuned(self) -> dict[str, Any]:
        return {"epochs": self.trained_epochs}

    def score(self, data: RecallData, users: np.ndarray) -> np.ndarray:
        assert self.model is not None, "fit or load first"
        torch.set_num_threads(self.params["threads"])
        tokens = last_tokens(data.log, np.asarray(users), self.params["max_len"])
        scores = next_item_scores(self.model, tokens, device=self.device)
        scores[~(tokens != 0).any(axis=1)] = -np.inf
        return scores

    def save(self, folder: Path) -> None:
        assert self.model is not None, "fit or load first"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / "model.pt")
        meta = {"params": {**self.params, "epochs": self.trained_epochs},
                "n_items": self.model.n_items}
        (folder / "params.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> SequenceChannel:
        meta = json.loads((folder / "params.json").read_text())
        channel = cls(**meta["params"])
        channel.trained_epochs = meta["params"]["epochs"]
        model = channel._new_model(meta["n_items"])
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu",
                                         weights_only=True))
        channel.model = model.to(channel.device)
        return channel
