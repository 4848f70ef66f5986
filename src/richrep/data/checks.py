"""Checks on raw arrays: integer ids (labels, groups) and whether two sets of inputs share units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from richrep.errors import DataError

SCALE_FACTOR = 10.0  # a target whose max |x| differs from the source's by more warns
MEAN_STDS = 5.0  # ... as does one whose mean lies more source stds from the source mean


def integer_ids(a: np.ndarray, what: str, where: str) -> np.ndarray:
    """``a`` (labels or group ids) as int64; a :class:`DataError` starting with ``where`` and
    naming ``what`` for NaN, inf, fractional or out-of-range values instead of a silent cast."""
    if a.dtype.kind in "biu":
        if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
            raise DataError(f"{where}: {what} hold ids up to {int(a.max())}; remap them to 0..C-1")
        return a.astype(np.int64)
    if a.dtype.kind != "f":
        raise DataError(f"{where}: {what} must be integers, got dtype {a.dtype}")
    nan = int(np.isnan(a).sum())
    if nan:
        raise DataError(f"{where}: {nan} of {a.size} {what} are NaN; every example needs one")
    if not np.all(np.isfinite(a)):
        raise DataError(f"{where}: {what} hold inf values; they must be integers")
    if not np.all(a == np.round(a)):
        raise DataError(f"{where}: {what} must be integers, got fractional values ({a.dtype})")
    if a.size and float(np.abs(a).max()) >= 2.0**53:
        top = float(np.abs(a).max())
        raise DataError(f"{where}: {what} hold ids up to {top:.3g}; remap them to 0..C-1")
    return a.astype(np.int64)


@dataclass(frozen=True)
class ValueStats:
    """Summary of an input tensor's values: mean, standard deviation and max |x|."""

    mean: float
    std: float
    max_abs: float

    def __str__(self) -> str:
        return f"max |x| {self.max_abs:.3g}, mean {self.mean:.3g}, std {self.std:.3g}"


def value_stats(x: torch.Tensor | np.ndarray) -> ValueStats:
    """:class:`ValueStats` of all elements of ``x`` (no copy of a float tensor); of a seeded
    sample of the images for streamed images."""
    if hasattr(x, "summary"):  # an ImageSource
        s = x.summary
        mean = float(s["sum"].sum() / (s["n"] * len(s["sum"])))
        var = float(s["sumsq"].sum() / (s["n"] * len(s["sum"]))) - mean**2
        top = max(abs(float(s["min"].min())), abs(float(s["max"].max())))
        return ValueStats(mean, max(var, 0.0) ** 0.5, top)
    t = torch.as_tensor(x)
    if not torch.is_floating_point(t):
        t = t.float()
    if t.numel() == 0:
        return ValueStats(0.0, 0.0, 0.0)
    std, mean = torch.std_mean(t, correction=0)
    lo, hi = torch.aminmax(t)
    return ValueStats(float(mean), float(std), max(abs(float(lo)), abs(float(hi))))


def value_range_warning(
    source: ValueStats, target_x: torch.Tensor | np.ndarray, name: str
) -> str | None:
    """A warning when ``target_x`` seems to be in other units than the source (for example
    0–255 pixels against a source in [0, 1]): its max |x| differs by more than
    ``SCALE_FACTOR`` times, or its mean lies more than ``MEAN_STDS`` source stds away.
    ``None`` when the ranges are comparable."""
    target = value_stats(target_x)
    tiny = 1e-12
    ratio = max(target.max_abs, tiny) / max(source.max_abs, tiny)
    stds = abs(target.mean - source.mean) / max(source.std, tiny)
    reasons = []
    if ratio > SCALE_FACTOR:
        reasons.append(f"its max |x| is {ratio:.3g}× the source's")
    elif ratio < 1 / SCALE_FACTOR:
        reasons.append(f"its max |x| is 1/{1 / ratio:.3g} of the source's")
    if stds > MEAN_STDS:
        reasons.append(f"its mean lies {stds:.3g} source stds from the source mean")
    if not reasons:
        return None
    return (
        f"{name}: the inputs ({target}) look like other units than the source's ({source}): "
        f"{' and '.join(reasons)}. Scale the target like the source (e.g. 0–255 pixels "
        "against [0, 1]: divide by 255; an npz dataset has a `scale` argument)"
    )
