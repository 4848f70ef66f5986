"""A saturating curve ``f(K) = a − b·K^(−c)`` fitted to values measured at several K, with
percentile intervals over resamples of the points: the library ``richrep advise`` uses to say
what more seeds would buy. On arrays; ``c`` is bounded to ``C_RANGE``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

C_RANGE = (0.05, 5.0)
GRID = np.geomspace(*C_RANGE, 100)  # the exponents profiled (a and b solved exactly for each)
RESAMPLES = 400


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval (None: no interval)."""

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def excludes_zero(self) -> bool:
        return self.has_interval and (self.low > 0 or self.high < 0)  # type: ignore[operator]

    def scaled(self, s: float) -> Estimate:
        if not self.has_interval:
            return Estimate(self.value * s)
        return Estimate(self.value * s, self.low * s, self.high * s)  # type: ignore[operator]


def curve(a: Any, b: Any, c: Any, k: Any) -> np.ndarray:
    """``a − b·k^(−c)``: over arrays of parameters at one k, or one set of parameters at
    several k."""
    return np.asarray(a) - np.asarray(b) * np.power(np.asarray(k, dtype=float), -np.asarray(c))


def profile_fit(k: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Weighted least squares of ``y ≈ a − b·k^(−c)`` for each row of weights ``w``
    (fits × points): ``a`` and ``b`` exactly for every ``c`` of the grid, the ``c`` of least
    squared error. Returns arrays ``(a, b, c)``, one value per row."""
    mean = y.mean()
    yc = y - mean
    x = k[None, :] ** -GRID[:, None]  # (grid, points)
    sw = w.sum(1)[:, None]
    sx, sxx, sxy = w @ x.T, w @ (x * x).T, w @ (x * yc).T
    sy, syy = (w @ yc)[:, None], (w @ (yc * yc))[:, None]
    vxx, vxy = sxx - sx * sx / sw, sxy - sx * sy / sw
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = vxy / vxx
        sse = (syy - sy * sy / sw) - vxy * slope
    sse = np.where(np.isfinite(sse), sse, np.inf)
    j = sse.argmin(1)
    r = np.arange(len(w))
    slope = slope[r, j]
    a = (sy[:, 0] - slope * sx[r, j]) / sw[:, 0] + mean
    return a, -slope, GRID[j]


def fit_curve(k: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(a, b, c)`` of ``y ≈ a − b·k^(−c)``: the grid's best, refined by bounded least
    squares (scipy)."""
    start = [float(v[0]) for v in profile_fit(k, y, np.ones((1, len(k))))]
    res = least_squares(
        lambda p: p[0] - p[1] * k ** -p[2] - y,
        start,
        bounds=([-np.inf, -np.inf, C_RANGE[0]], [np.inf, np.inf, C_RANGE[1]]),
    )
    a, b, c = (float(v) for v in res.x)
    return a, b, c


def resample_fits(
    k: np.ndarray, y: np.ndarray, n: int = RESAMPLES, seed: int = 0, min_k: int = 3
) -> tuple[np.ndarray, ...]:
    """``(a, b, c)`` arrays fitted on up to ``n`` resamples of the points (with replacement)
    that keep ``min_k`` distinct k."""
    g = np.random.default_rng(seed)
    idx = g.integers(0, len(k), size=(n * 3, len(k)))
    _, which = np.unique(k, return_inverse=True)
    present = np.zeros((len(idx), which.max() + 1), dtype=bool)
    present[np.arange(len(idx))[:, None], which[idx]] = True
    idx = idx[present.sum(1) >= min_k][:n]
    w = np.zeros((len(idx), len(k)))
    np.add.at(w, (np.repeat(np.arange(len(idx)), len(k)), idx.ravel()), 1.0)
    return profile_fit(k, y, w)


def interval(samples: np.ndarray, point: float) -> Estimate:
    """``point`` with the 2.5 and 97.5 percentiles of ``samples``."""
    lo, hi = np.percentile(np.asarray(samples, dtype=float), [2.5, 97.5])
    return Estimate(float(point), float(lo), float(hi))
