"""What a compact view of the comparison shows: which columns (the headline set, or the ones
asked for by name with did-you-mean), each target's short label and each cell's short text
(a rate in percent, ``75.6±1.2``; gains in points, ``+2.3±0.8``)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from richrep.errors import ConfigError
from richrep.report.cells import Cell, Gain, bounds
from richrep.report.tables import Comparison, TableRow, table_text

KEYWORDS = ("all", "default")  # every column and gain; the headline set


def column_key(name: str) -> str:
    """A column or gain name as typed: spaces dropped, ``-`` read as ``−``, any case."""
    return table_text(name).replace(" ", "").replace("-", "−").lower()


def available(comp: Comparison) -> list[str]:
    """Every column, then every gain column, in table order."""
    return [*comp.columns, *(g.name for g in comp.gain_columns)]


def headline(comp: Comparison, floors: bool = True) -> list[str]:
    """The headline set: the representations of the headline K (single, catK, its baselines),
    then the floors (unless ``floors`` is False), then catK's gains; every column when there
    is no catK."""
    if comp.k is None:
        return available(comp)
    info = comp.column_info
    reps = [c for c in comp.columns if not info[c].display.floor]
    main = [c for c in reps if info[c].kind == "single" or info[c].k == comp.k]
    low = [c for c in comp.columns if info[c].display.floor] if floors else []
    return [*main, *low, *(g.name for g in comp.headline_gains)]


def everything(comp: Comparison) -> list[str]:
    """Every column and gain in the order of the headline set (representations, floors,
    gains)."""
    info = comp.column_info
    reps = [c for c in comp.columns if not info[c].display.floor]
    floors = [c for c in comp.columns if info[c].display.floor]
    return [*reps, *floors, *(g.name for g in comp.gain_columns)]


def resolve_columns(comps: Sequence[Comparison], names: Sequence[str]) -> list[str]:
    """The names asked for (comma-separated items allowed), as the tables spell them, in the
    order given; ``all`` and ``default`` stand for sets. Raises ConfigError naming an unknown
    name, the nearest one and every column the tables have."""
    have: dict[str, str] = {}
    for comp in comps:
        for name in available(comp):
            have.setdefault(column_key(name), name)
    out: list[str] = []
    items = [x.strip() for n in names for x in str(n).split(",") if x.strip()]
    if not items:
        raise ConfigError("--columns: give at least one column name (or all, default)")
    for item in items:
        if column_key(item) in KEYWORDS:
            out.append(column_key(item))
            continue
        if column_key(item) not in have:
            near = _near(item, have)
            hint = f" (did you mean {near!r}?)" if near else ""
            listing = ", ".join(have.values())
            raise ConfigError(
                f"--columns: no column {table_text(item)!r}{hint}; the tables have: {listing} "
                "(a gain may be typed without spaces, e.g. cat5-single; or all, default)"
            )
        out.append(have[column_key(item)])
    return list(dict.fromkeys(out))


def _near(item: str, have: dict[str, str]) -> str:
    """The name nearest to ``item`` among ``have`` (by typed form), or ""."""
    close = difflib.get_close_matches(column_key(item), list(have), n=1, cutoff=0.6)
    return have[close[0]] if close else ""


def chosen(comp: Comparison, names: Sequence[str] | None) -> list[str]:
    """The columns of ``comp`` to show: ``names`` (resolved) with the keywords expanded and
    names this table lacks left out; the headline set when ``names`` is None."""
    if names is None:
        return headline(comp)
    have = set(available(comp))
    out: list[str] = []
    for n in names:
        out += headline(comp) if n == "default" else everything(comp) if n == "all" else [n]
    return [n for n in dict.fromkeys(out) if n in have]


def scale(comp: Comparison) -> float:
    """100 for a rate (shown in percent and gains in points), else 1."""
    return 100.0 if bounds(comp.metric) else 1.0


def decimals(comp: Comparison, digits: int = 3) -> int:
    """Decimals of a compact cell: ``digits`` for a plain metric, two fewer in percent."""
    return max(digits - 2, 0) if scale(comp) == 100.0 else digits


def cell_text(cell: Cell | None, s: float, d: int) -> str:
    """``75.6±1.2``; ``70.2[17,100]`` when a bound clips the interval (bounds rounded);
    ``75.6`` without an interval."""
    if cell is None:
        return ""
    mean = f"{s * cell.mean:.{d}f}"
    if cell.ci95 is None:
        return mean
    if cell.clipped:
        return f"{mean}[{s * cell.low:.{max(d - 1, 0)}f},{s * cell.high:.{max(d - 1, 0)}f}]"
    return f"{mean}±{s * cell.ci95:.{d}f}"


def gain_text(g: Gain | None, s: float, d: int) -> str:
    """``+2.3±0.8``; ``+2.3`` without an interval."""
    if g is None:
        return ""
    pm = "" if g.ci95 is None else f"±{s * g.ci95:.{d}f}"
    return f"{s * g.diff:+.{d}f}{pm}"


def labels(comp: Comparison) -> dict[int, str]:
    """Each row's short label (by position): entry, then protocol only when the entry has
    several, size only when it has several, then variant, group and environment."""
    protos: dict[str, set[str]] = {}
    sizes: dict[str, set[str]] = {}
    for r in comp.rows:
        protos.setdefault(r.target.entry, set()).add(r.target.protocol)
        sizes.setdefault(r.target.entry, set()).add(str(r.target.size))
    out = {}
    for i, r in enumerate(comp.rows):
        t = r.target
        parts = [t.entry]
        if len(protos[t.entry]) > 1:
            parts.append(t.protocol)
        if len(sizes[t.entry]) > 1:
            parts.append(t.size_text)
        parts += t.parts[3:]
        out[i] = table_text(" · ".join(parts))
    return out


def n_range(comp: Comparison, name: str, rows: Sequence[TableRow] | None = None) -> str:
    """The n of a column (or a gain) over ``rows``: ``5``, or ``5–600`` when it varies."""
    ns = []
    for r in rows if rows is not None else comp.rows:
        x = r.cells.get(name) or r.gains.get(name)
        if x is not None:
            ns.append(x.n)
    if not ns:
        return ""
    lo, hi = min(ns), max(ns)
    return str(lo) if lo == hi else f"{lo}–{hi}"
