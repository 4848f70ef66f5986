"""A table cell (a mean with its n and 95% interval, clipped to a bounded metric's range) and a
gain (a difference with its 95% interval): what they show, and why there is no interval when
there is none (one value, or values all equal: never "± 0")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RATES = ("top1", "map", "cross_top1", "compatible", "average_compatibility")
UNIT = {  # what n counts
    "values": "seeds or seed subsets × draws",
    "episodes": "few-shot episodes, each averaged over seeds or seed subsets",
}


def bounds(metric: str) -> tuple[float, float] | None:
    """(0, 1) for a rate (an accuracy, top-1, mAP, a compatibility rate), else None."""
    return (0.0, 1.0) if "accuracy" in metric or metric in RATES else None


@dataclass(frozen=True)
class Cell:
    """Mean of a cell's values, their std, n (what it counts: ``unit``), and the 95% interval
    half-width (None from one value or equal values); ``bounds`` clip the interval's ends."""

    mean: float
    std: float
    n: int
    ci95: float | None
    dim: int | None = None
    params: int | None = None
    by_draw: dict[Any, list[float]] = field(default_factory=dict, compare=False, repr=False)
    unit: str = "values"
    bounds: tuple[float, float] | None = None

    @property
    def low(self) -> float:
        low = self.mean - (self.ci95 or 0.0)
        return min(max(low, self.bounds[0]), self.mean) if self.bounds else low

    @property
    def high(self) -> float:
        high = self.mean + (self.ci95 or 0.0)
        return max(min(high, self.bounds[1]), self.mean) if self.bounds else high

    @property
    def clipped(self) -> bool:
        """Whether a bound cut the interval."""
        if self.ci95 is None or not self.bounds:
            return False
        return self.mean - self.ci95 < self.bounds[0] or self.mean + self.ci95 > self.bounds[1]

    def text(self, digits: int = 3) -> str:
        """``0.742 ± 0.011 (n=3)``: mean ± 95% interval half-width, and n; ``0.702 [0.166,
        1.000] (n=3)`` when a bound clips the interval; ``0.742 (n=1, no interval)``."""
        return f"{self.mean_text(digits)}{self.pm_text(digits)} ({self.n_text()})"

    def n_text(self) -> str:
        """``n=3`` and, without an interval, why none."""
        return f"n={self.n}" if self.ci95 is not None else f"n={self.n}, no interval"

    def mean_text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f}"

    def pm_text(self, digits: int = 3, scale: float = 1.0) -> str:
        """`` ± 0.011``; `` [0.166, 1.000]`` when clipped (the interval is then not symmetric);
        empty without an interval."""
        if self.ci95 is None:
            return ""
        if self.clipped:
            return f" [{scale * self.low:.{digits}f}, {scale * self.high:.{digits}f}]"
        return f" ± {scale * self.ci95:.{digits}f}"

    def ci_text(self, digits: int = 3) -> str:
        if self.ci95 is None:
            why = "n=1" if self.n < 2 else f"{self.n} equal values"
            return f"no interval ({why})"
        clip = f", clipped to [{self.bounds[0]:g}, {self.bounds[1]:g}]" if self.clipped else ""
        return (
            f"95% CI [{self.low:.{digits}f}, {self.high:.{digits}f}]{clip} "
            f"(± {self.ci95:.{digits}f} before clipping)"
            if clip
            else f"95% CI [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        )

    def bracket(self, digits: int = 3) -> str:
        """``[low, high]``, ``clipped to [0, 1]`` (the cell shows the bounds), or ``n=1, no
        interval``."""
        if self.ci95 is None:
            return self.n_text()
        if self.clipped and self.bounds:
            return f"clipped to [{self.bounds[0]:g}, {self.bounds[1]:g}]"
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Gain:
    """``left − right`` with the half-width of its 95% interval (None: no interval)."""

    left: str
    right: str
    diff: float
    ci95: float | None
    n: int  # draws (paired) or the smaller side's values (Welch)
    method: str  # "paired", "welch" or "none"
    paired_over: str = "draws"  # what a paired interval pairs: draws or episodes

    @property
    def low(self) -> float | None:
        return None if self.ci95 is None else self.diff - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.ci95 is None else self.diff + self.ci95

    @property
    def significant(self) -> bool:
        """True only when there is a 95% interval (of some width) and it excludes 0."""
        if self.ci95 is None or not math.isfinite(self.ci95) or self.ci95 <= 0:
            return False
        return self.diff - self.ci95 > 0 or self.diff + self.ci95 < 0

    def text(self, digits: int = 3) -> str:
        pm = f" ± {self.ci95:.{digits}f}" if self.ci95 is not None else " (no interval)"
        return f"{self.diff:+.{digits}f}{pm}"

    @property
    def no_interval(self) -> str:
        """Why there is no interval ("" when there is one)."""
        if self.ci95 is not None:
            return ""
        if self.method == "paired":
            return f"the same difference on all {self.n} {self.paired_over}"
        return "one value, or equal values, on each side"

    def ci_text(self, digits: int = 3) -> str:
        if self.ci95 is None:
            return f"no interval ({self.no_interval})"
        how = "Welch, unpaired"
        if self.method == "paired":
            how = f"paired over {self.n} {self.paired_over}"
        return f"95% CI [{self.low:+.{digits}f}, {self.high:+.{digits}f}], {how}"
