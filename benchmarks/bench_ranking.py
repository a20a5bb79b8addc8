"""The whole pipeline against its own parts: the ablation of the learning-to-rank issue.

Runs every stage (ingest through report, the refit on train + valid included) with the
shipped configs in a temp folder and reads ``eval/metrics.json``:

- ML-100K, default ``ratio`` split: final NDCG@10 with its 95% bootstrap interval, the
  paired lift over the best single component, and the wall time of the run (targets:
  NDCG@10 >= 0.173, the lift's interval above zero, under 300 s on 2 cores);
- the same ratings rewritten as a count log without timestamps and loaded through the
  ``files`` source (as music listening counts come, sorted by user and item): the split
  is a seeded random holdout per user and the channels that read event order are left
  out (``pipeline.ordering``);
- the embedded synthetic default (``make all``).

The FM/FFM ablation (issue 19): ML-100K and synthetic run again with
``features.exclude`` naming the FM and FFM scores, so the rankers and the blend learn
without them and everything upstream is the same; ``<name>_fm_lift`` is the final
ranking's paired NDCG@10 lift with those scores over without them, on the same users.
The count log, whose split is a random draw and whose lift sits inside its interval,
runs again with four more seeds (``DRAWN``, 40 s each): ``<name>_draws`` gives each
draw's lift and ``<name>_pooled_lift`` the lift averaged over the five, its interval
resampling draws and then users (the models fitted anew on each draw count too).
Each must beat its own best single channel with a lift interval above zero, and so not
fall below the single models of the learning-to-rank issue's anchor table that are
channels here (EASE, ALS ``embedding``, ItemKNN-like ``cooccurrence``, SASRec-style
``sequence`` where the log has time): ``<name>_anchor`` names the strongest of them.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import record
from pipeline.catalogue import artifact_path
from pipeline.config import Config, load_config
from pipeline.evaluation.bootstrap import paired_lift_ci
from pipeline.io import read_table
from pipeline.runner import run_until, set_threads

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "datasets" / "ml-100k"
ANCHORS = ("channel:ease", "channel:embedding", "channel:cooccurrence", "channel:sequence")
FM_SCORES = "[fm_score,ffm_score]"
ABLATED = ("ml100k", "synthetic")
DRAWN = {"ml100k_counts_no_time": (1, 2, 3, 4)}  # more seeds of the log whose split is a draw
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")


def count_log(folder: Path) -> dict:
    """ML-100K as a count log (user, item, count; sorted by user and item, no time) plus
    an items file with genre tags, and the files-source config that reads them."""
    ratings = pd.read_csv(ML100K / "u.data", sep="\t", names=["user", "item", "count", "ts"])
    ratings.sort_values(["user", "item"])[["user", "item", "count"]].to_csv(
        folder / "counts.csv", index=False)
    movies = pd.read_csv(ML100K / "u.item", sep="|", encoding="latin-1", header=None)
    flags = movies.iloc[:, 5:24].to_numpy()
    pd.DataFrame({"id": movies[0], "name": movies[1],
                  "genres": ["|".join(g for g, f in zip(GENRES, row, strict=True) if f)
                             for row in flags]}).to_csv(folder / "items.csv", index=False)
    return {"dataset": "ml-100k-counts", "source": {
        "kind": "files",
        "interactions": [{"path": str(folder / "counts.csv"), "event": "listen",
                          "columns": {"user_id": "user", "item_id": "item",
                                      "weight": "count"}}],
        "items": {"path": str(folder / "items.csv"), "list_columns": {"tags": "|"},
                  "columns": {"item_id": "id", "title": "name", "tags": "genres"}}}}


def run(config: Path | None, tmp: str, base: dict | None = None,
        overrides: tuple[str, ...] = ()) -> tuple[Config, dict, float]:
    cfg = load_config(config, [f"data_dir={tmp}", *overrides], base=base)
    set_threads(cfg.threads)  # as the CLI does: the sequence model reads it from the env
    started = time.perf_counter()
    run_until(cfg, "report")
    seconds = time.perf_counter() - started
    return cfg, json.loads(artifact_path(cfg, "metrics").read_text()), seconds


def final_per_user(cfg: Config, system: str = "final") -> pd.Series:
    """A system's (the final ranking's) NDCG@10 per test user, as evaluate wrote it."""
    table = read_table(artifact_path(cfg, "per_user"))
    return table[table["system"] == system].set_index("request")["ndcg@10"].sort_index()


def draws(cfg: Config, metrics: dict, config: Path | None, tmp: str, base: dict | None,
          overrides: tuple[str, ...], seeds: tuple[int, ...]) -> tuple[list[dict], dict]:
    """The log again with each of ``seeds`` as the run's ``seed`` (its split's random
    holdout, the channels', rankers' and bootstrap's draws), beside the run already made:
    each draw's final ranking and lift over its own best single channel, and that lift
    averaged over the draws with a two-level bootstrap interval (draws resampled, then
    users within them), so the models fitted anew on each draw count as well as the
    users: a run's own interval takes its fitted models as given."""
    runs = [(cfg, metrics)] + [run(config, str(Path(tmp) / f"seed-{seed}"), base,
                                   (*overrides, f"seed={seed}"))[:2]
                               for seed in seeds if seed != cfg.seed]
    rows, lifts = [], []
    for c, m in runs:
        lift = m["lift_ndcg@10"]["recommendation"]
        rows.append({"seed": c.seed, "final": round(m["systems"]["final"]["ndcg@10"], 4),
                     "best_single": lift["baseline"],
                     "best_single_ndcg": round(m["systems"][lift["baseline"]]["ndcg@10"], 4),
                     "lift": [round(lift[k], 4) for k in ("mean", "low", "high")]})
        final, best = final_per_user(c).align(final_per_user(c, lift["baseline"]),
                                              join="inner")
        lifts.append(final - best)
    per_draw = pd.concat(lifts, axis=1, join="inner").to_numpy().T  # draws x users
    rng = np.random.default_rng(cfg.seed)
    n_draws, n_users = per_draw.shape
    means = np.array([per_draw[rng.integers(n_draws, size=n_draws)][
        :, rng.integers(n_users, size=n_users)].mean()
        for _ in range(cfg.evaluate.bootstrap_resamples)])
    low, high = np.percentile(means, [2.5, 97.5])
    return rows, {"users": n_users,
                  "lift": [round(float(per_draw.mean()), 4), round(float(low), 4),
                           round(float(high), 4)]}


