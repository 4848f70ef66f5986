"""What to use, from a run's own numbers: per target, accuracy against K fitted over the seed
subsets the run measured, the gain of more seeds extrapolated with an interval, the cost of
each representation from the member ledger, and the cheapest one within noise of the best.

A library on result rows (``richrep.results.Row``) and member costs given as plain values
(:class:`MemberCost`); it knows nothing of run folders.

* The curve is ``f(K) = a − b·K^(−c)``, least squares over one value per seed subset (the mean
  over the probe's draws or episodes), ``c`` in [0.05, 5]. It is fitted only when at least
  3 distinct K were measured; otherwise only the measured gains are given.
* Intervals are 95% percentile intervals over 400 resamples of the seed subsets (with
  replacement; a resample needs 3 distinct K), each refitted.
* Options are compared with the highest mean by a normal interval of the difference. A column
  with several seed subsets has the standard error of their mean; a column measured once takes
  the curve's spread at its K (catN) or else the single seeds' seed-to-seed spread, and says so.
* One more seed "stops paying" at the first K where the 95% interval of its gain reaches below
  ``min_gain`` (default 0.001: 0.1 points of accuracy).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from richrep.analysis.advise_targets import SEED_KINDS, select_targets, target_key, target_label
from richrep.analysis.budget import Budget, check_budget, parse_budget
from richrep.analysis.saturation import (
    RESAMPLES,
    Estimate,
    curve,
    fit_curve,
    interval,
    resample_fits,
)
from richrep.errors import ConfigError
from richrep.results import Row

FLOOR_KINDS = frozenset({"input", "random"})  # representations that train nothing
AHEAD = (10, 20)
MIN_GAIN = 0.001
STOP_SEARCH = 50  # the furthest K the stopping point is looked for
Z95 = 1.959963984540054
Fits = tuple[np.ndarray, np.ndarray, np.ndarray]  # resampled (a, b, c)


@dataclass(frozen=True)
class MemberCost:
    """A finished member as the ledger records it."""

    name: str
    kind: str
    k: int
    seed: int
    seconds: float | None  # training time (None or 0: not recorded, e.g. imported)
    params: int | None = None
    dim: int | None = None
    requires: tuple[str, ...] = ()  # members trained first (a student's teachers)
    device: str = "cpu"


@dataclass(frozen=True)
class Curve:
    """``f(K) = a − b·K^(−c)`` with 95% intervals; ``sd``: one subset's scatter around it."""

    a: Estimate
    b: Estimate
    c: Estimate
    sd: float
    resamples: int


@dataclass(frozen=True)
class Option:
    """One measured representation of a target: its mean, noise and cost."""

    column: str
    kind: str
    k: int
    mean: float
    se: float | None  # standard error of the mean (None: unknown)
    subsets: int  # seed subsets (or seeds) it was measured on
    borrowed: bool  # measured once: its noise is taken from elsewhere (see the module)
    seconds: float | None  # training time of every network it needs (teachers included)
    params: int | None  # parameters run per example
    dim: int | None
    floor: bool
    vs_best: Estimate | None = None
    within_noise: bool = False


@dataclass(frozen=True)
class BudgetAnswer:
    budget: Budget
    seeds: int  # seeds the budget buys
    value: Estimate | None  # catK at that K, measured or predicted
    predicted: bool
    marginal: Estimate | None  # the gain of the seed after those
    per_unit: Estimate | None  # that gain per unit of the budget
    best_affordable: str | None  # the best measured option the budget pays for


@dataclass
class Advice:
    """The answer for one target."""

    target: str
    entry: str
    metric: str
    scale: float  # 100 (points) for a metric in [0, 1], else 1
    subsets: int
    seeds: int
    ks: tuple[int, ...]
    draws: int  # draws (or episodes) averaged per subset
    curve: Curve | None
    no_curve: str  # why there is no curve ("" when there is one)
    measured: Estimate | None  # catN − single, measured
    fitted: Estimate | None  # f(N) − f(1)
    no_gain: bool
    next_seed: Estimate | None  # f(N+1) − f(N)
    ahead: dict[int, Estimate] = field(default_factory=dict)  # f(K), K > N
    ahead_gain: dict[int, Estimate] = field(default_factory=dict)  # f(K) − f(N)
    stops_at: int | None = None
    seed_seconds: float | None = None
    device: str = "cpu"
    options: list[Option] = field(default_factory=list)
    best: str | None = None
    cheapest: str | None = None
    cheapest_run: str | None = None
    budget: BudgetAnswer | None = None
    min_gain: float = MIN_GAIN

    @property
    def top_k(self) -> int:
        return max(self.ks) if self.ks else 0

    def option(self, column: str | None) -> Option | None:
        return next((o for o in self.options if o.column == column), None)


