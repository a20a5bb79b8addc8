"""rank: the final top-k per test request, ranked by the trained rankers and their blend.

The test-phase candidates carry features from models refitted on train + valid; the
rankers and blend weights learned on the valid phase order them. Writes
``recommendations.parquet`` (the final recommendation ranking: the blend, or the main
ranker with ``rank.blend: false``), ``search.parquet`` likewise for search cases, and
every system's own lists under ``systems/<kind>/`` for the ablation. Recommendations
never include the user's fitted items (recall removes them); this stage asserts it
against the split, since a leak here would inflate every metric.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from models.blend import blend_scores
from models.ranker import FoldEnsemble
from pipeline import schema as S
from pipeline.config import Config
from pipeline.io import ChunkedParquetWriter, iter_requests, link_or_copy, read_table
from pipeline.stages import stage_dir
from pipeline.stages.features import KINDS
from pipeline.stages.train_rank import blend_components, objectives, request_key

FINAL = {"recommendation": "recommendations.parquet", "search": "search.parquet"}


def assert_unseen(recs: pd.DataFrame, fitted: pd.DataFrame) -> None:
    seen = recs.merge(fitted[[S.USER, S.ITEM]].drop_duplicates(), on=[S.USER, S.ITEM])
    if len(seen):
        raise AssertionError(f"{len(seen)} recommendations are items the user already has, "
                             f"e.g. {seen.head(3).to_dict('records')}")


def top_k(frame: pd.DataFrame, key: str, scores: np.ndarray, k: int) -> pd.DataFrame:
    """Each request's k best candidates by ``scores`` (ties: merge order)."""
    keys = [c for c in (key, S.USER) if c in frame.columns]
    ordered = frame[[*dict.fromkeys(keys), S.ITEM, "merge_rank"]].assign(**{S.SCORE: scores})
    ordered = ordered.sort_values([key, S.SCORE, "merge_rank"], ascending=[True, False, True],
                                  kind="stable")
    ordered[S.RANK] = (ordered.groupby(key, sort=False).cumcount() + 1).astype(np.int32)
    return ordered[ordered[S.RANK] <= k].drop(columns="merge_rank").reset_index(drop=True)


def system_file(name: str) -> str:
    return name.replace(":", "-") + ".parquet"


def rank_kind(cfg: Config, kind: str, out: Path) -> dict[str, int]:
    """Rank one kind's test candidates with every ranker and the blend; rows written."""
    models = stage_dir(cfg, "train-rank") / kind
    rankers = {name: FoldEnsemble.load(models / name) for name in objectives(cfg)}
    blend = json.loads((models / "blend.json").read_text())
    key = request_key(kind)
    final = "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}"
    names = [*(f"ltr:{n}" for n in rankers), "blend"]
    (out / "systems" / kind).mkdir(parents=True)
    writers = {n: ChunkedParquetWriter(out / "systems" / kind / system_file(n)) for n in names}
    source = stage_dir(cfg, "features") / "test" / f"{kind}.parquet"
    for frame in iter_requests(source, key, cfg.features.request_chunk * cfg.recall.budget):
        scores = {name: ranker.predict(frame) for name, ranker in rankers.items()}
        systems = {f"ltr:{name}": s for name, s in scores.items()}
        systems["blend"] = blend_scores(
            blend_components(frame, key, scores, blend["channels"]), blend["weights"])
        for name, values in systems.items():
            writers[name].write(top_k(frame, key, values, cfg.rank.top_k))
    empty = pd.DataFrame(columns=[*dict.fromkeys([key, S.USER]), S.ITEM, S.SCORE, S.RANK])
    for writer in writers.values():
        writer.close(empty)
    link_or_copy(out / "systems" / kind / system_file(final), out / FINAL[kind])
    return {name: writer.rows for name, writer in writers.items()}


def run(cfg: Config, out: Path) -> dict:
    trained = [k for k in KINDS if (stage_dir(cfg, "train-rank") / k / "blend.json").is_file()]
    rows = {kind: rank_kind(cfg, kind, out) for kind in trained}
    recs = read_table(out / FINAL["recommendation"])
    split = stage_dir(cfg, "split")
    fitted = pd.concat([read_table(split / f"{p}.parquet", columns=[S.USER, S.ITEM])
                        for p in ("train", "valid")], ignore_index=True)
    assert_unseen(recs, fitted)
    return {"status": "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}",
            "rows": rows, "users": int(recs[S.USER].nunique())}
