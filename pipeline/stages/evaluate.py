"""evaluate: metrics of the final ranking and of each recall channel alone on test, and
candidate recall with each channel's unique contribution for both recall phases
(valid: for tuning; test: the honest figure). Written to ``eval/metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline import schema as S
from pipeline.config import Config
from pipeline.evaluation.protocol import evaluate_lists
from pipeline.io import read_table
from pipeline.stages import read_catalogue, stage_dir
from pipeline.stages.recall import PHASES

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


def run(cfg: Config, out: Path) -> dict:
    split = stage_dir(cfg, "split")
    items = read_catalogue(cfg)
    ks = sorted(cfg.evaluate.ks)
    ns = sorted(cfg.evaluate.recall_ns)
    recall_dir = stage_dir(cfg, "recall")
    test = read_table(split / "test.parquet", columns=[S.USER, S.ITEM])

    systems = {"final": evaluate_lists(
        read_table(stage_dir(cfg, "rank") / "recommendations.parquet"), test, items, ks)}
    candidate_recall: dict[str, dict] = {}
    unique: dict[str, dict] = {}
    for phase in PHASES:
        relevant = test if phase == "test" else read_table(split / "valid.parquet",
                                                           columns=[S.USER, S.ITEM])
        lists = {name: read_table(recall_dir / phase / "channels" / f"{name}.parquet")
                 for name in cfg.recall.channels}
        rows = {}
        for name, df in lists.items():
            full = evaluate_lists(df, relevant, items, sorted(set(ks) | set(ns)))
            rows[name] = {f"recall@{n}": full[f"recall@{n}"] for n in ns}
            if phase == "test":
                systems[f"channel:{name}"] = {k: v for k, v in full.items()
                                              if k == "users" or int(k.split("@")[1]) in ks}
        merged = evaluate_lists(read_table(recall_dir / phase / "candidates.parquet",
                                           columns=[S.USER, S.ITEM, "merge_rank"]),
                                relevant, items, ns, rank_col="merge_rank")
        rows["merged"] = {f"recall@{n}": merged[f"recall@{n}"] for n in ns}
        candidate_recall[phase] = rows
        unique[phase] = unique_hits(lists, relevant)

    metrics = {"dataset": cfg.dataset, "split": cfg.split.strategy, "ks": ks,
               "users": systems["final"]["users"], "catalogue": len(items),
               "systems": systems, "candidate_recall": candidate_recall["test"],
               "candidate_recall_valid": candidate_recall["valid"],
               "unique_hits": unique}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\n== {cfg.dataset}: test metrics over {metrics['users']} users "
          f"(full ranking, {len(items)} items) ==")
    print(format_table(systems, HEADLINE))
    for phase in PHASES:
        table = {name: {**row, "unique": unique[phase].get(name, float("nan"))}
                 for name, row in candidate_recall[phase].items()}
        print(f"\n== candidate recall on {phase} (share of {phase} items in the first N; "
              "unique: found by no other channel) ==")
        print(format_table(table, (*(f"recall@{n}" for n in ns), "unique")))
    print(f"\nmetrics: {out.parent / 'eval' / 'metrics.json'}\n", flush=True)
    return {"headline": {k: systems["final"][k] for k in HEADLINE}}
