"""EarlyStopping: which update is a new best, what it keeps, and when it says stop."""

from __future__ import annotations

import math

import pytest

from models.early_stopping import EarlyStopping


def run(values: list[float], patience: int, higher_is_better: bool = True,
        ) -> tuple[EarlyStopping, list[bool], int]:
    """Feed values at steps 0, 1, ... until the stopper says stop; the stopper, the update
    results and the number of updates made."""
    stopper = EarlyStopping(patience, higher_is_better)
    improved = []
    for step, value in enumerate(values):
        improved.append(stopper.update(step, value, state=lambda v=value: {"value": v}))
        if stopper.should_stop:
            break
    return stopper, improved, len(improved)


def test_higher_is_better_keeps_the_best_and_stops_after_patience() -> None:
    stopper, improved, made = run([0.1, 0.3, 0.2, 0.25, 0.9], patience=2)
    assert improved == [True, True, False, False]
    assert made == 4  # the 0.9 is never seen
    assert (stopper.best_step, stopper.best_value) == (1, 0.3)
    assert stopper.best_state == {"value": 0.3}
    assert stopper.should_stop


def test_lower_is_better() -> None:
    stopper, improved, _ = run([0.7, 0.5, 0.6, 0.4, 0.45], patience=3, higher_is_better=False)
    assert improved == [True, True, False, True, False]
    assert (stopper.best_step, stopper.best_value) == (3, 0.4)
    assert not stopper.should_stop


def test_a_tie_is_not_an_improvement() -> None:
    stopper, improved, _ = run([0.5, 0.5, 0.5], patience=5)
    assert improved == [True, False, False]
    assert stopper.best_step == 0
    assert stopper.stale == 2


def test_a_new_best_resets_the_count() -> None:
    _, improved, made = run([0.1, 0.0, 0.2, 0.0, 0.0, 0.0], patience=2)
    assert improved == [True, False, True, False, False]
    assert made == 5


def test_first_update_is_always_best_even_nan_and_nan_never_improves_later() -> None:
    stopper = EarlyStopping(patience=3)
    assert stopper.update(0, math.nan)
    assert not stopper.update(1, 0.9)
    assert stopper.best_step == 0 and math.isnan(stopper.best_value)
    later = EarlyStopping(patience=3, higher_is_better=False)
    assert later.update(0, 0.5)
    assert not later.update(1, math.nan)
    assert later.best_value == 0.5


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_first_update_of_infinity_is_best(higher_is_better: bool) -> None:
    stopper = EarlyStopping(patience=1, higher_is_better=higher_is_better)
    assert stopper.update(4, -math.inf if higher_is_better else math.inf)
    assert stopper.best_step == 4


def test_state_is_taken_only_on_a_new_best() -> None:
    calls: list[int] = []

    def state(step: int) -> int:
        calls.append(step)
        return step

    stopper = EarlyStopping(patience=10)
    for step, value in enumerate([1.0, 0.5, 2.0, 2.0]):
        stopper.update(step, value, state=lambda s=step: state(s))
    assert calls == [0, 2]
    assert stopper.best_state == 2


def test_without_state_nothing_is_kept() -> None:
    stopper = EarlyStopping(patience=1)
    assert stopper.update(0, 1.0)
    assert stopper.best_state is None


def test_before_any_update() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.best_step is None and math.isnan(stopper.best_value)
    assert not stopper.should_stop
    assert EarlyStopping(patience=0).should_stop  # no patience: stop as soon as asked
