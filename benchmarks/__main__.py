"""`make bench`: run every benchmark; each prints its JSON summary as its last line."""

from benchmarks import bench_evaluate, bench_fm, bench_ranking, bench_recall

bench_evaluate.main()
bench_recall.main()
bench_fm.main()
bench_ranking.main()
