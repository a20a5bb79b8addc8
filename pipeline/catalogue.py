"""The artifact catalogue: every file a stage writes, and what each stage reads.

A stage never spells a path. It declares the artifacts it reads and writes (by name, in
``STAGES``) and asks its ``StageIO`` for them with their keys (``phase``, ``kind``,
``channel``, ...); asking for an undeclared one is an error, so the table below is the
whole data flow. The runner derives each stage's upstream stages from it, the Makefile
rules are generated from it (``python -m pipeline makefile``), and each manifest records
the config sections and code the stage depended on.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.io import MANIFEST, read_table


@dataclass(frozen=True)
class Artifact:
    """A file or folder of one stage, at ``pattern`` (``{key}`` fields) in its folder."""

    stage: str
    pattern: str
    meaning: str

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.pattern) if f)


ARTIFACTS: dict[str, Artifact] = {
    "interactions": Artifact("ingest", "interactions.parquet", "the validated log"),
    "items": Artifact("ingest", "items.parquet", "the item catalogue"),
    "users": Artifact("ingest", "users.parquet", "the users table"),
    "split": Artifact("split", "{part}.parquet", "train, valid or test interactions"),
    "candidates": Artifact("recall", "{phase}/{kind}/candidates.parquet",
                           "merged candidates with every channel's evidence"),
    "channel_list": Artifact("recall", "{phase}/{kind}/channels/{channel}.parquet",
                             "one channel's own top list per request"),
    "cases": Artifact("recall", "{phase}/search/cases.parquet",
                      "search requests with their clicked item"),
    "recall_model": Artifact("recall", "{phase}/models/{channel}", "a fitted channel"),
    "tuned": Artifact("recall", "tuned.json", "choices made on valid: epochs, quotas"),
    "fm_model": Artifact("train-fm", "{phase}/{model}", "an FM or FFM model and encoder"),
    "scored_candidates": Artifact("train-fm", "{phase}/candidates.parquet",
                                  "recommendation candidates with FM/FFM scores"),
    "fm_metrics": Artifact("train-fm", "metrics.json", "AUC, logloss, epochs per model"),
    "features": Artifact("features", "{phase}/{kind}.parquet",
                         "ranker features per candidate (labelled on valid)"),
    "feature_columns": Artifact("features", "features.json",
                                "feature columns per kind and their meaning"),
    "ranker": Artifact("train-rank", "{phase}/{kind}/{objective}",
                       "LightGBM models that rank the phase's candidates"),
    "blend": Artifact("train-rank", "{kind}/blend.json", "blend components and weights"),
    "importance": Artifact("train-rank", "{kind}/importance.json", "gain per feature"),
    "ranker_metrics": Artifact("train-rank", "metrics.json", "out-of-fold NDCG per ranker"),
    "ranking": Artifact("rank", "{phase}/{kind}.parquet", "the final top-k per request"),
    "system_ranking": Artifact("rank", "{phase}/systems/{kind}/{system}.parquet",
                               "each ranker's and the blend's own top-k"),
    "metrics": Artifact("evaluate", "metrics.json", "offline metrics with intervals"),
    "per_user": Artifact("evaluate", "per_user.parquet",
                         "every system's metrics@10 per evaluated user or search case"),
    "report": Artifact("report", "index.html", "the HTML report"),
    "recommendations": Artifact("publish", "recommendations.parquet",
                                "top publish.top_k per active user, with channels"),
    "cold_start": Artifact("publish", "cold_start.parquet",
                           "per-region top list for users the data has never seen"),
    "served": Artifact("publish", "{component}",
                       "what a later request needs: models, blend, id maps"),
}


@dataclass(frozen=True)
class Stage:
    """A stage: its output folder, module, the artifacts it reads and writes, and the
    config sections it reads (a change there reruns it; ``threads`` where the result may
    depend on the thread count: torch, LightGBM)."""

    name: str
    folder: str
    module: str
    reads: tuple[str, ...]
    config: tuple[str, ...]
    external: bool = False  # reads files from outside: its module's external_inputs(cfg)

    @property
    def writes(self) -> tuple[str, ...]:
        return tuple(n for n, a in ARTIFACTS.items() if a.stage == self.name)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Upstream stages, in DAG order."""
        wanted = {ARTIFACTS[n].stage for n in self.reads}
        return tuple(s for s in STAGE_NAMES if s in wanted)

    def load(self) -> ModuleType:
        return import_module(f"pipeline.stages.{self.module}")

    def external_inputs(self, cfg: Config) -> dict[str, str] | None:
        """Content hashes of the files the stage reads from outside the pipeline."""
        return self.load().external_inputs(cfg) if self.external else None


