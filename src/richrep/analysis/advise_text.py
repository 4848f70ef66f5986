"""The advice in words (``richrep advise``, the verdicts under ``richrep results`` and the
report's "What to use" box): every number with its interval, n and what varied. Plain text,
so ``richrep advise`` loads neither the report nor its plotting."""

from __future__ import annotations

from richrep.analysis.advise import Advice, Option
from richrep.analysis.saturation import C_RANGE, Estimate
from richrep.results.rows import count


def _gain(e: Estimate | None, scale: float) -> str:
    """``+2.5 points [+1.1, +3.9]`` (metrics in [0, 1]) or ``+0.025 [+0.011, +0.039]``."""
    if e is None:
        return "–"
    unit, digits = (" points", 1) if scale == 100 else ("", 3)

    def fmt(v: float) -> str:
        v = round(v * scale, digits)
        return f"{v + 0.0:+.{digits}f}"  # no "-0.0"

    text = fmt(e.value) + unit
    if e.has_interval:
        text += f" [{fmt(e.low)}, {fmt(e.high)}]"  # type: ignore[arg-type]
    return text


def _level(e: Estimate | float | None) -> str:
    if e is None:
        return "–"
    if isinstance(e, int | float):
        return f"{e:.3f}"
    text = f"{e.value:.3f}"
    return text + (f" [{e.low:.3f}, {e.high:.3f}]" if e.has_interval else "")


def _secs(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s:.1f} s"


def _floor_words(o: Option) -> str:
    if o.kind == "random":
        return f"{o.k} untrained network{'s' if o.k != 1 else ''}"
    return "the raw input" if o.kind == "input" else o.column


def floor_note(a: Advice) -> str:
    """What the floors say: "5 untrained networks do as well" when one is within noise of the
    best, else their levels."""
    floors = [o for o in a.options if o.floor]
    best = a.option(a.best)
    near = [o for o in floors if o.within_noise]
    if near and best is not None and not best.floor:
        o = near[0]
        return (
            f"{_floor_words(o)} do as well: {o.column} {o.mean:.3f} vs {best.column} "
            f"{best.mean:.3f} (within noise)"
        )
    if near:
        return f"{_floor_words(near[0])} do best: {near[0].column} {near[0].mean:.3f}"
    return ("floors " + ", ".join(f"{o.column} {o.mean:.3f}" for o in floors)) if floors else ""


def _seeds_phrase(a: Advice) -> str:
    top = a.top_k
    if a.measured is None:
        return f"only K = {', '.join(map(str, a.ks))} measured" if a.ks else "no seeds measured"
    if a.no_gain:
        return f"no gain from more seeds (cat{top} − single {_gain(a.measured, a.scale)})"
    if a.next_seed is None:
        only = a.no_curve.split(":")[0]
        return f"cat{top} − single {_gain(a.measured, a.scale)}; {only}: no extrapolation"
    stop = (
        f"stops paying at K = {a.stops_at}"
        if a.stops_at is not None
        else f"still paying at K = {50}"
    )
    return f"next seed {_gain(a.next_seed, a.scale)}, {stop}"


def verdict(a: Advice) -> str:
    """One line: the highest mean ("best" when no other option is within noise of it), the
    cheapest within noise of it, what one more seed buys, and the floors."""
    best = a.option(a.best)
    if best is None:
        return f"{a.target}: no result rows"
    clear = not any(o.within_noise for o in a.options if o is not best)
    parts = [f"{'best' if clear else 'highest'} {best.column} {best.mean:.3f}"]
    cheap = a.option(a.cheapest)
    if cheap is not None and cheap is not best:
        parts.append(f"cheapest within noise {cheap.column} ({_secs(cheap.seconds)} training)")
    parts.append(_seeds_phrase(a))
    note = floor_note(a)
    if note:
        parts.append(note)
    return f"{a.target}: " + "; ".join(parts)


def _measured_line(a: Advice) -> str:
    if not a.ks:
        return "measured: no single or catK value for this target"
    run = len(a.ks) > 2 and a.ks == tuple(range(a.ks[0], a.ks[-1] + 1))
    ks = f"K = {a.ks[0]}–{a.ks[-1]}" if run else f"K = {', '.join(map(str, a.ks))}"
    what = "draw" if a.draws <= 1 else "draws or episodes"
    line = (
        f"measured: {a.subsets} seed subset{'s' * (a.subsets != 1)} of {a.seeds} "
        f"seed{'s' * (a.seeds != 1)}, {ks} "
        f"({a.draws} {what} of the probe's training examples each)"
    )
    if a.measured is not None:
        line += f"; cat{a.top_k} − single {_gain(a.measured, a.scale)} (95%)"
    return line


