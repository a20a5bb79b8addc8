"""The HTML report from a small metrics fixture: each section says what it should."""

from __future__ import annotations

import re

from pipeline.evaluation.report import ALARM_SLOT, HISTORY_SLOT, render


def system(ndcg: float, ci: tuple[float, float] | None = None) -> dict:
    row = {f"{m}@{k}": ndcg for k in (10, 20) for m in
           ("ndcg", "recall", "hit_rate", "precision", "mrr", "map", "coverage")}
    return {**row, "users": 3, **({"ndcg@10_ci": list(ci)} if ci else {})}


METRICS = {
    "dataset": "fixture", "split": "ratio", "ks": [10, 20], "users": 3, "catalogue": 50,
    "systems": {"final": system(0.3, (0.25, 0.35)), "channel:cooc": system(0.2, (0.15, 0.25)),
                "search:final": system(0.5, (0.4, 0.6)),
                "search:channel:bm25": system(0.4, (0.3, 0.5))},
    "lift_ndcg@10": {
        "recommendation": {"system": "final", "baseline": "channel:cooc", "mean": 0.1,
                           "low": 0.05, "high": 0.15, "excludes_zero": True},
        "search": {"system": "search:final", "baseline": "search:channel:bm25", "mean": 0.1,
                   "low": -0.01, "high": 0.2, "excludes_zero": False}},
    "phases": {phase: {"recommendation": {
        "candidate_recall": {"cooc": {"recall@50": 0.61, "recall@100": 0.7},
                             "merged": {"recall@50": 0.8, "recall@100": 0.9}},
        "unique_hits": {"cooc": 0.123}}} for phase in ("valid", "test")},
    "importance": {"recommendation": {"lambdarank": {"cooc_score": 3.0, "pop": 1.0}},
                   "search": {"lambdarank": {"bm25_text": 2.0}}},
    "search": {"head_min_searches": 10, "cases": {"head": 4, "tail": 6},
               "zero_result_rate": {"search:final": 0.0, "search:channel:bm25": 0.25},
               "ndcg@10": {"head": {"search:final": [0.6, 0.5, 0.7]},
                           "tail": {"search:final": [0.45, 0.35, 0.55]}}},
    "segments": {"systems": ["final", "channel:cooc"], "k": 10,
                 "users": {"cold_max_events": 5, "heavy_min_events": 100,
                           "counts": {"cold": 1, "middle": 2, "heavy": 0},
                           "ndcg@10": {"cold": {"final": [0.11, 0.1, 0.12],
                                                "channel:cooc": [0.05, 0.04, 0.06]}},
                           "lift": {"cold": [0.06, 0.01, 0.09]}},
                 "item_popularity": {
                     "relevant": {str(d): 1 for d in range(1, 11)},
                     "recall@10": {str(d): {"final": [0.5, 0.4, 0.6], "channel:cooc": None}
                                   for d in range(1, 11)},
                     "coverage@10": {str(d): {"final": 0.5, "channel:cooc": 0.1}
                                     for d in range(1, 11)}},
                 "new_items": {"relevant": 2, "recall@10": {"final": [0.5, 0.0, 1.0],
                                                            "channel:cooc": None}}},
    "data": {"parts": {"train": {"events": 12345, "searches": 10, "users": 3, "items": 40,
                                 "first": "2026-01-01", "last": "2026-02-01"}},
             "search_cases": {"valid": 7, "test": 10}},
}
RUN = {"run_id": "20260201T000000-abcd1234", "as_of": "2026-02-01 00:00:00",
       "commit": "0123456789abcdef", "date": "2026-11-26 06:00:00 UTC",
       "stages": {"recall": {"seconds": 12.5, "status": "ok"},
                  "rank": {"seconds": 2.5, "status": "ok"}},
       "config_diff": [("rank.folds", 2, 5), ("rank.params.max_bin", 63, None)],
       "quotas": {"recommendation": {"cooc": 200, "pop": 0}},
       "blend": {"recommendation": {"weights": {"ltr:lambdarank": 1.0}},
                 "search": {"weights": {"ltr:lambdarank": 1.0, "channel:bm25": 1.0}}},
       "ingest": {"dropped": {"missing_ids": 2012},
                  "notes": ["log.tsv: 3 line(s) with more or fewer fields <left out>"]}}


