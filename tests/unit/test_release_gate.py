"""The release gate's verdicts and the words the ledger keeps for each check."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.release import gate

REPO = Path(__file__).resolve().parents[2]


def metrics(final: float, low: float, mean: float, high: float) -> dict:
    return {"systems": {"final": {"ndcg@10": final}},
            "lift_ndcg@10": {"recommendation": {"baseline": "channel:ease", "low": low,
                                                "mean": mean, "high": high}}}


@pytest.mark.parametrize(("low", "high", "passed", "words"), [
    (0.01, 0.03, True, "is not significantly below channel:ease (lift +0.0200"),
    (-0.03, 0.01, True, "is not significantly below"),  # an interval across zero passes
    (-0.05, -0.01, False, "is significantly below channel:ease (lift -0.0300"),
])
def test_best_single_check_says_what_it_found(low: float, high: float, passed: bool,
                                              words: str) -> None:
    cfg = load_config(REPO / "configs" / "synthetic.yaml")
    decision = gate(cfg, metrics(0.2, low, (low + high) / 2, high), None)
    check = decision.checks["best_single"]
    assert decision.passed is passed and check["passed"] is passed
    assert words in check["reason"]
    assert decision.reason == ("every check passed" if passed else check["reason"])


@pytest.mark.parametrize(("last", "passed", "words"), [
    (0.1900, True, "0.2000 is 5.3% above the last published run's 0.1900"),
    (0.2020, True, "is 1.0% below the last published run's 0.2020"),
    (0.2500, False, "is 20.0% below the last published run's 0.2500"),
])
def test_last_published_check_says_above_or_below(last: float, passed: bool,
                                                  words: str) -> None:
    cfg = load_config(REPO / "configs" / "synthetic.yaml")
    assert cfg.gate.max_drop < 0.2  # the third case is past it
    decision = gate(cfg, metrics(0.2, 0.01, 0.02, 0.03),
                    {"ndcg@10": last, "publication": "run-1"})
    check = decision.checks["last_published"]
    assert check["passed"] is passed and decision.passed is passed
    assert words in check["reason"]
    assert ("exceeded" in check["reason"]) is not passed
