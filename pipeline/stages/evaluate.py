"""evaluate: metrics of the final ranking, of each recall channel alone, and of the
candidate set, on the test split; written to ``eval/metrics.json`` and printed."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import schema as S
from pipeline.config import Config
from pipeline.evaluation.protocol import evaluate_lists
from pipeline.io import read_table
from pipeline.stages import read_catalogue, stage_dir

HEADLINE = ("ndcg@10", "recall@10", "hit_rate@10", "mrr@10", "coverage@10", "recall@100")


def format_table(systems: dict[str, dict[str, float]], columns: tuple[str, ...]) -> str:
    width = max(len(name) for name in systems) + 2
    lines = ["system".ljust(width) + "".join(c.rjust(13) for c in columns)]
    for name, row in systems.items():
        lines.append(name.ljust(width) + "".join(f"{row.get(c, float('nan')):13.4f}"
                                                 for c in columns))
    return "\n".join(lines)


def run(cfg: Config, out: Path) -> dict:
    test = read_table(stage_dir(cfg, "split") / "test.parquet", columns=[S.USER, S.ITEM])
    items = read_catalogue(cfg)
    ks = sorted(cfg.evaluate.ks)
    recall_dir = stage_dir(cfg, "recall")

    systems = {"final": evaluate_lists(
        read_table(stage_dir(cfg, "rank") / "recommendations.parquet"), test, items, ks)}
    depths = sorted(set(ks) | set(cfg.evaluate.recall_ns))
    candidate_recall = {}
    for name in cfg.recall.channels:
        lists = read_table(recall_dir / "channels" / f"{name}.parquet")
        full = evaluate_lists(lists, test, items, depths)
        systems[f"channel:{name}"] = {k: v for k, v in full.items()
                                      if k == "users" or int(k.split("@")[1]) in ks}
        candidate_recall[name] = {f"recall@{n}": full[f"recall@{n}"]
                                  for n in cfg.evaluate.recall_ns}
    merged = evaluate_lists(read_table(recall_dir / "candidates.parquet",
                                       columns=[S.USER, S.ITEM, "merge_rank"]),
                            test, items, sorted(cfg.evaluate.recall_ns), rank_col="merge_rank")
    candidate_recall["merged"] = {f"recall@{n}": merged[f"recall@{n}"]
                                  for n in cfg.evaluate.recall_ns}

    metrics = {"dataset": cfg.dataset, "split": cfg.split.strategy, "ks": ks,
               "users": systems["final"]["users"], "catalogue": len(items),
               "systems": systems, "candidate_recall": candidate_recall}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"\n== {cfg.dataset}: test metrics over {metrics['users']} users "
          f"(full ranking, {len(items)} items) ==")
    print(format_table(systems, HEADLINE))
    print("\n== candidate recall (share of test items in the first N candidates) ==")
    print(format_table(candidate_recall, tuple(f"recall@{n}" for n in cfg.evaluate.recall_ns)))
    print(f"\nmetrics: {out.parent / 'eval' / 'metrics.json'}\n", flush=True)
    return {"headline": {k: systems["final"][k] for k in HEADLINE}}
