"""Bootstrap intervals over users for per-user metric values.

A single mean NDCG hides how much it would move with another sample of users; resampling
users (with replacement) gives a percentile interval, and resampling the *same* users for
two systems gives a paired interval for the lift, far narrower than two separate intervals
when the systems' per-user values are correlated (they usually are: hard users are hard
for every system).

Users are drawn as one (resamples x n) index matrix from ``np.random.default_rng(seed)``,
generated in row chunks so memory stays bounded; consecutive draws from one generator
continue the same stream, so the result does not depend on the chunk size. The draw
depends only on n, the resamples and the seed: ``bootstrap_cis`` and ``ratio_cis`` give
many vectors of one length their intervals from one draw (drawing costs more than
resampling with it), and each resample is summed in place by ``gathered_sums``, equal
bit for bit to numpy's ``values[idx].mean(axis=1)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from models.arrays import gathered_sums

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
    """Mean of each bootstrap resample of each row of ``values`` (vectors x users), every
    row over the same draws: (vectors x resamples)."""
    values = np.atleast_2d(values)
    means = np.empty((values.shape[0], resamples))
    for rows, idx in _draws(values.shape[1], resamples, seed):
        means[:, rows] = gathered_sums(values, idx) / values.shape[1]
    return means


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _by_length(vectors: list[np.ndarray]) -> dict[int, list[int]]:
    """Positions of the vectors of each length: they can share one draw of users."""
    groups: dict[int, list[int]] = {}
    for i, v in enumerate(vectors):
        groups.setdefault(v.size, []).append(i)
    return groups


def bootstrap_cis(vectors: Sequence[np.ndarray], resamples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> list[dict[str, float]]:
    """``bootstrap_ci`` of each of ``vectors``, each the same as its own call.

    The users drawn depend only on a vector's length, the resamples and the seed, so the
    vectors of one length (every system scored on the same users) share one draw: drawing
    1000 x 100k indices costs more than resampling a vector with them.
    """
    checked = [_check(v, resamples, level) for v in vectors]
    result: list[dict[str, float]] = [{} for _ in checked]
    for members in _by_length(checked).values():
        means = _resampled_means(np.stack([checked[i] for i in members]), resamples, seed)
        for i, samples in zip(members, means, strict=True):
            low, high = _percentiles(samples, level)
            result[i] = {"mean": float(checked[i].mean()), "low": low, "high": high}
    return result


def bootstrap_ci(values: np.ndarray, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """Mean and percentile bootstrap interval over users: {'mean','low','high'}."""
    return bootstrap_cis([values], resamples, seed, level)[0]


def paired_lift_ci(system: np.ndarray, baseline: np.ndarray, resamples: int = 1000,
                   seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of system - baseline per user and its paired percentile bootstrap interval
    (the same resampled users for both), plus 'excludes_zero': bool.

    Resampling the per-user differences is the same as resampling users and differencing
    the two systems' means, since the mean is linear: ``bootstrap_cis`` of the
    differences gives the same interval, beside other vectors of that length.
    """
    system = _check(system, resamples, level)
    baseline = _check(baseline, resamples, level)
    if system.shape != baseline.shape:
        raise ValueError(f"system and baseline need one value per same user; got "
                         f"{system.size} and {baseline.size} values")
    result: dict[str, float] = bootstrap_ci(system - baseline, resamples, seed, level)
    result["excludes_zero"] = bool(result["low"] > 0.0 or result["high"] < 0.0)
    return result


def ratio_cis(numerators: Sequence[np.ndarray], denominator: np.ndarray,
              resamples: int = 1000, seed: int = 0, level: float = 0.95
              ) -> list[dict[str, float]]:
    """``ratio_ci`` of each of ``numerators`` over the one ``denominator``, each the same
    as its own call, all over one draw of users."""
    denominator = _check(denominator, resamples, level)
    numerators = [_check(v, resamples, level) for v in numerators]
    if any(v.shape != denominator.shape for v in numerators) or denominator.sum() <= 0:
        raise ValueError("need one numerator and denominator per user, with a positive total")
    keep = denominator > 0
    pooled = np.stack([*(v[keep] for v in numerators), denominator[keep]])
    sums = np.empty((len(pooled), resamples))
    for rows, idx in _draws(int(keep.sum()), resamples, seed):
        sums[:, rows] = gathered_sums(pooled, idx)
    total = pooled[-1].sum()
    result = []
    for numerator, resampled in zip(pooled[:-1], sums[:-1], strict=True):
        low, high = _percentiles(resampled / sums[-1], level)
        result.append({"mean": float(numerator.sum() / total), "low": low, "high": high})
    return result


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, resamples: int = 1000,
             seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """sum(numerator) / sum(denominator) over users and its percentile bootstrap interval
    (both sums taken over the same draw): a pooled rate such as the recall of the
    long-tail items, where users hold different numbers of them. Only users with a
    positive denominator are resampled: the rate is about them, and a draw of none of
    them would have no rate."""
    return ratio_cis([numerator], denominator, resamples, seed, level)[0]