_FITTING = ("split", "items", "users")
STAGES: tuple[Stage, ...] = (
    Stage("ingest", "raw", "ingest", (), ("source", "ingest", "seed"), external=True),
    Stage("split", "split", "split", ("interactions", "items"), ("split", "seed")),
    Stage("recall", "recall", "recall", _FITTING, ("recall", "publish", "seed", "threads")),
    Stage("train-fm", "models/fm", "train_fm", (*_FITTING, "candidates"),
          ("fm", "seed", "threads")),
    Stage("features", "features", "features",
          (*_FITTING, "recall_model", "cases", "candidates", "scored_candidates"),
          ("features", "recall", "publish", "seed")),
    Stage("train-rank", "models/ranker", "train_rank", ("features", "feature_columns", "split"),
          ("rank", "recall", "features", "seed", "threads", "dask")),
    Stage("rank", "rank", "rank", ("ranker", "blend", "features", "split", "items"),
          ("rank", "features", "recall", "publish")),
    Stage("evaluate", "eval", "evaluate",
          ("split", "items", "candidates", "channel_list", "cases", "scored_candidates",
           "ranking", "system_ranking", "ranker_metrics", "importance"),
          ("evaluate", "recall", "fm", "rank", "split", "seed", "dataset")),
    Stage("report", "report", "report", ("metrics", "tuned", "blend"),
          ("source", "ingest", "split", "recall", "fm", "features", "rank", "evaluate",
           "publish", "gate", "seed", "dataset")),
    Stage("publish", "publication", "publish",
          ("ranking", "recall_model", "fm_model", "ranker", "blend", "feature_columns",
           "tuned", "items", "users", "split"), ("publish", "recall", "fm", "rank")),
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


def artifact_path(cfg: Config, name: str, **keys: Any) -> Path:
    """Where artifact ``name`` lives once its stage has run (for tests and tools)."""
    artifact = ARTIFACTS[name]
    return stage_dir(cfg, artifact.stage) / _fill(name, artifact, keys)


def config_sections(cfg: Config, stage: Stage) -> dict[str, Any]:
    """The parts of the config ``stage`` reads, as recorded in its manifest."""
    tree = cfg.to_dict()
    return {key: tree[key] for key in stage.config}


def _fill(name: str, artifact: Artifact, keys: dict[str, Any]) -> str:
    if set(keys) != set(artifact.keys):
        raise KeyError(f"artifact {name!r} is keyed by {list(artifact.keys)}, "
                       f"got {sorted(keys)}")
    return artifact.pattern.format(**keys)


class StageIO:
    """The paths one stage may use: its declared inputs (where their stages wrote them)
    and its own outputs (inside the temporary folder the runner renames into place)."""

    def __init__(self, cfg: Config, stage: Stage, out: Path) -> None:
        self.cfg, self.stage, self.out = cfg, stage, out

    def input(self, name: str, **keys: Any) -> Path:
        if name not in self.stage.reads:
            raise KeyError(f"stage {self.stage.name!r} does not declare {name!r} among its "
                           f"reads ({', '.join(self.stage.reads)}); add it in the catalogue")
        return artifact_path(self.cfg, name, **keys)

    def has(self, name: str, **keys: Any) -> bool:
        """Whether an input was written (search artifacts exist only with search cases)."""
        return self.input(name, **keys).exists()

    def read(self, name: str, columns: list[str] | None = None, **keys: Any) -> pd.DataFrame:
        return read_table(self.input(name, **keys), columns)

    def read_json(self, name: str, **keys: Any) -> Any:
        return json.loads(self.input(name, **keys).read_text())

    def output(self, name: str, **keys: Any) -> Path:
        """The path to write ``name`` to; its parent folders are created."""
        artifact = ARTIFACTS.get(name)
        if artifact is None or artifact.stage != self.stage.name:
            raise KeyError(f"stage {self.stage.name!r} does not write {name!r}; it writes "
                           f"{', '.join(self.stage.writes)}")
        path = self.out / _fill(name, artifact, keys)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_json(self, name: str, value: Any, **keys: Any) -> None:
        self.output(name, **keys).write_text(json.dumps(value, indent=2, default=float) + "\n")

    def upstream_manifests(self) -> dict[str, dict]:
        """Every earlier stage's manifest that exists (the report notes their status)."""
        found = {}
        for name in STAGE_NAMES[: STAGE_NAMES.index(self.stage.name)]:
            path = stage_dir(self.cfg, name) / MANIFEST
            if path.is_file():
                found[name] = json.loads(path.read_text())
        return found
