"""Aggregates computed from the tidy rows (never stored by hand): mean, std, n, 95% intervals of a
mean and of a difference of means (paired over draws, or Welch).

An interval needs two distinct values: from one value, or from values that are all equal (three
orders of a stream that end on the same classifier), there is no interval (NaN / None), never a
half-width of 0. Rows that carry an ``episode`` (few-shot) are summarized over episodes: the
values of an episode (one per seed or seed subset) are averaged first, and n counts episodes."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from scipy import stats

LEVEL = 0.95


def summarize(values: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Mean, sample std, n and the half-width of a Student-t interval of the mean: NaN when
    there are fewer than two values or they are all equal (no spread: no interval)."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    spread = n > 1 and max(values) != min(values)
    half = t_quantile(n - 1, level) * std / math.sqrt(n) if spread else math.nan
    return {"mean": mean, "std": std if spread else 0.0, "n": n, "ci95": half}


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided Student-t critical value for ``df`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + level / 2, df))


def draw_id(row: Any) -> Hashable:
    """Which replicate of the probe's training examples a row measures: (draw, episode)."""
    return (row.get("draw", 0) or 0, row.get("episode"))


def aggregate(
    rows: Iterable[Any], keys: Sequence[str], metric: str | None = "accuracy"
) -> list[dict[str, Any]]:
    """Group rows (``Row`` objects or dicts) by ``metric`` and ``keys`` and summarize ``value``.

    Only rows of ``metric`` are kept (every metric, each its own group, with ``metric=None``).
    A group's ``unit`` says what n counts: ``episodes`` when its rows carry one (the values of
    each episode averaged first, so n is the number of episodes), else ``values`` (seeds or seed
    subsets × draws). Each group also carries ``values``, ``by_draw`` (draw id -> values) for
    paired comparisons, ``seed_sets`` and ``draws`` (how many of each varied) and the
    ``dim``/``params`` of its first row. Non-finite values are skipped.
    """
    groups: dict[tuple, list[float]] = {}
    draws: dict[tuple, dict[Hashable, list[float]]] = {}
    seeds: dict[tuple, set] = {}
    first: dict[tuple, Any] = {}
    for r in rows:
        m = r.get("metric", "accuracy")
        if metric is not None and m != metric:
            continue
        v = float(r.get("value"))
        if not math.isfinite(v):
            continue
        key = (m, *(_hashable(r.get(k)) for k in keys))
        groups.setdefault(key, []).append(v)
        draws.setdefault(key, {}).setdefault(draw_id(r), []).append(v)
        seeds.setdefault(key, set()).add(_hashable(r.get("seeds")))
        first.setdefault(key, r)
    out = []
    for key, vals in groups.items():
        by = draws[key]
        episodic = all(d[1] is not None for d in by)  # type: ignore[index]
        row = {k: first[key].get(k) for k in keys}
        row["metric"] = key[0]
        row.update(summarize([_mean(v) for v in by.values()] if episodic else vals))
        row["unit"] = "episodes" if episodic else "values"
        row["values"] = vals
        row["by_draw"] = by
        row["seed_sets"] = len(seeds[key])
        row["draws"] = len({d[0] for d in by})  # type: ignore[index]
        row["dim"] = first[key].get("dim")
        row["params"] = first[key].get("params")
        out.append(row)
    return out


def welch_interval(
    mean_a: float,
    std_a: float,
    n_a: int,
    mean_b: float,
    std_b: float,
    n_b: int,
    level: float = LEVEL,
) -> dict[str, Any] | None:
    """The difference ``mean_a - mean_b`` of two independent means with the half-width of its
    Welch (Satterthwaite) interval; None when neither side has two distinct values.

    A side with one value has no variance of its own: it is taken to vary like the other side
    (so the interval is that of one more draw of the other side's spread, df of the other)."""
    if n_a < 1 or n_b < 1 or (n_a < 2 and n_b < 2):
        return None
    diff = mean_a - mean_b
    if n_a < 2 or n_b < 2:
        std, n = (std_b, n_b) if n_a < 2 else (std_a, n_a)
        half = t_quantile(n - 1, level) * std * math.sqrt(1 / n_a + 1 / n_b)
        return _interval(diff, half, min(n_a, n_b))
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return None
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return _interval(diff, t_quantile(df, level) * se, min(n_a, n_b))


def _interval(diff: float, half: float, n: int) -> dict[str, Any] | None:
    if not (math.isfinite(half) and half > 0):
        return None  # no spread on either side: no interval
    return {"mean": diff, "ci95": half, "n": n, "method": "welch"}


def paired_difference(
    a_by_draw: Mapping[Hashable, Sequence[float]],
    b_by_draw: Mapping[Hashable, Sequence[float]],
    level: float = LEVEL,
) -> dict[str, Any] | None:
    """The mean over shared draws of (mean of ``a`` − mean of ``b``) on each draw, with the
    half-width of its t-interval over draws (NaN when every draw's difference is the same); None
    when fewer than two draws are shared."""
    common = [d for d in a_by_draw if d in b_by_draw and a_by_draw[d] and b_by_draw[d]]
    if len(common) < 2:
        return None
    diffs = [_mean(a_by_draw[d]) - _mean(b_by_draw[d]) for d in common]
    s = summarize(diffs, level)
    return {"mean": s["mean"], "ci95": s["ci95"], "n": len(common), "method": "paired"}


def _mean(v: Sequence[float]) -> float:
    return sum(v) / len(v)


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
