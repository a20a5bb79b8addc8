"""evaluate: offline metrics on the test split, written to ``eval/metrics.json``.

Recommendation cases are the users' test interactions without a query; search cases are
the ones with a query (one case per interaction, its clicked item the relevant one).
For each kind: every recall channel alone as a ranker, candidate recall at several
depths and each channel's unique contribution, for both recall phases (valid, for
tuning; test, the honest figure). The final ranking is a recommendation ranking.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from features.interactions import IdIndex
from pipeline import schema as S
from pipeline.config import Config
from pipeline.evaluation.bootstrap import bootstrap_ci, paired_lift_ci
from pipeline.evaluation.protocol import evaluate_lists, per_user_metric
from pipeline.io import read_table
from pipeline.stages import read_catalogue, stage_dir
from pipeline.stages.rank import top_k
from pipeline.stages.recall import CASE, PHASES, is_search

HEADLINE = ("ndcg@10", "recall@10", "hit_rate@10", "mrr@10", "coverage@10", "recall@100")


def format_table(systems: dict[str, dict[str, float]], columns: tuple[str, ...]) -> str:
    width = max(len(name) for name in systems) + 2
    lines = ["system".ljust(width) + "".join(c.rjust(13) for c in columns)]
    for name, row in systems.items():
        lines.append(name.ljust(width) + "".join(f"{row.get(c, float('nan')):13.4f}"
                                                 for c in columns))
    return "\n".join(lines)


def unique_hits(lists: dict[str, pd.DataFrame], relevant: pd.DataFrame) -> dict[str, float]:
    """Per channel: share of relevant (user, item) pairs that only this channel retrieved."""
    pairs = relevant[[S.USER, S.ITEM]].drop_duplicates()
    found = pd.concat([df[[S.USER, S.ITEM]].assign(channel=name) for name, df in lists.items()],
                      ignore_index=True).merge(pairs, on=[S.USER, S.ITEM])
    n_finders = found.groupby([S.USER, S.ITEM])["channel"].transform("size")
    only = found[n_finders == 1]["channel"].value_counts()
    return {name: float(only.get(name, 0) / max(len(pairs), 1)) for name in lists}


def candidate_report(folder: Path, channels: list[str], relevant: pd.DataFrame, items: IdIndex,
                     ks: list[int], ns: list[int], key: str = S.USER) -> dict:
    """Channels alone as rankers, candidate recall@N and unique hits for one folder."""
    def read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
        df = read_table(path, columns)
        if key == CASE:  # a search case stands where a user stands in recommendation
            df = df.drop(columns=[S.USER], errors="ignore").rename(columns={CASE: S.USER})
        return df

    lists = {name: read(folder / "channels" / f"{name}.parquet") for name in channels}
    systems, recall = {}, {}
    for name, df in lists.items():
        full = evaluate_lists(df, relevant, items, sorted(set(ks) | set(ns)))
        systems[name] = {k: v for k, v in full.items()
                         if k == "users" or int(k.split("@")[1]) in ks}
        recall[name] = {f"recall@{n}": full[f"recall@{n}"] for n in ns}
    merged = evaluate_lists(read(folder / "candidates.parquet", [key, S.ITEM, "merge_rank"]),
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
    """Add each system's NDCG@k bootstrap interval over users (same resamples for all)."""
    for name, values in per_user.items():
        ci = bootstrap_ci(values.to_numpy(), resamples, seed)
        systems[name][f"ndcg@{k}_ci"] = [ci["low"], ci["high"]]


def lift_over_best(final: str, components: list[str], systems: dict[str, dict],
                   per_user: dict[str, pd.Series], k: int, resamples: int, seed: int) -> dict:
    """Paired bootstrap lift of ``final`` over the best of ``components`` (by NDCG@k)."""
    best = max(components, key=lambda n: (systems[n][f"ndcg@{k}"], n))
    a, b = per_user[final].align(per_user[best], join="inner")
    return {"system": final, "baseline": best,
            **paired_lift_ci(a.to_numpy(), b.to_numpy(), resamples, seed)}


def ranked_systems(folder: Path, prefix: str, key: str) -> dict[str, pd.DataFrame]:
    """The rank stage's own lists per system (``ltr-<objective>``, ``blend``)."""
    lists = {}
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        df = read_table(path)
        if key == CASE:
            df = df.drop(columns=[S.USER], errors="ignore").rename(columns={CASE: S.USER})
        lists[prefix + path.stem.replace("-", ":", 1)] = df
    return lists