def _curve_lines(a: Advice) -> list[str]:
    if a.curve is None:
        return [f"curve: none: {a.no_curve}"]
    c, top = a.curve, a.top_k
    out = [
        f"curve: f(K) = a − b·K^(−c), a = {_level(c.a)}, b = {_level(c.b)}, "
        f"c = {_level(c.c)}; "
        f"{c.resamples} resamples of the seed subsets; one subset scatters "
        f"{_gain(Estimate(c.sd), a.scale).lstrip('+')} around it",
        f"fitted cat{top} − single {_gain(a.fitted, a.scale)}; next seed (K = {top + 1}) "
        f"{_gain(a.next_seed, a.scale)}",
    ]
    for k, v in a.ahead.items():
        if k != top + 1 or k in (10, 20):
            out.append(
                f"K = {k}: {_level(v)} ({_gain(a.ahead_gain[k], a.scale)} over the curve at "
                f"K = {top}), extrapolated from K ≤ {top}"
            )
    if c.c.value <= C_RANGE[0] * 1.001:
        out.append(
            f"c sits at its bound {C_RANGE[0]}: the curve is nearly logarithmic over the "
            "measured K and its ceiling a is not pinned down"
        )
    if a.stops_at is None:
        out.append("one more seed still pays at K = 50 (the furthest looked at)")
    else:
        where = "within the measured K" if a.stops_at <= top else "extrapolated"
        out.append(
            f"one more seed stops paying at K = {a.stops_at} ({where}): from there the 95% "
            f"interval of its gain reaches below {_gain(Estimate(a.min_gain), a.scale).lstrip('+')}"
        )
    return out


def _cost_lines(a: Advice) -> list[str]:
    single = next((o for o in a.options if o.kind == "single"), None)
    dev = "GPU" if a.device.startswith("cuda") else a.device.upper()
    if a.seed_seconds is None:
        out = ["cost: the run records no training time for its seeds"]
    else:
        out = [
            f"cost: a seed trains in {_secs(a.seed_seconds)} on {a.device}"
            + (f" ({count(single.params)} params, {single.dim} dims)" if single else "")
        ]
        if a.next_seed is not None:
            per_hour = a.next_seed.scaled(3600.0 / a.seed_seconds)
            out.append(
                f"the next seed: {_gain(a.next_seed, a.scale)} for {_secs(a.seed_seconds)} of "
                f"training, {_gain(per_hour, a.scale)} per {dev}-hour"
            )
    b = a.budget
    if b is not None:
        unit = {"members": "member", "s": "second", "h": "hour"}[b.budget.unit]
        value = (
            "–"
            if b.value is None
            else _level(b.value) + (" (extrapolated)" if b.predicted else " (measured)")
        )
        out.append(
            f"budget {b.budget.text}: {b.seeds} seeds, cat{b.seeds} {value}; the next seed then "
            f"{_gain(b.marginal, a.scale)}, {_gain(b.per_unit, a.scale)} per {unit}; best measured "
            f"option it pays for: {b.best_affordable or 'none'}"
        )
    return out


def option_rows(a: Advice) -> list[list[str]]:
    """The options as cells (see ``OPTION_HEAD`` and ``OPTION_LEGEND``)."""
    rows = []
    for o in a.options:
        half = "" if o.se is None else f" ± {1.96 * o.se:.3f}"
        vs = "best" if o.column == a.best else _gain(o.vs_best, a.scale).replace(" points", "")
        note = ("≈" if o.within_noise and o.column != a.best else "") + (
            "*" if o.borrowed and o.se is not None else ""
        )
        rows.append(
            [
                o.column,
                f"{o.mean:.3f}{half}",
                str(o.subsets),
                vs,
                _secs(o.seconds),
                count(o.params),
                str(o.dim),
                note,
            ]
        )
    return rows


OPTION_HEAD = ["option", "mean ± 95%", "n", "vs best [95%]", "training", "params", "dim", ""]
OPTION_LEGEND = (
    "n: seed subsets; vs best in points for a metric in [0, 1]; training: every network it "
    "needs (a student's teachers too); params: run per example; ≈ within noise of the best; "
    "* measured once: its noise is the curve's spread at its K (catK) or the single seeds' "
    "spread"
)


def advice_lines(a: Advice) -> list[str]:
    """The whole answer for one target, as lines (the options table aside)."""
    answer = [verdict(a)]
    best, run = a.option(a.best), a.option(a.cheapest_run)
    if best is not None and run is not None and run is not best:
        answer.append(
            f"cheapest to run within noise: {run.column} ({count(run.params)} params per "
            f"example vs {count(best.params)})"
        )
    return [*answer, _measured_line(a), *_curve_lines(a), *_cost_lines(a)]
