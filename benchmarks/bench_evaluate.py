"""Evaluation speed: our vectorised metric kernel against scikit-learn's ndcg_score.

Both compute NDCG@10 with binary gain over full catalogue rankings for the same users;
the reference is sklearn fed dense per-user score rows in chunks (its natural input).
Reports the speed ratio and the largest per-run difference of the two NDCG means.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import ndcg_score

from benchmarks.common import best_of, record
from features.interactions import IdIndex
from models.base import top_k
from pipeline.evaluation.protocol import evaluate_lists

N_USERS, N_ITEMS, K = 20_000, 2_000, 10


def main() -> dict:
    rng = np.random.default_rng(0)
    scores = rng.random((N_USERS, N_ITEMS)).astype(np.float32)
    relevant_mask = rng.random((N_USERS, N_ITEMS)) < 0.01
    relevant_mask[np.arange(N_USERS), rng.integers(N_ITEMS, size=N_USERS)] = True
    u, i = np.nonzero(relevant_mask)
    relevant = pd.DataFrame({"user_id": u, "item_id": i})
    top = top_k(scores, 100)
    lists = pd.DataFrame({"user_id": np.repeat(np.arange(N_USERS), 100),
                          "item_id": top.items.ravel(),
                          "rank": np.tile(np.arange(1, 101), N_USERS)})
    items = IdIndex(np.arange(N_ITEMS))

    ours_s, ours = best_of(lambda: evaluate_lists(lists, relevant, items, [K])["ndcg@10"])

    def reference() -> float:
        total = 0.0
        for lo in range(0, N_USERS, 2000):
            total += ndcg_score(relevant_mask[lo:lo + 2000], scores[lo:lo + 2000], k=K) * \
                len(scores[lo:lo + 2000])
        return total / N_USERS

    ref_s, ref = best_of(reference)
    summary = {"eval_speedup_vs_sklearn_ndcg": round(ref_s / ours_s, 2),
               "ndcg_abs_diff_vs_sklearn": abs(ours - ref),
               "ours_seconds": round(ours_s, 3), "sklearn_seconds": round(ref_s, 3)}
    table = (f"| {N_USERS} users x {N_ITEMS} items, NDCG@{K} | seconds |\n|---|---|\n"
             f"| ours (all metrics at k=10) | {ours_s:.3f} |\n| sklearn ndcg_score | {ref_s:.3f} |")
    record("evaluate", "make bench", summary, table)
    return summary


if __name__ == "__main__":
    main()
