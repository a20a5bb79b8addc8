"""`make bench-fm`: our FFM and FM against torchfm's and xlearn's on the ML-100K CTR set.

Every torch model goes through the same trainer (``models.fm_trainer.fit``): same k,
batch size, epoch cap, early stopping on validation AUC, one thread, Adagrad. torchfm's
models are called through their own layers (``linear``, ``ffm``, ``embedding``, ``fm``;
only the final sigmoid is left to the loss) and trained with ``torch.optim.Adagrad``
(fused, weight decay), as a torchfm user would.
torchfm takes one id per field, so its genres field is the movie's genre combination;
ours and xlearn's see the genres as one multi-valued field (weights 1/n).

Throughput is training samples per second of wall time inside the training steps (no
data preparation, no validation). After the runs that give the AUCs, every model takes
ROUNDS more timed turns, the models taking turns, and keeps its best: every turn repeats
the same work, so the best is the least disturbed by other load, and taking turns
spreads a change in that load over all of them. A torch turn is one epoch (0.3-1.6 s), a
native turn the mean of NATIVE_TURN_EPOCHS epochs (one is 20-80 ms, at the mercy of a
single disturbance). xlearn takes its turns in those rounds: each turn a fit without a
validation set, 30 epochs on the same libffm file, the rate from xlearn's own per-epoch
times (their mean); the best whole fit, reading the text file included, is reported
beside it. The turns a ratio compares come next to each other (a model's native
two-thread turn, its one-thread turn, xlearn's), so that each round's ratio sees one
state of the machine (``paired_ratio``). Test AUC is sklearn's on the last 10% of
ratings. The synthetic set
(``benchmarks.ctr_data.synthetic_ctr``) is run with our FFM only.

Native rows train the same FM and FFM modules with the same hyperparameters through the
same trainer with ``backend="native"`` (``models.fm_kernel``): one numba thread
(deterministic) and two (Hogwild), with batch-mean steps and with per-sample steps
("sample" rows, their own lr); torch and torchfm keep one thread. torchfm and xlearn
rows (xlearn's FFM and FM) are skipped when they are not installed.

Hyperparameters were chosen on validation AUC (never test) and are fixed below.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmarks.common import record
from benchmarks.ctr_data import LABEL, ML100K, CtrSet, ml100k_ctr, synthetic_ctr
from features.fields import EncodedFields, FieldEncoder
from models.ffm import FFM
from models.fm import FM
from models.fm_trainer import History, Samples, TrainConfig, binary_metric, fit, predict

K = 4
BATCH = 256
THREADS = 1
EPOCHS = 40
PATIENCE = 3
SEED = 0
ROUNDS = 11  # timed turns per model: two-thread ratios here spread 1.15-2.07 round to round
# (benchmarks/RESULTS.md, "fm"), and five rounds' median moved by up to 0.46 run to run
NATIVE_TURN_EPOCHS = 10  # epochs in a native turn, whose rate is their mean
# Ours: Adagrad with lazy per-sample L2 and a small initialisation.
OURS_FFM = {"lr": 0.03, "l2": 1e-2, "init_std": 0.001}
OURS_FM = {"lr": 0.03, "l2": 1e-2, "init_std": 0.001}
SYNTHETIC_FFM = {"lr": 0.1, "l2": 1e-2, "init_std": 0.001}  # 0.03 ran into the epoch cap
# Native per-sample steps (native_update="sample"): lr on ML-100K valid AUC, l2 as above:
# FFM 0.6967/0.6988/0.6992/0.6993/0.6952 and FM 0.6922/0.6959/0.6966/0.6945/0.6938 at lr
# 0.003/0.01/0.03/0.1/0.3; 0.03 for both (FFM's 0.1 is level with it)
SAMPLE_LR = {"ffm": 0.03, "fm": 0.03}


def native_row(model: str, update: str, threads: int) -> str:
    """A native row's name: ``native FFM, 1 thread``, ``native FM sample, 2 threads``."""
    return f"native {model}{' sample' * (update == 'sample')}, {threads} " \
           f"thread{'s' * (threads > 1)}"
# torchfm: torch.optim.Adagrad with weight decay, torchfm's own (xavier) initialisation.
TORCHFM = {"ffm": {"lr": 0.05, "weight_decay": 1e-3}, "fm": {"lr": 0.05, "weight_decay": 1e-3}}
# xlearn: its defaults (lr 0.2, lambda 2e-5, Adagrad, instance normalisation) but k, the
# epoch cap and early stopping as above.
XLEARN = {"lr": 0.2, "lambda": 0.00002}
XLEARN_TIMING_EPOCHS = 30