def section(page: str, title: str) -> str:
    """The page from the heading that starts with ``title`` to the next h2."""
    start = page.index(f"<h2>{title}")
    end = page.find("<h2>", start + 1)
    return page[start:end if end > 0 else None]


def text(fragment: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))


def test_the_header_says_what_ran_on_what() -> None:
    page = render(METRICS, RUN, ["recall: ok"])
    assert page.index(ALARM_SLOT) < page.index("<h1>") < page.index(HISTORY_SLOT)
    head = text(page[page.index("<h1>"):page.index("<h2>Final ranking")])
    assert "20260201T000000-abcd1234" in head and "0123456789ab" in head
    assert "0123456789abcdef" not in head  # the short commit
    assert "train 12,345 10 3 40 2026-01-01 2026-02-01" in head
    assert "search cases: 7 on valid, 10 on test" in head
    assert "Wall time per stage (15 s)" in head and "recall 12.5 ok" in head
    assert "rank.folds 2 5" in head and "rank.params.max_bin 63 unset" in head
    assert "cooc 200" in head and "pop 0" not in head
    assert "the blend is ltr:lambdarank alone" in head  # a sentence, not repeated rows
    assert "it beat the equal-weight fusion of every component" in head  # and why
    assert "ltr:lambdarank × 1, channel:bm25 × 1 (reciprocal ranks; equal weights" in head
    assert "Ingest noted: interactions left out: 2,012 missing ids" in head
    assert "3 line(s) with more or fewer fields &lt;left out&gt;" in page  # escaped
    quiet = render(METRICS, {**RUN, "ingest": {"dropped": {}, "notes": []}}, [])
    assert "Ingest noted" not in quiet
    assert "seeded order" not in head
    tied = text(render(METRICS, {**RUN, "tied_held_out": {"valid": 0.62, "test": 0.415}}, []))
    assert "42% of test events (valid: 62%) share their time with an event of the same " \
        "user in another part: the split placed them by its seeded order" in tied
    few = render(METRICS, {**RUN, "tied_held_out": {"valid": 0.2, "test": 0.004}}, [])
    assert "seeded order" not in few  # under 1% of test events: no sentence


def test_segments_search_and_candidates_sections() -> None:
    page = render(METRICS, RUN, [])
    seg = text(section(page, "Where it wins and loses"))
    assert "cold 1 0.1100 [0.1000, 0.1200] 0.0500 [0.0400, 0.0600] 0.0600 [0.0100, 0.0900]" \
        in seg
    assert "heavy 0 - - -" in seg and "eval/per_user.parquet" in seg
    assert "2 relevant; recall@10 final 0.5000 [0.0000, 1.0000], channel:cooc -" in seg
    assert "search:final NDCG@10 0.5000 [0.4000, 0.6000]" in seg
    search = text(section(page, "Search: head and tail"))
    assert "4 head cases" in search and "search:channel:bm25 0.2500" in search
    assert "search:final 0.0000 0.6000 [0.5000, 0.7000] 0.4500 [0.3500, 0.5500]" in search
    cands = text(section(page, "Candidate recall"))
    assert "recommendation, valid phase" in cands and "recommendation, test phase" in cands
    assert "cooc 0.610 0.700 0.123" in cands and "merged 0.800 0.900 -" in cands
    lifts = text(section(page, "Which stage earns what"))
    assert "no lift is claimed" in lifts and "+0.1000 [+0.0500, +0.1500]" in lifts


def test_one_self_contained_page_with_scaling_images() -> None:
    page = render(METRICS, RUN, [])
    assert "img{max-width:100%" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in page.replace('name="viewport"', "")
