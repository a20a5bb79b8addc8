"""The stages in DAG order, each declaring the stages it reads and the folder it writes.

A stage module exposes ``run(cfg, out) -> dict``: it reads its inputs through
``stage_dir``, writes files into ``out`` (a temp folder renamed into place by the
runner) and returns what the manifest should record beyond the common fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType

from features.interactions import IdIndex
from pipeline.config import Config
from pipeline.io import read_table


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str
    inputs: tuple[str, ...]
    module: str

    def load(self) -> ModuleType:
        return import_module(f"pipeline.stages.{self.module}")


STAGES: tuple[Stage, ...] = (
    Stage("ingest", "raw", (), "ingest"),
    Stage("split", "split", ("ingest",), "split"),
    Stage("recall", "recall", ("split", "ingest"), "recall"),
    Stage("train-fm", "models/fm", ("recall", "split", "ingest"), "train_fm"),
    Stage("features", "features", ("train-fm", "recall", "split", "ingest"), "features"),
    Stage("train-rank", "models/ranker", ("features",), "train_rank"),
    Stage("rank", "rank", ("train-rank", "features", "split"), "rank"),
    Stage("evaluate", "eval", ("rank", "features", "train-fm", "recall", "split", "ingest"),
          "evaluate"),
    Stage("report", "report", ("evaluate",), "report"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}") from None


def stage_dir(cfg: Config, name: str) -> Path:
    """The folder a stage writes for this config's dataset."""
    return cfg.root / get_stage(name).folder


def read_catalogue(cfg: Config) -> IdIndex:
    """The item vocabulary every stage ranks over: all ingested items, in table order."""
    return IdIndex(read_table(stage_dir(cfg, "ingest") / "items.parquet", columns=["item_id"])
                   ["item_id"])
