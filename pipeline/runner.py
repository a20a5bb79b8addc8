"""Runs one stage safely: inputs present, exclusive lock, atomic output, manifest last.

The manifest records what the stage depended on: its input stages' manifests (by hash),
the config sections it reads, the hash of every source file it runs and of the files it
reads from outside (the logs ingest loads); ``up_to_date`` compares them with now.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.catalogue import STAGE_NAMES, StageIO, config_sections, get_stage, stage_dir
from pipeline.config import Config
from pipeline.dependencies import code_hashes
from pipeline.io import MANIFEST, atomic_folder, file_hash, library_versions, write_manifest
from pipeline.ordering import order_free

log = logging.getLogger("pipeline")


class MissingInputError(RuntimeError):
    """A stage was asked to run before the stage it reads from."""


def set_threads(n: int) -> None:
    """Pin BLAS/OpenMP pools: on 2 shared cores oversubscribed threads spin at barriers."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)


def _input_hashes(cfg: Config, inputs: tuple[str, ...]) -> dict[str, str]:
    hashes = {}
    for name in inputs:
        folder = stage_dir(cfg, name)
        if not (folder / MANIFEST).is_file():
            raise MissingInputError(
                f"stage input '{name}' is missing ({folder / MANIFEST}); "
                f"run `python -m pipeline {name}` (or `make {name}`) first"
            )
        hashes[str(folder / MANIFEST)] = file_hash(folder / MANIFEST)
    return hashes


def dependencies(cfg: Config, name: str) -> dict[str, Any]:
    """What stage ``name`` would depend on if it ran now: the config sections it reads,
    the hash of each source file it runs, and (``external_inputs(cfg)``, where the stage
    module has one) the hashes of files outside the pipeline, such as the logs ingested."""
    stage = get_stage(name)
    depends = {"config": config_sections(cfg, stage), "code": code_hashes(stage)}
    if stage.external:
        depends["external"] = stage.external_inputs(cfg)
    return depends


def up_to_date(cfg: Config, name: str) -> bool:
    """Whether the stage's output was made from exactly what it would read now (by
    content hash: inputs' manifests, config sections, code, external files) with the
    same library versions."""
    path = stage_dir(cfg, name) / MANIFEST
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    try:
        inputs = _input_hashes(cfg, get_stage(name).inputs)
    except MissingInputError:
        return False
    return (manifest.get("inputs") == inputs and manifest.get("versions") == library_versions()
            and manifest.get("depends") == json.loads(json.dumps(dependencies(cfg, name),
                                                                 default=str)))


def stage_config(cfg: Config, name: str) -> Config:
    """The config stage ``name`` runs with: after the split of a log without time (its
    manifest says), the order-free one (``pipeline.ordering``), the same for every stage.
    Dependencies are hashed on ``cfg`` itself: the split's output, an input, decides."""
    split_manifest = stage_dir(cfg, "split") / MANIFEST
    if STAGE_NAMES.index(name) <= STAGE_NAMES.index("split") or not split_manifest.is_file():
        return cfg
    timed = json.loads(split_manifest.read_text()).get("timed", True)
    return cfg if timed else order_free(cfg)[0]


def run_stage(cfg: Config, name: str) -> dict:
    """Run stage ``name`` and return its manifest."""
    stage = get_stage(name)
    inputs = _input_hashes(cfg, stage.inputs)
    module = stage.load()
    run_cfg = stage_config(cfg, name)
    if int(os.environ.get("RANK", "0")) > 0:
        # A DDP worker under torchrun: it trains alongside rank 0, which alone writes the
        # stage's output; whatever this rank writes goes to a scratch folder.
        with tempfile.TemporaryDirectory() as scratch:
            module.run(run_cfg, StageIO(run_cfg, stage, Path(scratch)))
        return {}
    target = stage_dir(cfg, name)
    started = time.perf_counter()
    log.info("[%s] start -> %s", name, target)
    depends = dependencies(cfg, name)  # before the run: a log landing meanwhile is new
    with atomic_folder(target) as out:  # next time, never hashed as read and left unread
        extra = module.run(run_cfg, StageIO(run_cfg, stage, out)) or {}
        seconds = round(time.perf_counter() - started, 3)
        manifest = write_manifest(out, stage=name, config=run_cfg.to_dict(), inputs=inputs,
                                  depends=depends, seconds=seconds, **extra)
    log.info("[%s] done in %.1fs (%s)", name, seconds, extra.get("status", "ok"))
    return manifest


def run_until(cfg: Config, until: str | None = None) -> None:
    last = STAGE_NAMES.index(until) if until else len(STAGE_NAMES) - 1
    for name in STAGE_NAMES[: last + 1]:
        run_stage(cfg, name)
