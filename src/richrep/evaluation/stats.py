"""Aggregates computed from the tidy rows (never stored by hand): mean, std, n, 95% interval."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from scipy import stats


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std, n and the half-width of a 95% Student-t interval of the mean."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n, "ci95": half}


def aggregate(
    rows: Iterable[dict[str, Any]], keys: Sequence[str], metric: str = "accuracy"
) -> list[dict[str, Any]]:
    """Group rows by ``keys`` and summarize their ``value`` (only rows of ``metric``)."""
    groups: dict[tuple, list[float]] = {}
    first: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r.get("metric") != metric:
            continue
        key = tuple(_hashable(r.get(k)) for k in keys)
        groups.setdefault(key, []).append(float(r["value"]))
        first.setdefault(key, r)
    out = []
    for key, vals in groups.items():
        row = {k: first[key].get(k) for k in keys}
        row.update(summarize(vals))
        row["dim"] = first[key].get("dim")
        row["params"] = first[key].get("params")
        out.append(row)
    return out


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
