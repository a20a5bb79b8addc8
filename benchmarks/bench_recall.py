"""`make bench-recall`: the inverted index against bm25s and the ANN index against exact
search, each measured against its reference in the same run, and the merged candidate
recall on ML-100K against every channel alone; one JSON line at the end."""

from __future__ import annotations

import json

from benchmarks import bench_ann, bench_bm25, bench_recall_quality


def main() -> dict:
    summary = {**bench_bm25.main(), **bench_ann.main(), **bench_recall_quality.main()}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
