"""Checks on raw arrays: integer ids (labels, groups), inputs float32 can hold, whether two sets
of inputs share units, and the memory an array may take."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from richrep.errors import DataError

SCALE_FACTOR = 10.0  # a target whose max |x| differs from the source's by more warns
MEAN_STDS = 5.0  # ... as does one whose mean lies more source stds from the source mean
FLOAT32_STEPS = 256  # a varying feature must span this many float32 steps (8 bits, a pixel's)
CHUNK_BYTES = 64 << 20  # rows of inputs checked at a time


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


def check_inputs(x: np.ndarray, name: str, where: str) -> None:
    """Refuse inputs ``x`` (the array ``name``) holding NaN or inf, or whose conversion to
    float32 (the tasks' dtype) would erase them: a varying feature spanning fewer than
    :data:`FLOAT32_STEPS` float32 steps at its magnitude (int64 values near 2**62 that differ
    by less than 2**47 become one constant). Integers up to 2**24, exact in float32, and
    float32 or narrower types pass. Read a chunk of rows at a time (a memory map stays mapped)."""
    wide = x.dtype.itemsize > (2 if x.dtype.kind in "iu" else 4)
    if x.dtype.kind not in "fiu" or (x.dtype.kind != "f" and not wide) or x.size == 0:
        return
    rows = max(1, CHUNK_BYTES // max(1, x[:1].nbytes))
    bad, first, lo, hi = 0, -1, None, None
    for i in range(0, len(x), rows):
        c = np.asarray(x[i : i + rows])
        c = c.reshape(len(c), -1)
        if x.dtype.kind == "f":
            ok = np.isfinite(c)
            if not ok.all():
                bad += int(c.size - ok.sum())
                first = first if first >= 0 else i + int(np.flatnonzero(~ok.all(1))[0])
                continue
        if wide and not bad:
            lo = c.min(0) if lo is None else np.minimum(lo, c.min(0))
            hi = c.max(0) if hi is None else np.maximum(hi, c.max(0))
    if bad:
        raise DataError(
            f"{where}: {name} holds {bad} NaN/inf value{'s' * (bad > 1)} (example {first} the "
            "first); inputs must be finite: fill or drop those examples"
        )
    if lo is not None:
        _check_float32_steps(lo, hi, x, name, where)


def _check_float32_steps(lo: np.ndarray, hi: np.ndarray, x: np.ndarray, name: str, where: str):
    """Refuse features (per-feature ``lo``..``hi``) that float32 cannot tell apart (see
    :func:`check_inputs`)."""
    if x.dtype.kind in "iu":  # exact: int64 near 2**62 differs by less than float64's step
        span = (hi.astype(np.uint64) - lo.astype(np.uint64)).astype(np.float64)
    else:
        span = hi.astype(np.float64) - lo.astype(np.float64)
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    top = np.maximum(np.abs(lo), np.abs(hi))
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: refused later
        step = np.spacing(top.astype(np.float32)).astype(np.float64)
    short = (span > 0) & (span < FLOAT32_STEPS * step)
    if x.dtype.kind in "iu":
        short &= top > 2.0**24  # integers up to 2**24 are exact in float32
    if not short.any():
        return
    j = int(np.flatnonzero(short)[0])
    at = ", ".join(str(int(i)) for i in np.unravel_index(j, x.shape[1:]))
    raise DataError(
        f"{where}: {name} holds values near {top[j]:.3g} that vary by only {span[j]:.3g} in "
        f"{int(short.sum())} of its {short.size} features (e.g. {name}[:, {at}]); tasks hold "
        f"float32, whose step there is {step[j]:.3g}, so those features would keep fewer than "
        f"{FLOAT32_STEPS} distinct values (a constant, when the step exceeds the range). "
        f"Subtract an offset before saving, e.g. {name} - {name}.min(axis=0)"
    )


def available_memory() -> int | None:
    """Bytes of memory this process may still allocate: the kernel's ``MemAvailable``, capped
    by a cgroup (v2) memory limit; None where neither is known."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((cg / "memory.current").read_text())
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``14.6 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


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