# --------------------------------------------------------------------------- helpers


def samples(enc: FieldEncoder, df: pd.DataFrame) -> Samples:
    e = enc.transform(df)
    return Samples(e.ids, e.weights, df[LABEL].to_numpy(np.float32))


def train_cfg(**over: Any) -> TrainConfig:
    base = {"optimizer": "adagrad", "batch_size": BATCH, "epochs": EPOCHS,
            "patience": PATIENCE, "seed": SEED, "threads": THREADS}
    return TrainConfig(**{**base, **over})


class Contender:
    """A trained model plus what ``epochs`` more timed training epochs of it take."""

    def __init__(self, model: nn.Module, tr: Samples, cfg: TrainConfig,
                 make_opt: Any = None, epochs: int = 1) -> None:
        self.model, self.tr, self.cfg, self.make_opt = model, tr, cfg, make_opt
        self.epochs = epochs

    def epoch_rate(self) -> float:
        """Training samples/s over the turn's epochs (wall time of the steps only)."""
        turn = TrainConfig(**{**self.cfg.__dict__, "epochs": self.epochs})
        opt = self.make_opt(self.model) if self.make_opt else None
        h: History = fit(self.model, self.tr, None, turn, optimizer=opt)
        return h.samples_per_second


def run_ours(kind: str, enc: FieldEncoder, tr: Samples, va: Samples, te: Samples,
             params: dict[str, float], sparse: bool | None = None, native_threads: int = 0,
             native_update: str = "batch") -> tuple[dict[str, Any], Contender]:
    """Our FM or FFM trained with torch, or with the native kernel on ``native_threads``
    (batch-mean or per-sample steps)."""
    cls = FFM if kind == "ffm" else FM
    model = cls(enc.n_features, enc.slot_field, k=K, sparse=sparse,
                init_std=params["init_std"], seed=SEED)
    backend = ({"backend": "native", "native_threads": native_threads,
                "native_update": native_update} if native_threads else {})
    cfg = train_cfg(lr=params["lr"], l2=params["l2"], **backend)
    h = fit(model, tr, va, cfg)
    result = {"test_auc": binary_metric("auc", te.labels, predict(model, te)),
              "valid_auc": h.best_metric, "epochs": len(h.epochs),
              "sparse": model.sparse, "run_samples_per_s": h.samples_per_second}
    return result, Contender(model, tr, cfg, epochs=NATIVE_TURN_EPOCHS if native_threads else 1)


class TorchfmLogits(nn.Module):
    """A torchfm model called through its own layers, returning logits.

    ``forward(ids, weights, l2)`` matches our trainer's call; ``ids`` are torchfm's
    per-field local indices, the weights (all one) and l2 (weight decay instead) unused.
    """

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, ids: torch.Tensor, weights: torch.Tensor, l2: float = 0.0) -> torch.Tensor:
        x = ids.long()
        m = self.model
        if self.kind == "ffm":
            out = m.linear(x) + torch.sum(torch.sum(m.ffm(x), dim=1), dim=1, keepdim=True)
        else:
            out = m.linear(x) + m.fm(m.embedding(x))
        return out.squeeze(1)


def torchfm_view(enc: FieldEncoder, e: EncodedFields) -> np.ndarray:
    """Our single-slot encoding as torchfm's per-field local ids (global id - offset)."""
    offsets = np.array([enc.offsets[name] for name in enc.field_names])
    return (e.ids - offsets[None, :]).astype(np.int64)


