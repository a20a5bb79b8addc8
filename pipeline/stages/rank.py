"""rank: the final top-k per test request, ranked by the trained rankers and their blend.

The test-phase candidates carry features from models refitted on train + valid; the
rankers and blend weights learned on the valid phase order them. Writes per kind the
final ``ranking`` (the blend, or the main ranker with ``rank.blend: false``) and every
system's own lists (``system_ranking``) for the ablation. Recommendations
never include the user's fitted items (recall removes them); this stage asserts it
against the split, since a leak here would inflate every metric.
"""

from __future__ import annotations

import pandas as pd

from models.blend import blend_scores
from models.ranker import FoldEnsemble
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.io import ChunkedParquetWriter, iter_requests, link_or_copy, read_table
from pipeline.protocol import EVALUATED, KINDS, RECOMMENDATION, request_key
from pipeline.ranking import blend_components, system_file, top_k


def assert_unseen(recs: pd.DataFrame, fitted: pd.DataFrame) -> None:
    seen = recs.merge(fitted[[S.USER, S.ITEM]].drop_duplicates(), on=[S.USER, S.ITEM])
    if len(seen):
        raise AssertionError(f"{len(seen)} recommendations are items the user already has, "
                             f"e.g. {seen.head(3).to_dict('records')}")


def rank_kind(io: StageIO, kind: str) -> dict[str, int]:
    """Rank one kind's test candidates with every ranker and the blend; rows written."""
    cfg = io.cfg
    rankers = {name: FoldEnsemble.load(io.input("ranker", kind=kind, objective=name))
               for name in cfg.rank.objectives}
    blend = io.read_json("blend", kind=kind)
    key = request_key(kind)
    final = "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}"
    names = [*(f"ltr:{n}" for n in rankers), "blend"]
    writers = {n: ChunkedParquetWriter(io.output("system_ranking", kind=kind,
                                                 system=system_file(n))) for n in names}
    source = io.input("features", phase=EVALUATED.name, kind=kind)
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
    link_or_copy(io.output("system_ranking", kind=kind, system=system_file(final)),
                 io.output("ranking", kind=kind))
    return {name: writer.rows for name, writer in writers.items()}


def run(cfg: Config, io: StageIO) -> dict:
    trained = [k for k in KINDS if io.has("blend", kind=k)]
    rows = {kind: rank_kind(io, kind) for kind in trained}
    recs = read_table(io.output("ranking", kind=RECOMMENDATION))
    fitted = pd.concat([io.read("split", columns=[S.USER, S.ITEM], part=p)
                        for p in EVALUATED.fit], ignore_index=True)
    assert_unseen(recs, fitted)
    return {"status": "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}",
            "rows": rows, "users": int(recs[S.USER].nunique())}
