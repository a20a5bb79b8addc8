"""evaluate: offline metrics on the test split, written to ``eval/metrics.json``.

Recommendation cases are the users' test interactions without a query; search cases are
the ones with a query (one case per interaction, its clicked item the relevant one).
For each kind: every recall channel alone as a ranker, candidate recall at several
depths and each channel's unique contribution, for both recall phases (valid, for
tuning; test, the honest figure). The final ranking is a recommendation ranking.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.interactions import IdIndex
from models.arrays import sorted_contains
from pipeline import schema as S
from pipeline.catalogue import StageIO, artifact_path
from pipeline.config import Config
from pipeline.evaluation.bootstrap import bootstrap_cis, paired_lift_ci
from pipeline.evaluation.protocol import (
    UserHits,
    evaluate_lists,
    mean_metrics,
    per_user_metrics,
    user_hits,
)
from pipeline.evaluation.search import HEAD, TAIL, search_report
from pipeline.evaluation.segments import segment_report
from pipeline.io import write_table
from pipeline.phases import item_catalogue, sample_size, sampled
from pipeline.protocol import (
    BACKTEST,
    CASE,
    EVALUATED,
    RECOMMENDATION,
    SEARCH,
    as_user_keyed,
    is_search,
    request_key,
)
from pipeline.ranking import system_file, top_k
from pipeline.splitting import PARTS

HEADLINE = ("ndcg@10", "recall@10", "hit_rate@10", "mrr@10", "coverage@10", "recall@100")


def format_table(systems: dict[str, dict[str, float]], columns: tuple[str, ...]) -> str:
    width = max(len(name) for name in systems) + 2
    lines = ["system".ljust(width) + "".join(c.rjust(13) for c in columns)]
    for name, row in systems.items():
        lines.append(name.ljust(width) + "".join(f"{row.get(c, float('nan')):13.4f}"
                                                 for c in columns))
    return "\n".join(lines)


def unique_hits(lists: dict[str, pd.DataFrame], relevant: pd.DataFrame) -> dict[str, float]:
    """Per channel: share of relevant (user, item) pairs that only this channel retrieved
    (a pair a channel lists twice is found twice: not unique). Each pair is one integer
    key (codes among the relevant users and items, sorted), so this is one sort of the
    keys found, not a merge and group-by of every listed row (2.9x faster, 20k users)."""
    pairs = relevant[[S.USER, S.ITEM]].drop_duplicates()
    users, items = (IdIndex(np.sort(pairs[c].unique())) for c in (S.USER, S.ITEM))

    def keys(df: pd.DataFrame) -> np.ndarray:
        u, i = users.encode(df[S.USER]), items.encode(df[S.ITEM])
        known = (u >= 0) & (i >= 0)
        return u[known] * len(items) + i[known]

    wanted = np.sort(keys(pairs))
    found = [k[sorted_contains(wanted, k)] for k in map(keys, lists.values())]
    channel = np.repeat(np.arange(len(found)), [len(k) for k in found])
    order = np.argsort(np.concatenate(found), kind="stable")
    ordered = np.concatenate(found)[order]
    pair = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1 if ordered.size else ordered
    single = np.bincount(pair)[pair] == 1
    only = np.bincount(channel[order][single], minlength=len(found))
    return {name: float(only[c] / max(len(pairs), 1)) for c, name in enumerate(lists)}


def candidate_report(io: StageIO, phase: str, kind: str, channels: list[str],
                     relevant: pd.DataFrame, items: IdIndex, ks: list[int], ns: list[int]
                     ) -> dict:
    """Channels alone as rankers, candidate recall@N and unique hits for one phase and
    kind (``relevant`` keyed by ``user_id``, a search case standing for a user)."""
    def read(name: str, columns: list[str], **keys: str) -> pd.DataFrame:
        return as_user_keyed(io.read(name, columns, phase=phase, kind=kind, **keys), kind)

    lists = {name: read("channel_list", list_columns(kind), channel=name) for name in channels}
    systems, recall = {}, {}
    for name, df in lists.items():
        full = evaluate_lists(df, relevant, items, sorted(set(ks) | set(ns)))
        systems[name] = {k: v for k, v in full.items()
                         if k == "users" or int(k.split("@")[1]) in ks}
        recall[name] = {f"recall@{n}": full[f"recall@{n}"] for n in ns}
    merged = evaluate_lists(read("candidates", [request_key(kind), S.ITEM, "merge_rank"]),
                            relevant, items, ns, rank_col="merge_rank")
    recall["merged"] = {f"recall@{n}": merged[f"recall@{n}"] for n in ns}
    return {"systems": systems, "candidate_recall": recall,
            "unique_hits": unique_hits(lists, relevant)}


def print_candidates(title: str, block: dict, ns: list[int]) -> None:
    table = {name: {**row, "unique": block["unique_hits"].get(name, float("nan"))}
             for name, row in block["candidate_recall"].items()}
    print(f"\n== {title} (share of relevant items in the first N; "
          "unique: found by no other channel) ==")
    print(format_table(table, (*(f"recall@{n}" for n in ns), "unique")))


def with_interval(systems: dict[str, dict], per_user: dict[str, pd.Series], k: int,
                  resamples: int, seed: int) -> None:
    """Add each system's NDCG@k bootstrap interval over users (same resamples for all:
    the systems of a kind, scored on the same users, share one draw)."""
    cis = bootstrap_cis([values.to_numpy() for values in per_user.values()], resamples, seed)
    for name, ci in zip(per_user, cis, strict=True):
        systems[name][f"ndcg@{k}_ci"] = [ci["low"], ci["high"]]


def lift_over_best(final: str, components: list[str], systems: dict[str, dict],
                   per_user: dict[str, pd.Series], k: int, resamples: int, seed: int) -> dict:
    """Paired bootstrap lift of ``final`` over the best of ``components`` (by NDCG@k)."""
    best = max(components, key=lambda n: (systems[n][f"ndcg@{k}"], n))
    a, b = per_user[final].align(per_user[best], join="inner")
    return {"system": final, "baseline": best,
            **paired_lift_ci(a.to_numpy(), b.to_numpy(), resamples, seed)}


def list_columns(kind: str) -> list[str]:
    """The columns of a ranked list that evaluation reads (lists also carry scores, and
    search lists each case's query: reading those would cost more than the metrics)."""
    return [request_key(kind), S.ITEM, S.RANK]


def ranked_systems(io: StageIO, kind: str, prefix: str) -> dict[str, pd.DataFrame]:
    """The rank stage's own lists per system (``ltr:<objective>``, ``blend``), in file
    name order."""
    names = [*(f"ltr:{n}" for n in io.cfg.rank.objectives), "blend"]
    return {prefix + name: as_user_keyed(
        io.read("system_ranking", list_columns(kind), phase=EVALUATED.name, kind=kind,
                system=system_file(name)),
        kind) for name in sorted(names, key=system_file)
        if io.has("system_ranking", phase=EVALUATED.name, kind=kind, system=system_file(name))}


def recall_reports(io: StageIO, parts: dict[str, pd.DataFrame], items: IdIndex, ks: list[int],
                   ns: list[int]) -> tuple[dict[str, dict], dict[str, pd.DataFrame]]:
    """Candidate reports per phase and kind, and the evaluated phase's relevant cases
    per kind (search cases keyed by ``user_id`` like users); ``parts``: the split."""
    cfg = io.cfg
    channels = [n for n, c in cfg.recall.channels.items() if c.recommend]
    report: dict[str, dict] = {}
    relevant: dict[str, pd.DataFrame] = {}
    for phase in BACKTEST:
        # the users recall answered
        part = sampled(parts[phase.target], sample_size(cfg, phase), cfg.seed)
        plain = part[~is_search(part)]
        report[phase.name] = {RECOMMENDATION: candidate_report(
            io, phase.name, RECOMMENDATION, channels, plain, items, ks, ns)}
        if io.has("cases", phase=phase.name):
            cases = as_user_keyed(io.read("cases", phase=phase.name), SEARCH)
            report[phase.name][SEARCH] = candidate_report(
                io, phase.name, SEARCH, list(cfg.recall.search_channels), cases, items, ks, ns)
            if phase is EVALUATED:
                relevant[SEARCH] = cases
        if phase is EVALUATED:
            relevant[RECOMMENDATION] = plain
    return report, relevant


def recommendation_lists(io: StageIO, k: int) -> dict[str, pd.DataFrame]:
    """Every recommendation system's top lists on the evaluated phase: the final ranking,
    each channel alone, the merged order, FM/FFM re-ranking the candidates, each ranker."""
    cfg, phase = io.cfg, EVALUATED.name
    columns = list_columns(RECOMMENDATION)
    lists = {"final": io.read("ranking", columns, phase=phase, kind=RECOMMENDATION)}
    for name in (n for n, c in cfg.recall.channels.items() if c.recommend):
        lists[f"channel:{name}"] = io.read("channel_list", columns, phase=phase,
                                           kind=RECOMMENDATION, channel=name)
    merged = io.read("candidates", [S.USER, S.ITEM, "merge_rank"], phase=phase,
                     kind=RECOMMENDATION)
    lists["merged (merge order)"] = merged.rename(columns={"merge_rank": S.RANK})
    for model in cfg.fm.models:
        cands = io.read("scored_candidates", [S.USER, S.ITEM, "merge_rank", f"{model}_score"],
                        phase=phase)
        lists[f"{model} (reranks candidates)"] = top_k(
            cands, S.USER, cands[f"{model}_score"].to_numpy(), k)
    lists.update(ranked_systems(io, RECOMMENDATION, ""))
    return lists


def search_lists(io: StageIO) -> dict[str, pd.DataFrame]:
    """The same for search cases (keyed by ``user_id``), prefixed ``search:``."""
    phase = EVALUATED.name
    columns = list_columns(SEARCH)
    lists = {f"search:channel:{name}": as_user_keyed(io.read(
        "channel_list", columns, phase=phase, kind=SEARCH, channel=name), SEARCH)
        for name in io.cfg.recall.search_channels}
    merged = io.read("candidates", [CASE, S.ITEM, "merge_rank"], phase=phase, kind=SEARCH)
    lists["search:merged (merge order)"] = as_user_keyed(merged, SEARCH).rename(
        columns={"merge_rank": S.RANK})
    lists.update(ranked_systems(io, SEARCH, "search:"))
    if io.has("ranking", phase=phase, kind=SEARCH):
        lists["search:final"] = as_user_keyed(io.read("ranking", columns, phase=phase,
                                                      kind=SEARCH), SEARCH)
    return lists


def score_systems(found: list[tuple[dict[str, pd.DataFrame], pd.DataFrame]], items: IdIndex,
                  ks: list[int]) -> tuple[dict[str, dict], dict[str, UserHits]]:
    """Every metric of every system, and its hits (for per-user values and segments)."""
    systems: dict[str, dict] = {}
    hits: dict[str, UserHits] = {}
    for lists, wanted in found:
        for name, df in lists.items():
            hits[name] = user_hits(df, wanted, items, max(ks))
            systems[name] = mean_metrics(hits[name], ks, len(items))
    return systems, hits


def per_user_frame(hits: dict[str, UserHits], k: int, fitting: pd.DataFrame) -> pd.DataFrame:
    """Every system's metrics@k per evaluated request (``eval/per_user.parquet``): ``kind``,
    ``system``, ``request`` (a user id, or a search case id) and, for recommendation, the
    user's fitted events, so that any slice of the reported means is one ``groupby``."""
    events = fitting[S.USER].value_counts()
    frames = []
    for name, found in hits.items():
        kind = SEARCH if name.startswith("search:") else RECOMMENDATION
        frame = per_user_metrics(found, k).reset_index(names="request")
        frame.insert(0, "system", name)
        frame.insert(0, "kind", kind)
        frame["fitted_events"] = (frame["request"].map(events).fillna(0).to_numpy(np.float64)
                                  if kind == RECOMMENDATION else np.nan)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def stored(table: pd.DataFrame) -> pd.DataFrame:
    """``per_user_frame``'s table as one Parquet column can hold ``request``: text user
    ids beside integer search case ids make it text (user ids that are integers keep
    it an integer column)."""
    if table["request"].dtype != object:
        return table
    return table.assign(request=table["request"].astype("string"))


def data_summary(io: StageIO, split: dict[str, pd.DataFrame]) -> dict:
    """Per split part: events, searches, users, items and the time range; and the search
    cases of each backtest phase (the report's data header)."""
    parts = {}
    for part, df in split.items():
        ts = df[S.TS]
        parts[part] = {"events": len(df), "searches": int(is_search(df).sum()),
                       "users": int(df[S.USER].nunique()), "items": int(df[S.ITEM].nunique()),
                       "first": str(ts.min()) if len(df) else None,
                       "last": str(ts.max()) if len(df) else None}
    cases = {phase.name: len(io.read("cases", [CASE], phase=phase.name))
             for phase in BACKTEST if io.has("cases", phase=phase.name)}
    return {"parts": parts, "search_cases": cases}


def print_search(search: dict, k: int) -> None:
    cases = search["cases"]
    print(f"\n== search: {cases[HEAD]} head cases (a query typed at least "
          f"{search['head_min_searches']} times in the fitting data) and {cases[TAIL]} tail ==")
    print(f"{'system':40s} {'no result':>10s} {f'head ndcg@{k}':>26s} {f'tail ndcg@{k}':>26s}")
    for name, rate in search["zero_result_rate"].items():
        cells = []
        for segment in (HEAD, TAIL):
            value = search[f"ndcg@{k}"][segment].get(name)
            cells.append(f"{value[0]:.4f} [{value[1]:.4f}, {value[2]:.4f}]" if value else "-")
        print(f"{name:40s} {rate:10.4f} {cells[0]:>26s} {cells[1]:>26s}")


def print_summary(cfg: Config, metrics: dict, items: IdIndex, k_ci: int, ns: list[int]) -> None:
    systems, lifts = metrics["systems"], metrics[f"lift_ndcg@{k_ci}"]
    print(f"\n== {cfg.dataset}: test metrics, {metrics['users']} users with recommendation "
          f"cases (full ranking over {len(items)} items) ==")
    print(format_table(systems, HEADLINE))
    print(f"\n== NDCG@{k_ci} with 95% bootstrap intervals over users "
          f"({cfg.evaluate.bootstrap_resamples} resamples) ==")
    for name, row in systems.items():
        low, high = row[f"ndcg@{k_ci}_ci"]
        print(f"{name:40s} {row[f'ndcg@{k_ci}']:.4f}  [{low:.4f}, {high:.4f}]")
    for kind, lift in lifts.items():
        print(f"{kind} lift of {lift['system']} over {lift['baseline']}: {lift['mean']:+.4f} "
              f"[{lift['low']:+.4f}, {lift['high']:+.4f}]"
              f"{'' if lift['excludes_zero'] else ' (interval includes zero: no lift claimed)'}")
    if "search" in metrics:
        print_search(metrics["search"], k_ci)
    for phase in BACKTEST:
        for kind, block in metrics["phases"][phase.name].items():
            print_candidates(f"{kind} candidate recall on {phase.name}", block, ns)
    print(f"\nmetrics: {artifact_path(cfg, 'metrics')}\n", flush=True)


def run(cfg: Config, io: StageIO) -> dict:
    items = item_catalogue(io)
    ks, ns = sorted(cfg.evaluate.ks), sorted(cfg.evaluate.recall_ns)
    k_ci = 10 if 10 in ks else ks[0]
    parts = {part: io.read("split", part=part) for part in PARTS}  # each read once
    report, relevant = recall_reports(io, parts, items, ks, ns)
    found = [(recommendation_lists(io, max(ks)), relevant[RECOMMENDATION])]
    searched = search_lists(io) if SEARCH in relevant else {}
    if searched:
        found.append((searched, relevant[SEARCH]))
    systems, hits = score_systems(found, items, ks)
    fitting = pd.concat([parts[p] for p in EVALUATED.fit], ignore_index=True)
    table = per_user_frame(hits, k_ci, fitting)
    write_table(stored(table), io.output("per_user"))
    per_user = {name: rows.set_index("request")[f"ndcg@{k_ci}"].rename_axis(S.USER)
                for name, rows in table.groupby("system", sort=False)}
    search = {}
    if searched:
        search = search_report(searched, {n: per_user[n] for n in searched}, relevant[SEARCH],
                               fitting, cfg.evaluate.head_min_searches, k_ci,
                               cfg.evaluate.bootstrap_resamples, cfg.seed)
    resamples, seed = cfg.evaluate.bootstrap_resamples, cfg.seed
    with_interval(systems, per_user, k_ci, resamples, seed)
    singles = [n for n in systems if n.startswith("channel:") or "(reranks" in n]
    lifts = {RECOMMENDATION: lift_over_best("final", singles, systems, per_user, k_ci,
                                            resamples, seed)}
    search_singles = [n for n in systems if n.startswith("search:channel:")]
    if "search:final" in systems and search_singles:
        lifts[SEARCH] = lift_over_best("search:final", search_singles, systems, per_user,
                                       k_ci, resamples, seed)
    evaluate = cfg.evaluate
    segments = segment_report(
        hits, relevant[RECOMMENDATION], fitting, items, "final",
        lifts[RECOMMENDATION]["baseline"], k_ci, evaluate.cold_max_events,
        evaluate.heavy_min_events, resamples, seed)
    ranker = io.read_json("ranker_metrics")
    importance = {kind: io.read_json("importance", kind=kind) for kind in ranker
                  if io.has("importance", kind=kind)}
    split = io.upstream_manifests().get("split", {})
    metrics = {"dataset": cfg.dataset, "split": split.get("strategy", cfg.split.strategy),
               "ks": ks,
               "users": systems["final"]["users"], "catalogue": len(items),
               "systems": systems, f"lift_ndcg@{k_ci}": lifts,
               "candidate_recall": report[EVALUATED.name][RECOMMENDATION]["candidate_recall"],
               "ranker": ranker, "importance": importance, "phases": report,
               "segments": segments, "data": data_summary(io, parts),
               **({"search": search} if search else {})}
    io.write_json("metrics", metrics)
    print_summary(cfg, metrics, items, k_ci, ns)
    return {"headline": {k: systems["final"][k] for k in HEADLINE}}
