"""Early stopping shared by every trainer, so all of them pick their best epoch alike.

A trainer calls ``update`` after each evaluation and stops once ``should_stop``. The
first update is always the best so far; after it only a strictly better value is, so a
tie keeps the earlier step and a NaN never replaces a number (every comparison with NaN
is false). ``patience`` counts evaluations without a new best, not epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class EarlyStopping:
    """The best step, value and (optionally) state seen so far, and when to give up."""

    def __init__(self, patience: int, higher_is_better: bool = True) -> None:
        self.patience = patience
        self.higher_is_better = higher_is_better
        self.best_step: int | None = None
        self.best_value = float("nan")
        self.best_state: Any = None
        self.stale = 0  # consecutive updates without a new best

    def _improves(self, value: float) -> bool:
        if self.best_step is None:
            return True
        if self.higher_is_better:
            return value > self.best_value
        return value < self.best_value

    def update(self, step: int, value: float, state: Callable[[], Any] | None = None) -> bool:
        """Record ``value`` at ``step``; True when it is a new best. ``state`` is called
        only then (e.g. to copy the weights), so a stale epoch costs no copy."""
        if not self._improves(value):
            self.stale += 1
            return False
        self.best_step, self.best_value, self.stale = step, value, 0
        if state is not None:
            self.best_state = state()
        return True

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` consecutive updates brought no new best."""
        return self.stale >= self.patience
