"""rank: the final top-k per request, ranked by the trained rankers and their blend.

The test-phase candidates carry features from models refitted on train + valid; the
rankers and the blend decided on the valid phase order them. The published phase's
candidates (every active user, models fitted on everything) are ordered by the rankers
trained on the test phase, with the same blend, into ``publish.top_k`` items
each with the channels that proposed them. Writes per phase and kind the final
``ranking`` (the blend, or the main ranker with ``rank.blend: false``) and, for the
test phase that evaluate scores, every system's own lists (``system_ranking``; the
published phase keeps only the final system's). Recommendations never include the user's
fitted items (recall removes them); this stage asserts it against the split, since a
leak here would inflate every metric or publish what a user already has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from models.blend import blend_scores
from models.ranker import FoldEnsemble, ensemble_scores
from pipeline import schema as S
from pipeline.catalogue import StageIO
from pipeline.config import Config
from pipeline.engine import engine_for
from pipeline.io import (
    finish_parts,
    iter_requests,
    read_table,
    table_columns,
    table_parts,
    write_frames,
    write_part,
)
from pipeline.progress import progress
from pipeline.protocol import EVALUATED, KINDS, PUBLISHED, RECOMMENDATION, Phase, request_key
from pipeline.ranking import blend_components, system_file, top_k

FILL_PAIRS = 4_000_000  # (user, item) pairs built at once while filling short lists


def assert_unseen(recs: pd.DataFrame, fitted: pd.DataFrame) -> None:
    seen = recs.merge(fitted[[S.USER, S.ITEM]].drop_duplicates(), on=[S.USER, S.ITEM])
    if len(seen):
        raise AssertionError(f"{len(seen)} recommendations are items the user already has, "
                             f"e.g. {seen.head(3).to_dict('records')}")


def system_scores(frame: pd.DataFrame, key: str, rankers: dict[str, FoldEnsemble],
                  blend: dict, only: str | None = None) -> dict[str, np.ndarray]:
    """Every ranker's scores (``ltr:<objective>``) and the blend's, for featurised
    candidates: what the batch ranks and a served request ranks, by the same code.
    ``only``: that system alone, from the rankers it reads (a served request needs the
    final system, and a blend can leave a ranker out)."""
    if only is not None:
        reads = set(blend["weights"]) if only == "blend" else {only}
        rankers = {name: r for name, r in rankers.items() if f"ltr:{name}" in reads}
    scores = ensemble_scores(frame, rankers)
    systems = {f"ltr:{name}": s for name, s in scores.items()}
    if only in (None, "blend"):
        systems["blend"] = blend_scores(blend_components(frame, key, scores,
                                                         blend["channels"]), blend["weights"])
    return systems


def rank_part(shard: tuple[int, Path], key: str, rows: int, rankers: dict[str, FoldEnsemble],
              blend: dict, channels: list[str] | None, k: int, targets: dict[str, Path]
              ) -> dict[str, int]:
    """Part ``index`` of a phase's features ranked by every ranker and the blend, each
    system's top ``k`` per request written as part ``index`` of ``targets[system]``, in
    pieces of about ``rows`` rows; the published lists (``channels`` given) carry the
    channels that proposed each item. Returns the rows written per system."""
    index, source = shard
    pieces: dict[str, list[pd.DataFrame]] = {name: [] for name in targets}
    needed = {key, S.USER, S.ITEM, "merge_rank",
              *(c for ranker in rankers.values() for c in ranker.feature_names),
              *(f"{c}_rank" for c in [*blend["channels"], *(channels or [])])}
    for frame in iter_requests(source, key, rows,
                               [c for c in table_columns(source) if c in needed]):
        for name, values in system_scores(frame, key, rankers, blend).items():
            if name in pieces:
                pieces[name].append(top_k(frame, key, values, k, channels))
    return {name: write_part(targets[name], index, frames)
            for name, frames in pieces.items() if frames}


def rank_phase(io: StageIO, phase: Phase, kind: str, k: int) -> tuple[dict[str, int], int]:
    """Rank one phase's candidates of one kind with every ranker and the blend, a part
    at a time (``rank_part``) on the configured engine, then write the final system's
    lists (``final_lists``); returns the rows written per system and the users ranked."""
    cfg = io.cfg
    rankers = {name: FoldEnsemble.load(io.input("ranker", phase=phase.name, kind=kind,
                                                objective=name))
               for name in cfg.rank.objectives}
    key = request_key(kind)
    final = "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}"
    # only the test phase's systems are evaluated: the publication needs its final one
    names = [final] if phase is PUBLISHED else [*(f"ltr:{n}" for n in rankers), "blend"]
    targets = {n: io.output("system_ranking", phase=phase.name, kind=kind,
                            system=system_file(n)) for n in names}
    channels = [n for n, c in cfg.recall.channels.items() if c.recommend]
    extra = ("channels",) if phase is PUBLISHED else ()
    source = io.input("features", phase=phase.name, kind=kind)
    shards = list(enumerate(table_parts(source)))
    done = engine_for(cfg).map(rank_part, shards, key=key,
                               rows=cfg.features.request_chunk * cfg.recall.budget,
                               rankers=rankers, blend=io.read_json("blend", kind=kind),
                               channels=channels if extra else None, k=k, targets=targets)
    rows = dict.fromkeys(names, 0)
    for written in progress(done, f"rank {phase.name} {kind}", total=len(shards)):
        for name, n in written.items():
            rows[name] += n
    empty = pd.DataFrame(columns=[*dict.fromkeys([key, S.USER]), S.ITEM, *extra, S.SCORE,
                                  S.RANK])
    for folder in targets.values():
        finish_parts(folder, empty)
    fitted = pd.concat([io.read("split", columns=[S.USER, S.ITEM], part=p)
                        for p in phase.fit], ignore_index=True)
    fill = (fill_order(fitted, io.read("items", columns=[S.ITEM])) if phase is PUBLISHED
            else None)
    users = []  # per part (the published parts hold whole users: its requests are users)

    def counted(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            users.append(frame[S.USER].nunique())
            yield frame

    write_frames(io.output("ranking", phase=phase.name, kind=kind),
                 counted(final_lists(table_parts(targets[final]), fitted, fill, k)))
    return rows, sum(users)


def final_lists(parts: list[Path], fitted: pd.DataFrame, fill: np.ndarray | None, k: int
                ) -> Iterator[pd.DataFrame]:
    """The final system's lists a part at a time (a part holds whole users), padded to
    ``k`` from ``fill`` where given (the publication) and checked against the users'
    fitted items (``assert_unseen``). Only one part and its users' history are held, not
    the phase: at 1M users the published lists are 100M rows with their channels, and
    holding them with the 19.9M fitted pairs peaked at 13.9 GB."""
    fitted = fitted.sort_values(S.USER, kind="stable", ignore_index=True)
    fitted_users = fitted[S.USER].to_numpy()
    for part in parts:
        lists = read_table(part)
        own = fitted.iloc[rows_of(fitted_users, lists[S.USER].unique())]
        if fill is not None:
            lists = padded(lists, own, fill, k)
        assert_unseen(lists, own)
        yield lists


def rows_of(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The positions in ``sorted_keys`` of every element equal to one of ``keys``
    (distinct), grouped by key in ``keys``' order."""
    lo = np.searchsorted(sorted_keys, keys, "left")
    n = np.searchsorted(sorted_keys, keys, "right") - lo
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
    return starts + np.arange(int(n.sum()))


