"""`make bench-cuda`: what one CUDA device gives the FM/FFM and sequence trainers (issue 17).

FM and FFM: the same modules through the same trainer (``models.fm_trainer.fit``) on the
device at batches ``BATCHES``, each with the best on valid AUC of the learning rates
bench-fm's lr x (batch / 256) ** ``LR_POWERS``, in float32 with captured steps (CUDA
graphs) and gradients summed through copies of the busiest rows
(``models.ffm.RowSpread``), once each in bf16, without graphs and without the copies,
dense gradients and the fitting set held on the device; against the same machine's CPU:
the native kernel (the CPU default) on every core (Hogwild). On ML-100K CTR (80k fitting
samples, small for a GPU) also the native kernel on one thread, torch on every core and
the device at batch 256 (the two paths issue 17 measured: 382k and 173k samples/s). Every
row is a full fit early-stopped on valid AUC (bench-fm's hyperparameters, k=4), so the
AUCs compare; rates are the median epoch's samples/s inside training steps after the first
epoch (compilation, warm-up, capture). The second set is the synthetic CTR set of
``SYNTH_USERS`` users (default 50k, about 3M fitting samples); ``SETS`` orders the two.

Sequence: the channel's defaults (``models.recall.sequence``: d 64, 2 blocks, 50 items,
every window, batch 128, 1,024 sampled negatives past 4,096 items) trained ``SEQ_EPOCHS``
epochs on the log of ``configs/synthetic-large.yaml``'s source at ``SEQ_USERS`` users
(default its 1M), every user's last event left out; epoch seconds on the device, and a CPU
epoch on every core estimated from a seeded 0.5% of the windows.

Without CUDA it says so and records nothing; ``DEVICE=cpu`` runs the device rows on the
CPU to check the script. ``ML100K_PATH`` points at MovieLens 100K. On one H200 with 16
cores both FM/FFM sets at 30k synthetic users took 2.5 minutes and the sequence epoch
about 5 (``SEQ_EPOCHS=0`` leaves it out).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.bench_fm import OURS_FFM, OURS_FM, PATIENCE, SEED, SYNTHETIC_FFM, K, samples
from benchmarks.common import record
from benchmarks.ctr_data import ML100K, ml100k_ctr, synthetic_ctr
from features.fields import FieldEncoder
from models.ffm import FFM
from models.fm import FM
from models.fm_trainer import Samples, TrainConfig, binary_metric, fit, predict

REPO = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("DEVICE", "cuda")
# 4096 with lr x 2 and 32768 as is: FFM 10.4x and 24x the CPU; 65536: FM's best, 12.8x
BATCHES = [int(b) for b in os.environ.get("BATCHES", "4096,32768,65536").split(",")]
# lr x (batch / 256) ** power. Earlier runs: 0.5 beat 0.75 at batches 4096 and 32768 and 1
# lost; 0 keeps a rare row's step (one sample per batch) what it is at batch 256
LR_POWERS = tuple(float(p) for p in os.environ.get("LR_POWERS", "0,0.25,0.5").split(","))
SYNTH_USERS = int(os.environ.get("SYNTH_USERS", 50_000))
SEQ_USERS = int(os.environ.get("SEQ_USERS", 0))  # 0: the large profile's own count
SEQ_EPOCHS = int(os.environ.get("SEQ_EPOCHS", 1))
SETS = os.environ.get("SETS", "ml100k,synthetic").split(",")  # the FM/FFM sets, in order
EPOCHS = 60  # cap; every fit stops early on valid AUC
CORES = os.cpu_count() or 1


def fm_row(kind: str, params: dict[str, float], tr: Samples, va: Samples, te: Samples,
           enc: FieldEncoder, **train: Any) -> dict[str, Any]:
    """One full fit of our FM or FFM: its AUCs, epochs, lr and training samples/s (the
    median epoch's after the first, which pays compilation and device warm-up)."""
    model = (FFM if kind == "ffm" else FM)(enc.n_features, enc.slot_field, k=K, sparse=False,
                                           init_std=params["init_std"], seed=SEED)
    cfg = TrainConfig(**{"optimizer": "adagrad", "lr": params["lr"], "l2": params["l2"],
                         "batch_size": 256, "epochs": EPOCHS, "patience": PATIENCE,
                         "seed": SEED, **train})
    h = fit(model, tr, va, cfg)
    probs = predict(model, te, device=cfg.device, backend=cfg.backend)
    rates = [e["samples_per_s"] for e in h.epochs[1:] or h.epochs]
    return {"samples_per_s": round(float(np.median(rates))), "lr": round(cfg.lr, 4),
            "test_auc": round(binary_metric("auc", te.labels, probs), 4),
            "valid_auc": round(h.best_metric, 4), "epochs": len(h.epochs)}


def fm_rows(set_name: str, tr: Samples, va: Samples, te: Samples, enc: FieldEncoder,
            ffm: dict[str, float], fm: dict[str, float], small: bool
            ) -> dict[str, dict[str, Any]]:
    """The CPU references and the device's batch sizes, for FFM and FM on one set; each
    large batch takes the better on valid AUC of lr x (batch / 256) ** LR_POWERS. A
    ``small`` set also gets torch on the CPU and the device at batch 256."""
    rows: dict[str, dict[str, Any]] = {}

    def run(name: str, kind: str, params: dict[str, float], **train: Any) -> dict[str, Any]:
        row = fm_row(kind, params, tr, va, te, enc, **train)
        print(f"{set_name} {kind.upper()}, {name}: {row}", flush=True)
        return row

    for kind, params in (("ffm", ffm), ("fm", fm)):
        runs: dict[str, dict[str, Any]] = {
            f"cpu native, {CORES} threads": {"backend": "native", "native_threads": CORES,
                                              "threads": CORES},
        }
        if small:
            runs["cpu native, 1 thread"] = {"backend": "native", "native_threads": 1,
                                            "threads": 1}
            runs[f"cpu torch, {CORES} threads"] = {"threads": CORES}
            runs[f"{DEVICE} batch 256"] = {"device": DEVICE}
        for name, train in runs.items():
            try:
                rows[f"{set_name} {kind.upper()}, {name}"] = run(name, kind, params, **train)
            except ImportError as err:  # numba missing on the device's machine
                print(f"{set_name} {kind.upper()}, {name}: skipped ({err})", flush=True)
        for batch in BATCHES:
            tried = [run(f"{DEVICE} batch {batch}, lr power {power}", kind, params,
                         device=DEVICE, batch_size=batch,
                         lr=params["lr"] * (batch / 256) ** power) for power in LR_POWERS]
            best = max(tried, key=lambda r: r["valid_auc"])
            rows[f"{set_name} {kind.upper()}, {DEVICE} batch {batch}"] = best
        for name, train in ((f"{DEVICE} batch {BATCHES[-1]}, bf16", {"bf16": True}),
                            (f"{DEVICE} batch {BATCHES[-1]}, no graphs", {"cuda_graphs": False}),
                            (f"{DEVICE} batch {BATCHES[-1]}, no row copies",
                             {"spread_rows": False})):
            rows[f"{set_name} {kind.upper()}, {name}"] = run(
                name, kind, params, device=DEVICE, batch_size=BATCHES[-1], lr=best["lr"],
                **train)
    return rows


def ml100k_section() -> dict[str, dict[str, Any]]:
    if not (ML100K / "u.data").is_file():
        print(f"MovieLens 100K not found at {ML100K}; its rows skipped", flush=True)
        return {}
    d = ml100k_ctr(ML100K)
    enc = FieldEncoder(d.fields).fit(d.train)
    return fm_rows("ML-100K", samples(enc, d.train), samples(enc, d.valid),
                   samples(enc, d.test), enc, OURS_FFM, OURS_FM, small=True)


def synthetic_section() -> dict[str, dict[str, Any]]:
    from pipeline.config import SyntheticSource

    syn = synthetic_ctr(SEED, SyntheticSource(n_users=SYNTH_USERS))
    enc = FieldEncoder(syn.fields).fit(syn.train)
    print(f"synthetic CTR: {len(syn.train)} fitting samples", flush=True)
    return fm_rows(f"synthetic {SYNTH_USERS // 1000}k", samples(enc, syn.train),
                   samples(enc, syn.valid), samples(enc, syn.test), enc, SYNTHETIC_FFM,
                   SYNTHETIC_FFM, small=False)


def sequence_section() -> dict[str, Any]:
    """Epoch seconds of the sequence channel's model on the large profile's log."""
    from models.recall.sequence import SequenceChannel
    from models.sequence import train, training_windows
    from pipeline import schema as S
    from pipeline.config import load_config
    from pipeline.sources.synthetic import generate

    src = load_config(REPO / "configs" / "synthetic-large.yaml").source
    if SEQ_USERS:
        src = src.model_copy(update={"n_users": SEQ_USERS})
    started = time.perf_counter()
    raw = generate(src, SEED).interactions[0][1]  # ids 1..n: the channel's codes are 0..n-1
    log = pd.DataFrame({"user": raw[S.USER].to_numpy() - 1, "item": raw[S.ITEM].to_numpy() - 1,
                        "ts": raw[S.TS].to_numpy()})
    log = log.sort_values(["user", "ts", "item"], kind="stable", ignore_index=True)
    last = np.r_[log["user"].to_numpy()[1:] != log["user"].to_numpy()[:-1], True]
    log = log[~last].reset_index(drop=True)  # every user's last event is held out
    channel = SequenceChannel(device=DEVICE, threads=CORES)
    p = channel.params
    windows = training_windows(log, p["max_len"], p["windows"])
    prepared = time.perf_counter() - started
    negatives = p["negatives"] if src.n_items > channel.SAMPLED_FROM * p["negatives"] else 0
    out: dict[str, Any] = {"users": src.n_users, "items": src.n_items, "events": len(log),
                           "windows": len(windows), "prepare_s": round(prepared, 1),
                           "negatives": negatives, "batch_size": p["batch_size"]}
    print(f"sequence: {out}", flush=True)

    def epochs(device: str, rows: np.ndarray, n: int) -> list[float]:
        torch.manual_seed(p["seed"])
        model = channel._new_model(src.n_items).to(device)
        result = train(model, rows, lr=p["lr"], batch_size=p["batch_size"], max_epochs=n,
                       seed=p["seed"], device=device, negatives=negatives)
        return [round(e["seconds"], 2) for e in result.history]

    torch.set_num_threads(CORES)
    out[f"{DEVICE}_epoch_s"] = epochs(DEVICE, windows, SEQ_EPOCHS)
    share = np.random.default_rng(SEED).random(len(windows)) < 0.005
    cpu = epochs("cpu", windows[share], 1)[0]
    out["cpu_epoch_s_estimated"] = round(cpu * len(windows) / max(int(share.sum()), 1), 1)
    out["cpu_threads"] = CORES
    print(f"sequence: {out}", flush=True)
    return out


def table(rows: dict[str, dict[str, Any]], seq: dict[str, Any] | None) -> str:
    head = ("| set, model, run | training samples/s | lr | test AUC | valid AUC | epochs |\n"
            "|---|---|---|---|---|---|\n")
    body = "".join(f"| {name} | {r['samples_per_s']:,} | {r['lr']} | {r['test_auc']:.4f} | "
                   f"{r['valid_auc']:.4f} | {r['epochs']} |\n" for name, r in rows.items())
    text = head + body
    if seq:
        text += (f"\nSequence channel on the large profile's log ({seq['users']:,} users, "
                 f"{seq['items']:,} items, {seq['events']:,} fitting events, "
                 f"{seq['windows']:,} windows, batch {seq['batch_size']}, "
                 f"{seq['negatives']} sampled negatives): epochs of "
                 f"{', '.join(f'{s} s' for s in seq[f'{DEVICE}_epoch_s'])} on {DEVICE}; "
                 f"a CPU epoch on {seq['cpu_threads']} threads about "
                 f"{seq['cpu_epoch_s_estimated']} s (from 0.5% of the windows).")
    return text


def main() -> dict[str, Any]:
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: bench-cuda records nothing (DEVICE=cpu checks the script)")
        return {}
    started = time.perf_counter()
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    sections = {"ml100k": ml100k_section, "synthetic": synthetic_section}
    rows: dict[str, dict[str, Any]] = {}
    seq = None
    for name in SETS:  # the sequence epoch after the first set
        rows.update(sections[name]())
        if seq is None and SEQ_EPOCHS:
            seq = sequence_section()
    summary: dict[str, Any] = {"device": device_name, "cpu_threads": CORES,
                               "torch": torch.__version__}
    for name, r in rows.items():
        summary[name] = r
    if seq:
        summary["sequence"] = seq
    summary["seconds"] = round(time.perf_counter() - started, 1)
    record("cuda", f"make bench-cuda (device {device_name})", summary, table(rows, seq))
    return summary


if __name__ == "__main__":
    main()