def draws_table(name: str, rows: list[dict], pooled: dict) -> str:
    lines = [f"{name} over {len(rows)} draws (the run's `seed`):", "",
             "| seed | final | best single channel | lift [95% CI] |", "|---|---|---|---|"]
    for r in rows:
        low, high = r["lift"][1:]
        lines.append(f"| {r['seed']} | {r['final']:.4f} | {r['best_single']} "
                     f"{r['best_single_ndcg']:.4f} | {r['lift'][0]:+.4f} "
                     f"[{low:+.4f}, {high:+.4f}] |")
    mean, low, high = pooled["lift"]
    lines.append(f"\n{name}: lift over each draw's best single channel, averaged over the "
                 f"draws ({pooled['users']} users; the interval resamples draws, then users): "
                 f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]")
    return "\n".join(lines)


def fm_lift(cfg: Config, config: Path | None, tmp: str, base: dict | None,
            overrides: tuple[str, ...]) -> dict:
    """The final ranking with the FM/FFM scores against the same run without them."""
    without, metrics, seconds = run(config, str(Path(tmp) / "without-fm"), base,
                                    (*overrides, f"features.exclude={FM_SCORES}"))
    with_fm, no_fm = final_per_user(cfg).align(final_per_user(without), join="inner")
    lift = paired_lift_ci(with_fm.to_numpy(), no_fm.to_numpy(),
                          cfg.evaluate.bootstrap_resamples, cfg.seed)
    return {"without_ndcg_at_10": round(metrics["systems"]["final"]["ndcg@10"], 4),
            "lift": [round(lift[k], 4) for k in ("mean", "low", "high")],
            "users": len(with_fm), "seconds": round(seconds, 1)}


def ablation(name: str, metrics: dict) -> str:
    lines = [f"**{name}** ({metrics['users']} test users, {metrics['catalogue']} items)", "",
             "| system | NDCG@10 [95% CI] | Recall@10 |", "|---|---|---|"]
    for system, row in metrics["systems"].items():
        low, high = row["ndcg@10_ci"]
        lines.append(f"| {system} | {row['ndcg@10']:.4f} [{low:.4f}, {high:.4f}] | "
                     f"{row['recall@10']:.4f} |")
    for kind, lift in metrics["lift_ndcg@10"].items():
        lines.append(f"\n{kind}: lift of {lift['system']} over {lift['baseline']} "
                     f"{lift['mean']:+.4f} [{lift['low']:+.4f}, {lift['high']:+.4f}]")
    return "\n".join(lines)


def main() -> dict:
    summary, tables = {}, []
    runs = {"ml100k": (REPO / "configs/movielens-100k.yaml", None,
                       (f"source.path={ML100K}",)),
            "synthetic": (REPO / "configs/synthetic.yaml", None, ())}
    with tempfile.TemporaryDirectory() as tmp:
        runs["ml100k_counts_no_time"] = (None, count_log(Path(tmp)), ())
        for name, (config, base, overrides) in runs.items():
            cfg, metrics, seconds = run(config, tmp, base, overrides)
            final = metrics["systems"]["final"]
            lift = metrics["lift_ndcg@10"]["recommendation"]
            summary[f"{name}_ndcg_at_10"] = round(final["ndcg@10"], 4)
            summary[f"{name}_ndcg_at_10_ci"] = [round(x, 4) for x in final["ndcg@10_ci"]]
            summary[f"{name}_best_single"] = lift["baseline"]
            summary[f"{name}_lift"] = [round(lift[k], 4) for k in ("mean", "low", "high")]
            anchors = {s: row["ndcg@10"] for s, row in metrics["systems"].items()
                       if s in ANCHORS}
            best = max(anchors, key=anchors.get)
            summary[f"{name}_anchor"] = [best, round(anchors[best], 4)]
            summary[f"{name}_seconds"] = round(seconds, 1)
            tables.append(ablation(f"{name}: every stage in {seconds:.0f} s", metrics))
            if name in DRAWN:
                rows, pooled = draws(cfg, metrics, config, tmp, base, overrides, DRAWN[name])
                summary[f"{name}_draws"] = rows
                summary[f"{name}_pooled_lift"] = pooled["lift"]
                tables.append(draws_table(name, rows, pooled))
            if name in ABLATED:
                fm = fm_lift(cfg, config, tmp, base, overrides)
                summary[f"{name}_fm_lift"] = fm["lift"]
                summary[f"{name}_without_fm_ndcg_at_10"] = fm["without_ndcg_at_10"]
                low, high = fm["lift"][1:]
                tables.append(f"{name}: final with the FM/FFM scores against without them "
                              f"(NDCG@10 {fm['without_ndcg_at_10']:.4f}, {fm['users']} users, "
                              f"{fm['seconds']:.0f} s): {fm['lift'][0]:+.4f} "
                              f"[{low:+.4f}, {high:+.4f}]")
    record("ranking ablation", "make bench-rank", summary, "\n\n".join(tables))
    return summary


if __name__ == "__main__":
    main()
