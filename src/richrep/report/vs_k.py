"""A metric against K: per target, the single/catK line with its 95% interval as a band, the
baselines as markers at the K they match (each kind a step to the right of it, so markers at
one K never overlap), the floors as horizontal lines and chance as a grey line. ``vs_k`` draws
one entry (a colour per protocol and training size), ``lead`` the report's lead figure (one
panel per entry, the row the summary speaks for, in the kinds' own colours).

A metric bounded in [0, 1] (accuracy, top-1, mAP) is drawn in percent, like the report's tables;
intervals are the tables' (95% Student-t, clipped to the bounds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.ticker import MaxNLocator

from richrep.plugins import PROTOCOLS
from richrep.report.plots import mpl_text, plt
from richrep.report.summary import headline_row
from richrep.report.tables import Cell, Comparison, TableRow, bounds, build_comparison, kind_display

FLOOR_STYLES = {"input": "--", "random": ":"}  # other floors: dash-dot
CHANCE = dict(color="0.5", lw=1, linestyle=(0, (1, 3)))
Points = list[tuple[int, Cell]]


def scale_of(metric: str) -> tuple[float, str]:
    """(100, "%") for a metric bounded in [0, 1], else (1, "")."""
    return (100.0, "%") if bounds(metric) else (1.0, "")


def by_kind(row: TableRow, comp: Comparison) -> dict[str, Points]:
    """A row's cells per representation kind as (K, cell), by K."""
    out: dict[str, Points] = {}
    for col, cell in row.cells.items():
        info = comp.column_info[col]
        out.setdefault(info.kind, []).append((info.k, cell))
    return {k: sorted(v, key=lambda kc: kc[0]) for k, v in out.items()}


def marker_kinds(comp: Comparison, rows: Sequence[TableRow]) -> list[str]:
    """The kinds drawn as markers (neither the line nor a floor), in display order."""
    kinds = {comp.column_info[c].kind for r in rows for c in r.cells}
    marks = [k for k in kinds if not kind_display(k).line and not kind_display(k).floor]
    return sorted(marks, key=lambda k: (kind_display(k).order, k))


def offsets(kinds: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """The x offset of each marker kind from its K: one step each, right of the catK point."""
    span = (max(ks) - min(ks)) if ks else 0
    step = max(0.06 * span, 0.12)
    return {k: step * (i + 1) for i, k in enumerate(kinds)}


def k_ticks(ax: Any, ks: Sequence[int]) -> None:
    """Integer ticks on a K axis: each K drawn (a few), else integers only."""
    ks = sorted(set(ks))
    if ks and len(ks) <= 12:
        ax.set_xticks(ks)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _err(cells: Sequence[Cell], scale: float) -> list[list[float]]:
    return [[scale * (c.mean - c.low) for c in cells], [scale * (c.high - c.mean) for c in cells]]


def draw_row(
    ax: Any,
    row: TableRow,
    comp: Comparison,
    offset: Mapping[str, float],
    *,
    color: str | None = None,
    shift: float = 0.0,
    handles: dict[str, Any] | None = None,
) -> list[int]:
    """One target row: the single/catK line and band, the baselines as markers at K plus their
    kind's offset (plus ``shift``), the floors as lines; ``color`` for all of them, else each
    kind's own. Legend handles are added to ``handles``; returns the Ks drawn."""
    scale, _ = scale_of(comp.metric)
    handles = {} if handles is None else handles
    kinds = by_kind(row, comp)
    line = sorted(
        (kc for kind, v in kinds.items() if kind_display(kind).line for kc in v),
        key=lambda kc: kc[0],
    )
    ks = [k for k, _ in line]
    if line:
        c = color or kind_display("cat").color
        xs, cells = ks, [cell for _, cell in line]
        if len(line) > 1:
            ax.fill_between(
                xs, [scale * x.low for x in cells], [scale * x.high for x in cells],
                color=c, alpha=0.18, lw=0,
            )  # fmt: skip
        h = ax.errorbar(
            xs, [scale * x.mean for x in cells], yerr=None if len(line) > 1 else _err(cells, scale),
            color=c, marker="o", ms=4, capsize=3,
        )  # fmt: skip
        if color is None:
            handles.setdefault("single/catK (band: 95% interval)", h)
    for kind, pts in kinds.items():
        d = kind_display(kind)
        c = color or d.color or "0.3"
        label = mpl_text(d.label.replace("{k}", "K"))
        if d.line:
            continue
        if d.floor:
            style = FLOOR_STYLES.get(kind, "-.")
            c = color or "0.35"
            if len(pts) == 1:
                ax.axhline(scale * pts[0][1].mean, color=c, lw=1.1, linestyle=style)
            else:
                xs = [k for k, _ in pts]
                ax.plot(xs, [scale * x.mean for _, x in pts], style, color=c, lw=1.1)
            handles.setdefault(f"{label} (floor)", _proxy(style=style, color=color and "0.3"))
            continue
        ks += [k for k, _ in pts]
        ax.errorbar(
            [k + offset.get(kind, 0.0) + shift for k, _ in pts],
            [scale * x.mean for _, x in pts], yerr=_err([x for _, x in pts], scale),
            marker=d.marker, color=c, ms=7, mfc="white", capsize=2, linestyle="none",
        )  # fmt: skip
        handles.setdefault(label, _proxy(marker=d.marker, color="0.3" if color else c))
    return ks


def _proxy(*, marker: str | None = None, style: str = "none", color: str | None) -> Any:
    """A legend entry with no data."""
    if marker is not None:
        return plt.Line2D([], [], marker=marker, mfc="white", color=color or "0.3", ls="none")
    return plt.Line2D([], [], color=color or "0.35", linestyle=style, lw=1.1)


def _finish(ax: Any, metric: str, ks: Sequence[int], chance: float | None, handles: dict) -> None:
    scale, _ = scale_of(metric)
    if chance is not None and math.isfinite(chance) and "accuracy" in metric:
        ax.axhline(scale * chance, **CHANCE)
        handles.setdefault("chance", plt.Line2D([], [], **CHANCE))
    k_ticks(ax, ks)
    ax.grid(alpha=0.3)
    if scale != 1.0:  # an interval of a few draws can reach past the bounds: keep the axis there
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 100.0))


