"""rank: the final top-k per test user, written to ``rank/recommendations.parquet``.

With no trained ranker the order is the recall merge order, scored 1 / merge_rank.
Candidates never include items from the user's fitted history (recall removes them),
and this stage asserts it against the split, since a leak here would inflate every metric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import schema as S
from pipeline.config import Config
from pipeline.io import read_manifest, read_table, write_table
from pipeline.stages import stage_dir


def assert_unseen(recs: pd.DataFrame, fitted: pd.DataFrame) -> None:
    seen = recs.merge(fitted[[S.USER, S.ITEM]].drop_duplicates(), on=[S.USER, S.ITEM])
    if len(seen):
        raise AssertionError(f"{len(seen)} recommendations are items the user already has, "
                             f"e.g. {seen.head(3).to_dict('records')}")


def run(cfg: Config, out: Path) -> dict:
    ranker = read_manifest(stage_dir(cfg, "train-rank")).get("ranker")
    if ranker is not None:  # pragma: no cover - arrives with the learning-to-rank issue
        raise NotImplementedError("a trained ranker is not supported by this rank stage yet")
    cands = read_table(stage_dir(cfg, "train-fm") / "candidates.parquet",
                       columns=[S.USER, S.ITEM, "merge_rank"])
    recs = cands[cands["merge_rank"] <= cfg.rank.top_k].sort_values(
        [S.USER, "merge_rank"], kind="stable")
    recs = pd.DataFrame({S.USER: recs[S.USER].to_numpy(), S.ITEM: recs[S.ITEM].to_numpy(),
                         S.RANK: recs["merge_rank"].to_numpy(np.int32),
                         S.SCORE: (1.0 / recs["merge_rank"].to_numpy(np.float64))})
    split = stage_dir(cfg, "split")
    fitted = pd.concat([read_table(split / f"{p}.parquet", columns=[S.USER, S.ITEM])
                        for p in ("train", "valid")], ignore_index=True)
    assert_unseen(recs, fitted)
    write_table(recs, out / "recommendations.parquet")
    return {"status": "merge order (no trained ranker yet)", "rows": len(recs),
            "users": int(recs[S.USER].nunique())}
