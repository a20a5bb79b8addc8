"""Which publications ``prune`` keeps: the newest ``publish.keep`` in time, not by name.

A log without time has the as-of 1970 every night, so its runs publish under one run id
numbered on (``release``: ``<run id>.<n>``), and by name ``.10`` sorts before ``.9``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import load_config
from pipeline.release import CURRENT, PUBLISH, prune, publication_order

REPO = Path(__file__).resolve().parents[2]
RUN = "19700101T000000-c84fca49"


def test_publication_order_numbers_runs_of_one_id() -> None:
    names = [RUN, f"{RUN}.10", f"{RUN}.2", f"{RUN}.9", "20260301T000000-aaaaaaaa"]
    assert sorted(names, key=publication_order) == [
        RUN, f"{RUN}.2", f"{RUN}.9", f"{RUN}.10", "20260301T000000-aaaaaaaa"]


def test_prune_keeps_the_newest_of_one_run_id(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "synthetic.yaml",
                      [f"data_dir={tmp_path}", "publish.keep=3"])
    root = cfg.root / PUBLISH
    names = [RUN, *(f"{RUN}.{n}" for n in range(2, 12))]  # eleven nights
    for name in names:
        (root / name).mkdir(parents=True)
    os.symlink(f"{RUN}.11", root / CURRENT)
    removed = prune(cfg)
    assert sorted(p.name for p in root.iterdir() if not p.is_symlink()) == sorted(
        [f"{RUN}.11", f"{RUN}.10", f"{RUN}.9"])
    assert sorted(removed) == sorted(names[:8])