def vs_k(
    rows: Sequence[Any],
    entry: str,
    *,
    metric: str = "accuracy",
    protocol: str | None = None,
    chance: float | None = None,
    ax: Any = None,
) -> Any:
    """``metric`` of ``entry`` against K, a colour per (protocol, training size) row of its
    table; returns the axes (a new figure's without ``ax``)."""
    comp = build_comparison([r for r in rows if r.get("entry") == entry], [entry], metric)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    protos = list(dict.fromkeys(r.target.protocol for r in comp.rows))
    ks_all = [comp.column_info[c].k for r in comp.rows for c in r.cells]
    offset = offsets(marker_kinds(comp, comp.rows), ks_all)
    step = min(offset.values(), default=0.12)
    groups: dict[str, Any] = {}
    others: dict[str, Any] = {}  # kinds' markers and floors, in grey
    ks: list[int] = []
    n = len(comp.rows)
    for i, row in enumerate(comp.rows):
        color = colors[i % len(colors)]
        parts = row.target.parts[1:] if len(protos) > 1 else row.target.parts[2:]
        shift = step * 0.3 * (i - (n - 1) / 2) / max(n - 1, 1)
        ks += draw_row(ax, row, comp, offset, color=color, shift=shift, handles=others)
        groups[mpl_text(" · ".join(parts))] = plt.Line2D([], [], color=color, marker="o", ms=4)
    _finish(ax, metric, ks, chance, others)
    floors = {k: v for k, v in others.items() if k.endswith("(floor)") or k == "chance"}
    handles = {**groups, **{k: v for k, v in others.items() if k not in floors}, **floors}
    scale, unit = scale_of(metric)
    ax.set_xlabel("K (seeds concatenated; each baseline just right of its K)")
    ax.set_ylabel(mpl_text(f"test {metric}" + (f" ({unit})" if unit else "")))
    ax.set_title(mpl_text(f"{entry} — {protocol or ', '.join(protos)}"), fontsize=10)
    if handles:
        ax.legend(
            list(handles.values()), list(handles), fontsize=7, ncol=3, loc="upper center",
            bbox_to_anchor=(0.5, -0.16), frameon=False,
        )  # fmt: skip
    return ax


def lead_rows(
    comp: Comparison,
    entries: Sequence[str] | None = None,
    protocols: Mapping[str, str] | None = None,
) -> list[TableRow]:
    """Per entry drawn against K (its protocol's ``vs_k``), in order, the row the summary
    speaks for (the largest training size), when it has a single/catK line."""
    order = list(entries or []) + [
        e for e in dict.fromkeys(r.target.entry for r in comp.rows) if e not in (entries or [])
    ]
    out = []
    for e in order:
        proto = (protocols or {}).get(e) or next(
            (r.target.protocol for r in comp.rows if r.target.entry == e), ""
        )
        if not PROTOCOLS.meta(proto, "vs_k", True):
            continue
        row = headline_row(comp, e, proto)
        if row is not None and any(kind_display(k).line for k in by_kind(row, comp)):
            out.append(row)
    return out


def lead(
    rows: Sequence[Any],
    entries: Sequence[str] | None = None,
    *,
    metric: str = "accuracy",
    chance: Mapping[str, float] | None = None,
    protocols: Mapping[str, str] | None = None,
    ncols: int = 5,
) -> Any:
    """The lead figure: one panel per entry (its largest training size) with ``metric`` against
    K, in a grid of ``ncols``, the legend on top; ``chance`` (entry -> 1 / classes) as a grey
    line where given. None when no entry has a catK line."""
    comp = build_comparison(rows, entries, metric)
    picks = lead_rows(comp, entries, protocols)
    if not picks:
        return None
    ncols = max(1, min(ncols, len(picks)))
    nrows = math.ceil(len(picks) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.9 * ncols, 2.2 * nrows + 0.8), dpi=110, squeeze=False,
        layout="constrained",
    )  # fmt: skip
    ks_all = [comp.column_info[c].k for r in picks for c in r.cells]
    offset = offsets(marker_kinds(comp, picks), ks_all)
    handles: dict[str, Any] = {}
    scale, unit = scale_of(metric)
    for i, (ax, row) in enumerate(zip(axes.flat, picks, strict=False)):
        ks = draw_row(ax, row, comp, offset, handles=handles)
        t = row.target
        _finish(ax, metric, ks, (chance or {}).get(t.entry), handles)
        sub = " · ".join(p for p in (t.protocol, t.size_text, t.variant) if p)
        ax.set_title(mpl_text(t.entry) + "\n" + mpl_text(sub), fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        if i % ncols == 0:
            ax.set_ylabel(mpl_text(f"test {metric}" + (f" ({unit})" if unit else "")), fontsize=8)
    for ax in axes.flat[len(picks) :]:
        ax.set_visible(False)
    fig.supxlabel("K (seeds concatenated; each baseline just right of its K)", fontsize=9)
    fig.legend(
        list(handles.values()), list(handles), loc="outside upper center",
        ncol=min(len(handles), 8), fontsize=8, frameon=False,
    )  # fmt: skip
    return fig