# ------------------------------------------------------------------------------ options


def seed_seconds(members: Sequence[MemberCost]) -> float | None:
    """Mean training time of one seed (None when a seed's time is not recorded)."""
    secs = [m.seconds for m in members if m.kind == "single"]
    return float(np.mean(secs)) if secs and all(secs) else None


def _subset_values(rows: Iterable[Row]) -> dict[str, dict[tuple, list[float]]]:
    out: dict[str, dict[tuple, list[float]]] = {}
    for r in rows:
        if math.isfinite(r.value):
            out.setdefault(r.column, {}).setdefault(tuple(r.seeds), []).append(float(r.value))
    return out


def _seconds(names: Iterable[str], by_name: Mapping[str, MemberCost]) -> float | None:
    """Training time of these members and everything they require (each once)."""
    seen: set[str] = set()
    todo = list(names)
    total = 0.0
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        m = by_name.get(name)
        if m is None or not m.seconds:
            return None
        total += m.seconds
        todo += list(m.requires)
    return total


def _members_of(kind: str, k: int, seeds: tuple, members: Sequence[MemberCost]) -> list[str] | None:
    """The members a representation is made of (a seed subset's seeds, or one baseline)."""
    if kind in SEED_KINDS:
        by_seed = {m.seed: m.name for m in members if m.kind == "single"}
        return [by_seed[s] for s in seeds] if all(s in by_seed for s in seeds) else None
    hits = [m.name for m in members if m.kind == kind and m.k == k and m.seed in seeds]
    return hits[:1] or None


def _column_seconds(
    kind: str, k: int, subsets: Iterable[tuple], members: Sequence[MemberCost]
) -> float | None:
    """Mean training time of a column's subsets (None when a member's time is unknown)."""
    if kind in FLOOR_KINDS:
        return 0.0
    by_name = {m.name: m for m in members}
    per = []
    for seeds in subsets:
        names = _members_of(kind, k, seeds, members)
        per.append(None if names is None else _seconds(names, by_name))
    return None if not per or any(p is None for p in per) else float(np.mean(per))


def _options(
    values: Mapping[str, Mapping[tuple, list[float]]],
    info: Mapping[str, Row],
    members: Sequence[MemberCost],
    curve_sd: Mapping[int, float],
) -> list[Option]:
    """Every column of the target with its mean, standard error and cost, compared with the
    highest mean."""
    singles = [
        float(np.mean(v))
        for c in values
        if info[c].representation == "single"
        for v in values[c].values()
    ]
    single_sd = float(np.std(singles, ddof=1)) if len(singles) > 1 else None
    out = []
    for col, subsets in values.items():
        r = info[col]
        means = [float(np.mean(v)) for v in subsets.values()]
        n = len(means)
        borrowed = n < 2
        if n > 1:
            se: float | None = float(np.std(means, ddof=1) / math.sqrt(n))
        elif r.representation in SEED_KINDS and r.k in curve_sd:
            se = curve_sd[r.k]
        else:
            se = single_sd
        out.append(
            Option(
                col,
                r.representation,
                r.k,
                float(np.mean(means)),
                se,
                n,
                borrowed,
                _column_seconds(r.representation, r.k, subsets, members),
                r.params,
                r.dim,
                r.representation in FLOOR_KINDS,
            )
        )
    if not out:
        return out
    best = max(out, key=lambda o: o.mean)
    compared = []
    for o in out:
        diff = o.mean - best.mean
        if o is best:
            vs, near = Estimate(0.0, 0.0, 0.0), True
        elif o.se is not None and best.se is not None:
            half = Z95 * math.hypot(o.se, best.se)
            vs, near = Estimate(diff, diff - half, diff + half), diff + half >= 0
        else:
            vs, near = Estimate(diff), diff >= 0
        compared.append(dataclasses.replace(o, vs_best=vs, within_noise=near))
    return sorted(compared, key=lambda o: -o.mean)


