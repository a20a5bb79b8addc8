"""rank: the final top-k per request, ranked by the trained rankers and their blend.

The test-phase candidates carry features from models refitted on train + valid; the
rankers and blend weights learned on the valid phase order them. The published phase's
candidates (every active user, models fitted on everything) are ordered by the rankers
trained on the test phase, with the same blend weights, into ``publish.top_k`` items
each with the channels that proposed them. Writes per phase and kind the final
``ranking`` (the blend, or the main ranker with ``rank.blend: false``) and every
system's own lists (``system_ranking``). Recommendations never include the user's
fitted items (recall removes them); this stage asserts it against the split, since a
leak here would inflate every metric or publish what a user already has.
"""

from __future__ import annotations

import pandas as pd

from models.blend import blend_scores
from models.ranker import FoldEnsemble
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.io import ChunkedParquetWriter, iter_requests, link_or_copy, read_table
from pipeline.protocol import EVALUATED, KINDS, PUBLISHED, RECOMMENDATION, Phase, request_key
from pipeline.ranking import blend_components, proposing_channels, system_file, top_k


def assert_unseen(recs: pd.DataFrame, fitted: pd.DataFrame) -> None:
    seen = recs.merge(fitted[[S.USER, S.ITEM]].drop_duplicates(), on=[S.USER, S.ITEM])
    if len(seen):
        raise AssertionError(f"{len(seen)} recommendations are items the user already has, "
                             f"e.g. {seen.head(3).to_dict('records')}")


def rank_phase(io: StageIO, phase: Phase, kind: str, k: int) -> dict[str, int]:
    """Rank one phase's candidates of one kind with every ranker and the blend; returns
    the rows written per system. The published lists carry the proposing channels."""
    cfg = io.cfg
    rankers = {name: FoldEnsemble.load(io.input("ranker", phase=phase.name, kind=kind,
                                                objective=name))
               for name in cfg.rank.objectives}
    blend = io.read_json("blend", kind=kind)
    key = request_key(kind)
    final = "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}"
    names = [*(f"ltr:{n}" for n in rankers), "blend"]
    writers = {n: ChunkedParquetWriter(io.output("system_ranking", phase=phase.name, kind=kind,
                                                 system=system_file(n))) for n in names}
    channels = [n for n, c in cfg.recall.channels.items() if c.recommend]
    extra = ("channels",) if phase is PUBLISHED else ()
    source = io.input("features", phase=phase.name, kind=kind)
    for frame in iter_requests(source, key, cfg.features.request_chunk * cfg.recall.budget):
        if extra:
            frame["channels"] = proposing_channels(frame, channels)
        scores = {name: ranker.predict(frame) for name, ranker in rankers.items()}
        systems = {f"ltr:{name}": s for name, s in scores.items()}
        systems["blend"] = blend_scores(
            blend_components(frame, key, scores, blend["channels"]), blend["weights"])
        for name, values in systems.items():
            writers[name].write(top_k(frame, key, values, k, extra))
    empty = pd.DataFrame(columns=[*dict.fromkeys([key, S.USER]), S.ITEM, *extra, S.SCORE,
                                  S.RANK])
    for writer in writers.values():
        writer.close(empty)
    final_path = io.output("ranking", phase=phase.name, kind=kind)
    link_or_copy(io.output("system_ranking", phase=phase.name, kind=kind,
                           system=system_file(final)), final_path)
    fitted = pd.concat([io.read("split", columns=[S.USER, S.ITEM], part=p)
                        for p in phase.fit], ignore_index=True)
    assert_unseen(read_table(final_path), fitted)
    return {name: writer.rows for name, writer in writers.items()}


def run(cfg: Config, io: StageIO) -> dict:
    trained = [k for k in KINDS if io.has("blend", kind=k)]
    rows = {kind: rank_phase(io, EVALUATED, kind, cfg.rank.top_k) for kind in trained}
    rows["publish"] = rank_phase(io, PUBLISHED, RECOMMENDATION, cfg.publish.top_k)
    published = read_table(io.output("ranking", phase=PUBLISHED.name, kind=RECOMMENDATION),
                           columns=[S.USER])
    return {"status": "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}",
            "rows": rows, "published_users": int(published[S.USER].nunique())}