def run(cfg: Config, out: Path) -> dict:
    split = stage_dir(cfg, "split")
    items = read_catalogue(cfg)
    ks, ns = sorted(cfg.evaluate.ks), sorted(cfg.evaluate.recall_ns)
    k_ci = 10 if 10 in ks else ks[0]
    recall_dir = stage_dir(cfg, "recall")
    channels = [n for n, c in cfg.recall.channels.items() if c.recommend]

    report: dict[str, dict] = {}
    relevant: dict[str, pd.DataFrame] = {}  # the test phase's cases, for the ablation
    for phase in PHASES:
        part = read_table(split / f"{phase}.parquet")
        report[phase] = {"recommendation": candidate_report(
            recall_dir / phase, channels, part[~is_search(part)], items, ks, ns)}
        search_dir = recall_dir / phase / "search"
        if (search_dir / "cases.parquet").is_file():
            cases = read_table(search_dir / "cases.parquet").drop(columns=[S.USER])
            cases = cases.rename(columns={CASE: S.USER})
            report[phase]["search"] = candidate_report(
                search_dir, list(cfg.recall.search_channels), cases, items, ks, ns, key=CASE)
            if phase == "test":
                relevant["search"] = cases
        if phase == "test":
            relevant["recommendation"] = part[~is_search(part)]

    # Every row below is evaluated like the final output: its own top list per test case.
    lists: dict[str, pd.DataFrame] = {}
    rank_dir = stage_dir(cfg, "rank")
    lists["final"] = read_table(rank_dir / "recommendations.parquet")
    for name in channels:
        lists[f"channel:{name}"] = read_table(recall_dir / "test" / "channels" / f"{name}.parquet")
    merged = read_table(recall_dir / "test" / "candidates.parquet",
                        [S.USER, S.ITEM, "merge_rank"])
    lists["merged (merge order)"] = merged.rename(columns={"merge_rank": S.RANK})
    scored = stage_dir(cfg, "train-fm") / "candidates.parquet"
    for kind in cfg.fm.models if (scored.is_file() and cfg.fm.models) else []:
        cands = read_table(scored, columns=[S.USER, S.ITEM, "merge_rank", f"{kind}_score"])
        lists[f"{kind} (reranks candidates)"] = top_k(
            cands, S.USER, cands[f"{kind}_score"].to_numpy(), max(ks))
    lists.update(ranked_systems(rank_dir / "systems" / "recommendation", "", S.USER))
    search_lists: dict[str, pd.DataFrame] = {}
    if "search" in relevant:
        search_dir = recall_dir / "test" / "search"
        for name in cfg.recall.search_channels:
            search_lists[f"search:channel:{name}"] = read_table(
                search_dir / "channels" / f"{name}.parquet").drop(columns=[S.USER]).rename(
                columns={CASE: S.USER})
        search_lists["search:merged (merge order)"] = read_table(
            search_dir / "candidates.parquet", [CASE, S.ITEM, "merge_rank"]).rename(
            columns={CASE: S.USER, "merge_rank": S.RANK})
        search_lists.update(ranked_systems(rank_dir / "systems" / "search", "search:", CASE))
        if (rank_dir / "search.parquet").is_file():
            search_lists["search:final"] = read_table(rank_dir / "search.parquet").drop(
                columns=[S.USER]).rename(columns={CASE: S.USER})

    systems: dict[str, dict] = {}
    per_user: dict[str, pd.Series] = {}
    for found, wanted in ((lists, relevant["recommendation"]),
                          (search_lists, relevant.get("search"))):
        for name, df in found.items():
            systems[name] = evaluate_lists(df, wanted, items, ks)
            per_user[name] = per_user_metric(df, wanted, items, "ndcg", k_ci)
    resamples, seed = cfg.evaluate.bootstrap_resamples, cfg.seed
    with_interval(systems, per_user, k_ci, resamples, seed)
    singles = [n for n in systems if n.startswith("channel:") or "(reranks" in n]
    lifts = {"recommendation": lift_over_best("final", singles, systems, per_user, k_ci,
                                              resamples, seed)}
    search_singles = [n for n in systems if n.startswith("search:channel:")]
    if "search:final" in systems and search_singles:
        lifts["search"] = lift_over_best("search:final", search_singles, systems, per_user,
                                         k_ci, resamples, seed)
    ranker_dir = stage_dir(cfg, "train-rank")
    ranker = json.loads((ranker_dir / "metrics.json").read_text()) if (
        ranker_dir / "metrics.json").is_file() else {}
    importance = {kind: json.loads((ranker_dir / kind / "importance.json").read_text())
                  for kind in ranker if (ranker_dir / kind / "importance.json").is_file()}

    metrics = {"dataset": cfg.dataset, "split": cfg.split.strategy, "ks": ks,
               "users": systems["final"]["users"], "catalogue": len(items),
               "systems": systems, f"lift_ndcg@{k_ci}": lifts,
               "candidate_recall": report["test"]["recommendation"]["candidate_recall"],
               "ranker": ranker, "importance": importance, "phases": report}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\n== {cfg.dataset}: test metrics, {metrics['users']} users with recommendation "
          f"cases (full ranking over {len(items)} items) ==")
    print(format_table(systems, HEADLINE))
    print(f"\n== NDCG@{k_ci} with 95% bootstrap intervals over users ({resamples} "
          "resamples) ==")
    for name, row in systems.items():
        low, high = row[f"ndcg@{k_ci}_ci"]
        print(f"{name:40s} {row[f'ndcg@{k_ci}']:.4f}  [{low:.4f}, {high:.4f}]")
    for kind, lift in lifts.items():
        print(f"{kind} lift of {lift['system']} over {lift['baseline']}: {lift['mean']:+.4f} "
              f"[{lift['low']:+.4f}, {lift['high']:+.4f}]"
              f"{'' if lift['excludes_zero'] else ' (interval includes zero: no lift claimed)'}")
    for phase in PHASES:
        for kind, block in report[phase].items():
            print_candidates(f"{kind} candidate recall on {phase}", block, ns)
    print(f"\nmetrics: {out.parent / 'eval' / 'metrics.json'}\n", flush=True)
    return {"headline": {k: systems["final"][k] for k in HEADLINE}}