def run_torchfm(kind: str, d: CtrSet) -> tuple[dict[str, Any], Contender]:
    from torchfm.model.ffm import FieldAwareFactorizationMachineModel
    from torchfm.model.fm import FactorizationMachineModel

    fields = dict(d.fields)
    fields["genres"] = {"kind": "categorical", "column": "genre_set"}
    parts = [df.assign(genre_set=["|".join(sorted(g)) for g in df["genres"]])
             for df in (d.train, d.valid, d.test)]
    enc = FieldEncoder(fields).fit(parts[0])
    tr, va, te = (Samples(torchfm_view(enc, enc.transform(p)),
                          np.ones((len(p), enc.n_fields), np.float32),
                          p[LABEL].to_numpy(np.float32)) for p in parts)
    dims = [enc.sizes[name] for name in enc.field_names]
    torch.manual_seed(SEED)
    inner = (FieldAwareFactorizationMachineModel(dims, K) if kind == "ffm"
             else FactorizationMachineModel(dims, K))
    model = TorchfmLogits(inner, kind)
    params = TORCHFM[kind]

    def make_opt(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adagrad(m.parameters(), lr=params["lr"],
                                   weight_decay=params["weight_decay"], fused=True)

    cfg = train_cfg(l2=0.0)
    h = fit(model, tr, va, cfg, optimizer=make_opt(model))
    result = {"test_auc": binary_metric("auc", te.labels, predict(model, te)),
              "valid_auc": h.best_metric, "epochs": len(h.epochs),
              "run_samples_per_s": h.samples_per_second}
    return result, Contender(model, tr, cfg, make_opt)


class Timed(Protocol):
    def epoch_rate(self) -> float: ...


def timed(contenders: Mapping[str, Timed], rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Each one's epoch rate in each of ``rounds`` rounds, taking turns in the mapping's
    order, so a change in the machine's other load falls on all of them alike."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, c in contenders.items():
            rates[name].append(c.epoch_rate())
    return rates


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a``'s rate over ``b``'s in the same round. The machine
    here slows as a whole for seconds at a time (two one-thread processes side by side
    each ran 535-864 ns a sample, epoch to epoch), so the bests of two rows can come from
    different phases; turns next to each other share one."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


def turn_order(contenders: Mapping[str, Timed], timers: Mapping[str, Timed]
               ) -> dict[str, Timed]:
    """The contenders in their order, with the turns each ratio compares next to each
    other (``paired_ratio``): a model's native two-thread turn, its one-thread turn, then
    xlearn's turn of the same model (``timers``, by row name) where there is one."""
    turns: dict[str, Timed] = {}
    for name, c in contenders.items():
        model = next((m for m in ("FFM", "FM") if name == native_row(m, "batch", 1)), None)
        two = native_row(model, "batch", 2) if model is not None else None
        if two in contenders:
            turns[two] = contenders[two]
        turns.setdefault(name, c)  # a two-thread row placed already keeps its place
        if model is not None and f"xlearn {model}" in timers:
            turns[f"xlearn {model}"] = timers[f"xlearn {model}"]
    return turns


# --------------------------------------------------------------------------- xlearn


def write_libffm(path: Path, s: Samples, slot_field: np.ndarray) -> None:
    """libffm text: ``label field:feature:value`` for every non-padding slot."""
    with open(path, "w") as f:
        for ids, w, y in zip(s.ids.tolist(), s.weights.tolist(), s.labels.tolist(),  # type: ignore[union-attr]
                             strict=True):
            cells = [f"{slot_field[j]}:{i}:{v:.6g}" for j, (i, v) in enumerate(zip(ids, w,
                                                                                   strict=True))
                     if i]
            f.write(f"{int(y)} {' '.join(cells)}\n")


@contextlib.contextmanager
def captured_fd1(path: Path):
    """Send the process's file descriptor 1 (xlearn's C++ output) to ``path``."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


_EPOCH_ROW = re.compile(r"^\[\s*\d+%\s*\]\s+(\d+)\s+(.*)$")


def epoch_times(log_text: str) -> list[float]:
    """The last column (seconds) of xlearn's per-epoch rows."""
    clean = re.sub(r"\x1b\[[0-9;]*m", "", log_text)
    times = []
    for line in clean.splitlines():
        m = _EPOCH_ROW.match(line.strip())
        if m:
            times.append(float(m.group(2).split()[-1]))
    return times


class XlearnTimer:
    """xlearn's training rate, one timing fit per ``epoch_rate`` call, so that ``timed``
    gives it its turns among ours: a fit without a validation set, XLEARN_TIMING_EPOCHS
    epochs (xlearn prints each epoch's seconds to two decimals, too coarse for one epoch),
    the rate from its own per-epoch times. ``best_wall``: the best whole fit's rate,
    reading the text file included."""

    def __init__(self, create: Any, base: dict[str, Any], train: Path, n_train: int) -> None:
        self.create, self.base, self.train, self.n_train = create, base, train, n_train
        self.best_wall = 0.0

    def epoch_rate(self) -> float:
        model = self.create()
        model.setTrain(str(self.train))
        log = self.train.with_name("time.log")
        started = time.perf_counter()
        with captured_fd1(log):
            model.fit({**self.base, "epoch": XLEARN_TIMING_EPOCHS},
                      str(self.train.with_name("timing.out")))
        wall = time.perf_counter() - started
        self.best_wall = max(self.best_wall, self.n_train * XLEARN_TIMING_EPOCHS / wall)
        times = epoch_times(log.read_text())
        return self.n_train * len(times) / max(sum(times), 1e-9)


def run_xlearn(kind: str, enc: FieldEncoder, tr: Samples, va: Samples, te: Samples,
               folder: Path) -> tuple[dict[str, Any], XlearnTimer]:
    """xlearn's FFM or FM on the same libffm files, written under ``folder`` (its FM
    ignores the fields); the test AUC of a fit with early stopping, and its timer."""
    os.environ.setdefault("USER", "bench")  # xlearn aborts in fit() without it (NOTES.md)
    import xlearn as xl

    t = folder / kind
    t.mkdir()
    for name, s in (("train", tr), ("valid", va), ("test", te)):
        write_libffm(t / f"{name}.ffm", s, enc.slot_field)
    base = {"task": "binary", "k": K, "metric": "auc", "nthread": THREADS, **XLEARN}
    create = xl.create_ffm if kind == "ffm" else xl.create_fm
    model = create()
    model.setTrain(str(t / "train.ffm"))
    model.setValidate(str(t / "valid.ffm"))
    with captured_fd1(t / "fit.log"):
        model.fit({**base, "epoch": EPOCHS, "stop_window": PATIENCE}, str(t / "m.out"))
        model.setTest(str(t / "test.ffm"))
        model.setSigmoid()
        model.predict(str(t / "m.out"), str(t / "pred.txt"))
    n_epochs = len(epoch_times((t / "fit.log").read_text()))
    probs = np.loadtxt(t / "pred.txt", dtype=np.float64)
    auc = binary_metric("auc", te.labels, probs)  # type: ignore[arg-type]
    result = {"test_auc": auc, "valid_auc": None, "epochs": n_epochs}
    return result, XlearnTimer(create, base, t / "train.ffm", len(tr))


# --------------------------------------------------------------------------- main


def table(rows: dict[str, dict[str, Any]], n_train: int) -> str:
    lines = [f"| ML-100K CTR, {n_train} fitting samples, k={K}, batch={BATCH}, {THREADS} thread "
             "unless named | training samples/s | test AUC | valid AUC | epochs run |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        auc, vauc = (f"{r[key]:.4f}" if r.get(key) is not None else "-"
                     for key in ("test_auc", "valid_auc"))
        epochs = r.get("epochs") if r.get("epochs") is not None else "-"
        lines.append(f"| {name} | {r['samples_per_s']:.0f} | {auc} | {vauc} | {epochs} |")
    return "\n".join(lines)


def ml100k_rows() -> dict[str, dict[str, Any]]:
    d = ml100k_ctr(ML100K)
    enc = FieldEncoder(d.fields).fit(d.train)
    tr, va, te = samples(enc, d.train), samples(enc, d.valid), samples(enc, d.test)
    rows: dict[str, dict[str, Any]] = {}
    contenders: dict[str, Contender] = {}
    runs = []
    for kind, params in (("ffm", OURS_FFM), ("fm", OURS_FM)):
        name = kind.upper()
        runs += [(f"ours {name}", partial(run_ours, kind, enc, tr, va, te, params)),
                 *((native_row(name, u, n),
                    partial(run_ours, kind, enc, tr, va, te,
                            params if u == "batch" else {**params, "lr": SAMPLE_LR[kind]},
                            native_threads=n, native_update=u))
                   for u in ("batch", "sample") for n in (1, 2)),
                 (f"torchfm {name}", partial(run_torchfm, kind, d))]
    for name, run in runs:
        try:
            rows[name], contenders[name] = run()
        except ImportError as err:
            print(f"{name}: not installed ({err}); skipped", flush=True)
            continue
        print(f"{name}: {rows[name]}", flush=True)
    # the same FFM with row-sparse gradients and optimiser, timed only (the default picks
    # dense gradients for a table this small)
    dense = contenders["ours FFM"].model
    sparse = FFM(enc.n_features, enc.slot_field, k=K, sparse=True)
    sparse.load_state_dict(dense.state_dict())
    contenders["ours FFM, sparse gradients"] = Contender(sparse, tr,
                                                         contenders["ours FFM"].cfg)
    rows["ours FFM, sparse gradients"] = {"epochs": None}
    with tempfile.TemporaryDirectory() as tmp:
        timers: dict[str, XlearnTimer] = {}
        for kind in ("ffm", "fm"):
            name = f"xlearn {kind.upper()}"
            try:
                rows[name], timers[name] = run_xlearn(kind, enc, tr, va, te, Path(tmp))
            except ImportError as err:
                print(f"xlearn not installed ({err}); skipping it", flush=True)
                break
        for name, rates in timed(turn_order(contenders, timers)).items():
            rows[name]["samples_per_s"] = max(rates)
            rows[name]["round_rates"] = rates
        for name, timer in timers.items():
            rows[name]["fit_wall_samples_per_s"] = timer.best_wall
    return rows


def ml100k_summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rates, AUCs and the ratios the targets are stated in, for the rows that ran."""
    keys = {"ours FFM": "ffm", "ours FM": "fm", "torchfm FFM": "torchfm_ffm",
            "torchfm FM": "torchfm_fm", "xlearn FFM": "xlearn_ffm",
            "ours FFM, sparse gradients": "ffm_sparse_grad", "xlearn FM": "xlearn_fm"}
    keys.update({native_row(m, u, n): f"native_{m.lower()}{'_sample' * (u == 'sample')}_{n}t"
                 for m in ("FFM", "FM") for u in ("batch", "sample") for n in (1, 2)})
    out: dict[str, Any] = {}
    for name, key in keys.items():
        if name in rows:
            out[f"{key}_samples_per_s"] = round(rows[name]["samples_per_s"])
            if rows[name].get("test_auc") is not None:
                out[f"{key}_test_auc"] = round(rows[name]["test_auc"], 4)

    def ratio(a: str, b: str) -> float | None:
        if a not in rows or b not in rows:
            return None
        return round(rows[a]["samples_per_s"] / rows[b]["samples_per_s"], 2)

    def paired(a: str, b: str) -> float | None:
        if a not in rows or b not in rows:
            return None
        return round(paired_ratio(rows[a]["round_rates"], rows[b]["round_rates"]), 2)

    for m in ("FFM", "FM"):
        low = m.lower()
        out[f"native_{low}_speedup_vs_torch"] = ratio(native_row(m, "batch", 1), f"ours {m}")
        out[f"{low}_speedup_vs_torchfm"] = ratio(f"ours {m}", f"torchfm {m}")
        for u in ("batch", "sample"):
            key = f"native_{low}{'_sample' * (u == 'sample')}"
            out[f"{key}_2t_vs_1t"] = ratio(native_row(m, u, 2), native_row(m, u, 1))
            out[f"{key}_2t_vs_1t_paired"] = paired(native_row(m, u, 2), native_row(m, u, 1))
            out[f"{key}_speedup_vs_xlearn"] = ratio(native_row(m, u, 1), f"xlearn {m}")
        out[f"native_{low}_speedup_vs_xlearn_paired"] = paired(native_row(m, "batch", 1),
                                                                f"xlearn {m}")
        if f"xlearn {m}" in rows:
            out[f"xlearn_{low}_fit_wall_samples_per_s"] = round(
                rows[f"xlearn {m}"]["fit_wall_samples_per_s"])
    out["ffm_speedup_vs_xlearn"] = ratio("ours FFM", "xlearn FFM")
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    return {k: v for k, v in out.items() if v is not None}


def main() -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    summary: dict[str, Any] = {"load_average_1m_start": round(os.getloadavg()[0], 2)}
    rows: dict[str, dict[str, Any]] = {}
    n_train = 0
    if (Path(ML100K) / "u.data").is_file():
        rows = ml100k_rows()
        n_train = int(ml100k_ctr(ML100K).train.shape[0])
        summary.update(ml100k_summary(rows))
    else:
        print(f"MovieLens 100K not found at {ML100K}; ML-100K rows skipped", flush=True)

    syn = synthetic_ctr(SEED)
    senc = FieldEncoder(syn.fields).fit(syn.train)
    s_tr, s_va, s_te = samples(senc, syn.train), samples(senc, syn.valid), samples(senc, syn.test)
    synth, s_model = run_ours("ffm", senc, s_tr, s_va, s_te, SYNTHETIC_FFM)
    synth_rate = max(timed({"ours": s_model}, rounds=2)["ours"])
    summary.update({"synthetic_ffm_test_auc": round(synth["test_auc"], 4),
                    "synthetic_ffm_samples_per_s": round(synth_rate)})
    summary["seconds"] = round(time.perf_counter() - started, 1)

    text = table(rows, n_train) if rows else "ML-100K not available: no reference rows."
    text += (f"\n\nSynthetic CTR set ({len(syn.train)} fitting samples, one popularity "
             f"negative per event, {senc.n_fields} fields): our FFM {synth_rate:.0f} "
             f"samples/s, test AUC {synth['test_auc']:.4f} (valid {synth['valid_auc']:.4f}, "
             f"{synth['epochs']} epochs).")
    record("fm", "make bench-fm", summary, text)
    return summary


if __name__ == "__main__":
    main()