def fill_order(fitted: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """The items a short list is filled from, in order: the most used (by distinct
    users), then the rest of the catalogue in table order."""
    order = fitted.drop_duplicates([S.USER, S.ITEM])[S.ITEM].value_counts()
    return pd.concat([pd.Series(order.index), items[S.ITEM][~items[S.ITEM].isin(
        order.index)]], ignore_index=True).to_numpy()


def padded(lists: pd.DataFrame, fitted: pd.DataFrame, order: np.ndarray, k: int
           ) -> pd.DataFrame:
    """Published lists filled up to ``k`` where the candidates ran short: the items of
    ``order`` (``fill_order``) the user neither has (``fitted``: at least the short
    users' rows) nor was given, scored below the user's ranked items, with ``channels``
    "popularity-fill". A list stays shorter only where the catalogue minus the user's
    history is smaller than ``k``."""
    counts = lists.groupby(S.USER).size()
    short = counts[counts < k].index
    if not len(short):
        return lists
    taken = pd.concat([fitted[fitted[S.USER].isin(short)][[S.USER, S.ITEM]],
                       lists[lists[S.USER].isin(short)][[S.USER, S.ITEM]]]).drop_duplicates()
    # a user's fill lies within the first k + |taken| items: bound the pairs built
    catalogue = order[: k + int(taken.groupby(S.USER).size().max())]
    floors = lists.groupby(S.USER)[S.SCORE].min()  # per user: served alone, the same
    fills = []
    block = max(1, FILL_PAIRS // len(catalogue))
    for lo in range(0, len(short), block):
        users = short[lo: lo + block].to_numpy()
        pairs = pd.DataFrame({S.USER: np.repeat(users, len(catalogue)),
                              S.ITEM: np.tile(catalogue, len(users))})
        pairs = pairs.merge(taken.assign(taken=True), on=[S.USER, S.ITEM], how="left")
        pairs = pairs[pairs["taken"].isna()].drop(columns="taken")
        pairs[S.RANK] = (pairs.groupby(S.USER).cumcount()
                         + counts.reindex(pairs[S.USER]).to_numpy() + 1).astype(np.int32)
        fills.append(pairs[pairs[S.RANK] <= k])
    fill = pd.concat(fills, ignore_index=True)
    floor = floors.reindex(fill[S.USER]).fillna(0.0).to_numpy(np.float64)
    fill = fill.assign(channels="popularity-fill",
                       **{S.SCORE: floor - fill[S.RANK].to_numpy(np.float64)})
    out = pd.concat([lists, fill[lists.columns]], ignore_index=True)
    return out.sort_values([S.USER, S.RANK], kind="stable").reset_index(drop=True)


def run(cfg: Config, io: StageIO) -> dict:
    trained = [k for k in KINDS if io.has("blend", kind=k)]
    rows = {kind: rank_phase(io, EVALUATED, kind, cfg.rank.top_k)[0] for kind in trained}
    rows["publish"], published_users = rank_phase(io, PUBLISHED, RECOMMENDATION,
                                                  cfg.publish.top_k)
    return {"status": "blend" if cfg.rank.blend else f"ltr:{cfg.rank.objective}",
            "rows": rows, "published_users": published_users}
