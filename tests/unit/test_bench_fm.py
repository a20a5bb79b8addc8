"""The FM benchmark's timing: turns in order, ratios paired by round."""

from __future__ import annotations

import pytest

from benchmarks.bench_fm import native_row, paired_ratio, timed, turn_order


class Turn:
    """A contender whose rate is the machine's speed at its turn."""

    def __init__(self, name: str, rate: float, clock: list[str], speed: list[float]) -> None:
        self.name, self.rate, self.clock, self.speed = name, rate, clock, speed

    def epoch_rate(self) -> float:
        self.clock.append(self.name)
        return self.rate * self.speed[(len(self.clock) - 1) // 2]


def test_turns_alternate_and_the_paired_ratio_cancels_a_slow_round() -> None:
    clock: list[str] = []
    speed = [1.0, 0.5, 1.0]  # the second round runs at half speed for both
    rates = timed({"two": Turn("two", 180.0, clock, speed),
                   "one": Turn("one", 100.0, clock, speed)}, rounds=3)
    assert clock == ["two", "one"] * 3
    assert rates == {"two": [180.0, 90.0, 180.0], "one": [100.0, 50.0, 100.0]}
    assert paired_ratio(rates["two"], rates["one"]) == pytest.approx(1.8)
    # a slowdown that starts between one round's turns weighs on one round only
    assert paired_ratio([180.0, 90.0, 180.0], [100.0, 100.0, 100.0]) == pytest.approx(1.8)


def test_each_ratio_compares_turns_next_to_each_other() -> None:
    names = ["ours FFM", native_row("FFM", "batch", 1), native_row("FFM", "batch", 2),
             native_row("FFM", "sample", 1), "torchfm FFM", "ours FM",
             native_row("FM", "batch", 1), native_row("FM", "batch", 2)]
    contenders = {n: Turn(n, 1.0, [], [1.0]) for n in names}
    timers = {"xlearn FFM": Turn("xlearn FFM", 1.0, [], [1.0])}  # no xlearn FM
    order = list(turn_order(contenders, timers))
    assert order == ["ours FFM", "native FFM, 2 threads", "native FFM, 1 thread",
                     "xlearn FFM", "native FFM sample, 1 thread", "torchfm FFM", "ours FM",
                     "native FM, 2 threads", "native FM, 1 thread"]
    assert turn_order(contenders, timers)["xlearn FFM"] is timers["xlearn FFM"]
    del contenders["native FM, 2 threads"]  # a model without a two-thread row keeps its turns
    assert list(turn_order(contenders, timers))[-2:] == ["ours FM", "native FM, 1 thread"]
