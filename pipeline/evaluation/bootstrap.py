"""Bootstrap intervals over users for per-user metric values.

A single mean NDCG hides how much it would move with another sample of users; resampling
users (with replacement) gives a percentile interval, and resampling the *same* users for
two systems gives a paired interval for the lift, far narrower than two separate intervals
when the systems' per-user values are correlated (they usually are: hard users are hard
for every system).

Users are drawn as one (resamples x n) index matrix from ``np.random.default_rng(seed)``,
generated in row chunks so memory stays bounded; consecutive draws from one generator
continue the same stream, so the result does not depend on the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Largest number of index entries drawn at once (about 160 MB of int64).
_MAX_DRAW = 20_000_000


def _check(values: np.ndarray, resamples: int, level: float) -> np.ndarray:
    """Validate before resampling: an empty or NaN input would give a silent NaN interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D array of per-user values; got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("per-user values must be finite")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1; got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    return values


def _draws(n: int, resamples: int, seed: int) -> Iterator[tuple[slice, np.ndarray]]:
    """The (resamples x n) user index matrix, in row chunks of one stream."""
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_DRAW // n)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        yield slice(start, stop), rng.integers(0, n, size=(stop - start, n))


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Mean of each bootstrap resample of ``values``."""
    means = np.empty(resamples)
    for rows, idx in _draws(values.size, resamples, seed):
        means[rows] = values[idx].mean(axis=1)
    return means


def _interval(values: np.ndarray, resamples: int, seed: int, level: float) -> dict[str, float]:
    means = _resampled_means(values, resamples, seed)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high)}


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """Mean and percentile bootstrap interval over users: {'mean','low','high'}."""
    values = _check(values, resamples, level)
    return _interval(values, resamples, seed, level)


def paired_lift_ci(system: np.ndarray, baseline: np.ndarray, resamples: int = 1000,
                   seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of system - baseline per user and its paired percentile bootstrap interval
    (the same resampled users for both), plus 'excludes_zero': bool.

    Resampling the per-user differences is the same as resampling users and differencing
    the two systems' means, since the mean is linear.
    """
    system = _check(system, resamples, level)
    baseline = _check(baseline, resamples, level)
    if system.shape != baseline.shape:
        raise ValueError(f"system and baseline need one value per same user; got "
                         f"{system.size} and {baseline.size} values")
    result: dict[str, float] = _interval(system - baseline, resamples, seed, level)
    result["excludes_zero"] = bool(result["low"] > 0.0 or result["high"] < 0.0)
    return result


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 1000,
             seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """sum(numerator) / sum(denominator) over users and its percentile bootstrap interval
    (both sums taken over the same draw): a pooled rate such as the recall of the
    long-tail items, where users hold different numbers of them. Only users with a
    positive denominator are resampled: the rate is about them, and a draw of none of
    them would have no rate."""
    numerator = _check(numerator, resamples, level)
    denominator = _check(denominator, resamples, level)
    if numerator.shape != denominator.shape or denominator.sum() <= 0:
        raise ValueError("need one numerator and denominator per user, with a positive total")
    numerator, denominator = numerator[denominator > 0], denominator[denominator > 0]
    ratios = np.empty(resamples)
    for rows, idx in _draws(numerator.size, resamples, seed):
        ratios[rows] = numerator[idx].sum(axis=1) / denominator[idx].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return {"mean": float(numerator.sum() / denominator.sum()), "low": float(low),
            "high": float(high)}