def _cheapest(options: Sequence[Option], by: str) -> str | None:
    """The option within noise of the best that is cheapest to train (``by="train"``: its
    seconds, then params) or to run (params, then seconds)."""

    def key(o: Option) -> tuple:
        secs = math.inf if o.seconds is None else o.seconds
        params = math.inf if o.params is None else o.params
        return (secs, params, -o.mean) if by == "train" else (params, secs, -o.mean)

    near = [o for o in options if o.within_noise]
    near = [o for o in near if (o.seconds if by == "train" else o.params) is not None]
    return min(near, key=key).column if near else None


def _measured_gain(options: Sequence[Option], top: int) -> Estimate | None:
    """catN − single as measured, with the options' normal interval of a difference."""
    hi = next((o for o in options if o.kind in SEED_KINDS and o.k == top), None)
    lo = next((o for o in options if o.kind == "single"), None)
    if hi is None or lo is None or hi is lo:
        return None
    diff = hi.mean - lo.mean
    if hi.se is None or lo.se is None:
        return Estimate(diff)
    half = Z95 * math.hypot(hi.se, lo.se)
    return Estimate(diff, diff - half, diff + half)


def _change(adv: Advice, fits: Fits, k1: int, k0: int | None = None) -> Estimate:
    """``f(k1)`` (or ``f(k1) − f(k0)``): the fitted value with its resampled interval."""
    cv = adv.curve
    assert cv is not None
    pt = lambda kk: float(curve(cv.a.value, cv.b.value, cv.c.value, kk))  # noqa: E731
    if k0 is None:
        return interval(curve(*fits, k1), pt(k1))
    return interval(curve(*fits, k1) - curve(*fits, k0), pt(k1) - pt(k0))


def _curve_part(adv: Advice, k: np.ndarray, y: np.ndarray, resamples: int) -> Fits | None:
    """Fit the curve into ``adv`` (its parameters, the gains ahead, where seeds stop paying);
    the resampled parameters, or None when the points cannot support a curve."""
    if len(adv.ks) < 3 or len(k) < 4:
        adv.no_curve = (
            f"only K = {', '.join(map(str, adv.ks))} measured: a curve needs at least 3 "
            "distinct K (and 4 seed subsets), so only measured gains are given"
            if adv.ks
            else "no single or catK result for this target"
        )
        return None
    a, b, c = fit_curve(k, y)
    fits = resample_fits(k, y, resamples)
    resid = y - curve(a, b, c, k)
    sd = float(np.sqrt((resid**2).sum() / max(len(y) - 3, 1)))
    adv.curve = Curve(
        *(interval(s, p) for s, p in zip(fits, (a, b, c), strict=True)), sd, len(fits[0])
    )
    top = adv.top_k
    adv.fitted = _change(adv, fits, top, 1)
    adv.next_seed = _change(adv, fits, top + 1, top)
    for kk in sorted({top + 1, *AHEAD}):
        if kk > top:
            adv.ahead[kk] = _change(adv, fits, kk)
            adv.ahead_gain[kk] = _change(adv, fits, kk, top)
    _, B, C = (x[:, None] for x in fits)
    grid = np.arange(1, STOP_SEARCH + 1, dtype=float)[None, :]
    low = np.percentile(B * (grid**-C - (grid + 1) ** -C), 2.5, axis=0)
    below = np.flatnonzero(low < adv.min_gain)
    adv.stops_at = int(below[0]) + 1 if len(below) else None
    return fits


def _budget_answer(adv: Advice, budget: Budget, fits: Fits | None) -> BudgetAnswer:
    """What the budget buys: seeds, catK at that K (measured or predicted), the next seed's
    gain per unit of the budget, and the best measured option it pays for."""
    seed_cost = 1.0 if budget.unit == "members" else (adv.seed_seconds or 0.0) / budget.per_unit
    bought = int(budget.amount / seed_cost + 1e-9) if seed_cost > 0 else 0
    value, predicted, marginal, per_unit = None, False, None, None
    o = next((o for o in adv.options if o.kind in SEED_KINDS and o.k == bought), None)
    if o is not None:
        half = None if o.se is None else Z95 * o.se
        value = Estimate(o.mean) if half is None else Estimate(o.mean, o.mean - half, o.mean + half)
    elif fits is not None and bought >= 1:
        value, predicted = _change(adv, fits, bought), True
    if fits is not None and bought >= 1:
        marginal = _change(adv, fits, bought + 1, bought)
        per_unit = marginal.scaled(1.0 / seed_cost)
    if adv.seed_seconds:
        limit = budget.amount * (adv.seed_seconds if budget.unit == "members" else budget.per_unit)
        afford = [o for o in adv.options if o.seconds is not None and o.seconds <= limit * 1.000001]
    else:
        afford = [o for o in adv.options if o.floor or (o.kind in SEED_KINDS and o.k <= bought)]
    best = max(afford, key=lambda o: o.mean).column if afford else None
    return BudgetAnswer(budget, bought, value, predicted, marginal, per_unit, best)


