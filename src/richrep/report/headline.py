"""The report's cells as text in one unit, and its headline table.

A metric bounded in [0, 1] (accuracy, top-1, mAP) shows in percent and its differences in
percentage points, like the summary, the advice and the out-of-distribution tables; any other
metric in its own units. The headline table has a row per target the summary speaks for (its
largest training size): single, the best catK, the baselines of the gains' K, the floors and
catK's gains, each ± the half-width of its 95% interval."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from richrep.report.cells import UNIT, Cell, Gain, bounds
from richrep.report.summary import headline_row
from richrep.report.tables import Comparison, TableRow, kind_display

EMPTY = {"text": "", "sub": "", "title": "", "cls": ""}


def unit_of(metric: str) -> tuple[float, int, str]:
    """(scale, decimals, unit): (100, 1, "%") for a metric bounded in [0, 1], else (1, 3, "")."""
    return (100.0, 1, "%") if bounds(metric) else (1.0, 3, "")


def cell_view(x: Cell, scale: float, d: int, cls: str = "") -> dict[str, str]:
    """A cell: ``80.1 ± 1.2``, then ``n=15 · [78.9, 81.3]`` (or why there is no interval)
    below it, the std in the title."""
    n = x.n_text()
    ci = x.ci_text()
    if x.ci95 is not None:
        ci = f"95% CI [{scale * x.low:.{d}f}, {scale * x.high:.{d}f}]"
        n += f" · [{scale * x.low:.{d}f}, {scale * x.high:.{d}f}]"
        if x.clipped and x.bounds:
            clip = f"clipped to [{scale * x.bounds[0]:g}, {scale * x.bounds[1]:g}]"
            ci, n = f"{ci}, {clip}", f"{x.n_text()} · {clip}"
    title = (
        f"mean {scale * x.mean:.{d + 1}f}, std {scale * x.std:.{d + 1}f}, "
        f"n={x.n} {UNIT.get(x.unit, x.unit)}; {ci}"
    )
    if cls == "tie":
        title += "; within noise of the highest mean"
    text = f"{scale * x.mean:.{d}f}{x.pm_text(d, scale)}"
    return {"text": text, "sub": n, "title": title, "cls": cls}


def gain_view(g: Gain | None, scale: float, d: int) -> dict[str, str]:
    """A gain: ``+3.2 ± 1.1``, its interval (or "no interval") below, coloured only when it
    excludes 0."""
    if g is None:
        return dict(EMPTY)
    cls = ("pos" if g.diff > 0 else "neg") if g.significant else "ns"
    if g.ci95 is None:
        return {"text": f"{scale * g.diff:+.{d}f}", "sub": "no interval", "cls": cls,
                "title": g.ci_text()}  # fmt: skip
    how = f"paired over {g.n} {g.paired_over}" if g.method == "paired" else "Welch, unpaired"
    lo, hi = scale * g.low, scale * g.high  # type: ignore[operator]
    return {
        "text": f"{scale * g.diff:+.{d}f} ± {scale * g.ci95:.{d}f}",
        "sub": f"[{lo:+.{d}f}, {hi:+.{d}f}]",
        "title": f"95% CI [{lo:+.{d}f}, {hi:+.{d}f}], {how}",
        "cls": cls,
    }


def _best_cat(comp: Comparison, row: TableRow) -> str | None:
    cats = [c for c in row.cells if comp.column_info[c].kind == "cat"]
    return max(cats, key=lambda c: row.cells[c].mean, default=None)


def headline_columns(comp: Comparison, rows: Sequence[TableRow]) -> list[tuple[str, str]]:
    """(heading, what) of the headline table: ``single``, ``best catK`` and the columns of
    the baselines of the gains' K and of the floors that the rows have (``what``: a column)."""
    have = {c for r in rows for c in r.cells}
    out = [(c, c) for c in comp.columns if c in have and comp.column_info[c].kind == "single"]
    if any(comp.column_info[c].kind == "cat" for c in have):
        out.append(("best catK", "best cat"))
    baselines, floors = [], []
    for c in comp.columns:
        info = comp.column_info[c]
        d = kind_display(info.kind)
        if c not in have or d.line or not (comp.k is None or info.k in (0, comp.k)):
            continue
        (floors if d.floor else baselines).append((c, c))
    return out + baselines + floors


def headline_view(
    comp: Comparison,
    entries: Sequence[str],
    protocols: Mapping[str, str],
    skip: Collection[str] = (),
) -> dict[str, Any] | None:
    """The headline table of ``comp`` for the template; None when no entry has a row."""
    scale, d, unit = unit_of(comp.metric)
    order = list(entries) + [
        e for e in dict.fromkeys(r.target.entry for r in comp.rows) if e not in entries
    ]
    rows = [headline_row(comp, e, protocols.get(e)) for e in order if e not in skip]
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    columns = headline_columns(comp, rows)
    body = []
    for r in rows:
        best = comp.best(r)
        cells = []
        for _, what in columns:
            col = _best_cat(comp, r) if what == "best cat" else what
            x = r.cells.get(col) if col else None
            if x is None:
                cells.append(dict(EMPTY))
                continue
            v = cell_view(x, scale, d, "best" if col in best else "")
            v["sub"] = col if what == "best cat" else ""
            cells.append(v)
        cells += [gain_view(r.gains.get(g.name), scale, d) for g in comp.gain_columns]
        t = r.target
        where = " · ".join(p for p in (t.protocol, t.size_text, t.variant) if p)
        body.append({"label": t.entry, "sub": where, "cells": cells})
    return {
        "metric": comp.metric,
        "unit": unit,
        "head": [h for h, _ in columns] + [g.name for g in comp.gain_columns],
        "rows": body,
    }