def advise_target(
    key: tuple,
    rows: Sequence[Row],
    members: Sequence[MemberCost] = (),
    *,
    budget: Budget | None = None,
    min_gain: float = MIN_GAIN,
    resamples: int = RESAMPLES,
) -> Advice:
    """The advice for one target from its rows (one metric)."""
    values = _subset_values(rows)
    info = {r.column: r for r in reversed(rows)}
    seeded = [
        (info[c].k, s, float(np.mean(v)))
        for c in values
        if info[c].representation in SEED_KINDS
        for s, v in values[c].items()
    ]
    k = np.array([p[0] for p in seeded], dtype=float)
    y = np.array([p[2] for p in seeded])
    draws = {(r.column, tuple(r.seeds)): set() for r in rows}
    for r in rows:
        draws[(r.column, tuple(r.seeds))].add((r.draw, r.episode))
    finite = [r.value for r in rows if math.isfinite(r.value)]
    adv = Advice(
        target=target_label(key),
        entry=key[0],
        metric=rows[0].metric if rows else "",
        scale=100.0 if finite and all(0.0 <= v <= 1.0 for v in finite) else 1.0,
        subsets=len(seeded),
        seeds=len({s for p in seeded for s in p[1]}),
        ks=tuple(sorted({int(x) for x in k})),
        draws=max((len(d) for d in draws.values()), default=0),
        curve=None,
        no_curve="",
        measured=None,
        fitted=None,
        no_gain=False,
        next_seed=None,
        seed_seconds=seed_seconds(members),
        device=next((m.device for m in members if m.kind == "single"), "cpu"),
        min_gain=min_gain,
    )
    fits = _curve_part(adv, k, y, resamples)
    sd = {} if fits is None else {kk: float(np.std(curve(*fits, kk))) for kk in adv.ks}
    adv.options = _options(values, info, members, sd)
    adv.measured = _measured_gain(adv.options, adv.top_k)
    gain = adv.measured
    adv.no_gain = gain is not None and not (gain.excludes_zero and gain.value > 0)
    adv.best = adv.options[0].column if adv.options else None
    adv.cheapest = _cheapest(adv.options, "train")
    adv.cheapest_run = _cheapest(adv.options, "run")
    if budget is not None:
        adv.budget = _budget_answer(adv, budget, fits)
    return adv


def advise(
    rows: Sequence[Row],
    members: Sequence[MemberCost] = (),
    *,
    target: str | None = None,
    budget: str | Budget | None = None,
    max_k: int | None = None,
    metric: str = "accuracy",
    order: Sequence[str] = (),
    min_gain: float = MIN_GAIN,
    resamples: int = RESAMPLES,
) -> list[Advice]:
    """Per target (the headline target of each entry, or ``target``: an entry or a target's
    label), what more seeds would buy and the cheapest representation within noise of the
    best. ``max_k`` keeps only rows of K ≤ max_k (advise as if the run had stopped there)."""
    if max_k is not None and max_k < 1:
        raise ConfigError(f"--max-k must be at least 1, got {max_k}")
    if not min_gain >= 0:
        raise ConfigError(f"min_gain must be at least 0, got {min_gain}")
    if isinstance(budget, str):
        budget = parse_budget(budget)
    have = list(dict.fromkeys(r.metric for r in rows))
    mine = [r for r in rows if r.metric == metric]
    if not mine:
        raise ConfigError(f"no {metric!r} result rows; the run has {have or 'none'}")
    if max_k is not None:
        mine = [r for r in mine if r.k <= max_k]
    keys = select_targets(mine, target, order)
    if budget is not None:
        device = next((m.device for m in members if m.kind == "single"), "cpu")
        check_budget(budget, device, seed_seconds(members))
    by_key: dict[tuple, list[Row]] = {}
    for r in mine:
        by_key.setdefault(target_key(r), []).append(r)
    return [
        advise_target(k, by_key[k], members, budget=budget, min_gain=min_gain, resamples=resamples)
        for k in keys
    ]
