"""Plots: a metric against K per target entry (catK line, baselines as markers, floors as lines
in their group's colour, chance), and training curves per member. PNGs written atomically.

Error bars are the tables' intervals (95% Student-t, clipped to [0, 1] for accuracy-like
metrics); a point without an interval (one value, or equal values) has no bar."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from richrep.report.tables import (  # noqa: E402
    Cell,
    Comparison,
    TableRow,
    bounds,
    build_comparison,
    cell_text,
    kind_display,
)
from richrep.results.stats import summarize  # noqa: E402

FLOOR_STYLES = {"input": "--", "random": ":"}  # other floors: dash-dot


def mpl_text(s: Any) -> str:
    """Untrusted text made literal for matplotlib (no mathtext, no control characters)."""
    return cell_text(s).replace("\\", "\\\\").replace("$", r"\$")


def _plot_group(
    ax: Any,
    comp: Comparison,
    row: TableRow,
    color: str,
    group: str,
    kinds_seen: dict[str, Any],
    ks: set[int],
) -> None:
    """One (protocol, size) group of :func:`metric_vs_k` in ``color``: its single/catK line
    with error bars, its baselines as markers, its floors as lines; the kinds drawn go into
    ``kinds_seen`` (for the legend), the K values into ``ks``."""
    by_kind: dict[str, list[tuple[int, Any]]] = {}
    for col, cell in row.cells.items():
        info = comp.column_info[col]
        by_kind.setdefault(info.kind, []).append((info.k, cell))
    line = sorted(
        (kc for kind, v in by_kind.items() if kind_display(kind).line for kc in v),
        key=lambda kc: kc[0],
    )
    if line:
        ks.update(k for k, _ in line)
        ax.errorbar(
            [k for k, _ in line],
            [c.mean for _, c in line],
            yerr=_err([c for _, c in line]),
            marker="o",
            color=color,
            capsize=3,
            label=mpl_text(f"single/catK · {group}"),
        )
    for kind, v in by_kind.items():
        d = kind_display(kind)
        if d.line:
            continue
        v.sort(key=lambda kc: kc[0])
        if d.floor:
            style = FLOOR_STYLES.get(kind, "-.")
            kinds_seen[kind] = ("floor", style)
            if len(v) == 1:
                ax.axhline(v[0][1].mean, color=color, lw=1.1, linestyle=style)
            else:
                ax.plot([k for k, _ in v], [c.mean for _, c in v], style, color=color, lw=1.1)
            continue
        kinds_seen[kind] = ("marker", d.marker)
        ks.update(k for k, _ in v)
        ax.errorbar(
            [k for k, _ in v],
            [c.mean for _, c in v],
            yerr=_err([c for _, c in v]),
            marker=d.marker,
            color=color,
            ms=8,
            mfc="white",
            capsize=2,
            linestyle="none",
        )


def metric_vs_k(
    rows: Sequence[Any],
    entry: str,
    path: Path,
    *,
    metric: str = "accuracy",
    protocol: str | None = None,
    chance: float | None = None,
) -> Path:
    """One panel per entry: per (protocol, size) group a colour; its single/catK line over K with
    95% intervals as error bars, the baselines as markers at their K (marker from the kind's
    display), its floors as horizontal lines of the same colour; chance as a grey line."""
    mine = [r for r in rows if r.get("entry") == entry]
    comp = build_comparison(mine, [entry], metric)
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    kinds_seen: dict[str, Any] = {}
    ks: set[int] = set()
    protos = list(dict.fromkeys(r.target.protocol for r in comp.rows))
    for i, row in enumerate(comp.rows):
        color = colors[i % len(colors)]
        t = row.target
        group = " · ".join(t.parts[1:] if len(protos) > 1 else t.parts[2:])
        _plot_group(ax, comp, row, color, group, kinds_seen, ks)
    for kind, (how, style) in kinds_seen.items():
        label = mpl_text(kind_display(kind).label.replace("{k}", "K"))
        if how == "marker":
            ax.plot([], [], marker=style, mfc="white", color="0.3", ls="none", label=label)
        else:
            ax.plot([], [], style, color="0.3", label=f"{label} (floor)")
    if chance is not None and math.isfinite(chance) and "accuracy" in metric:
        ax.axhline(chance, color="0.5", lw=1, linestyle=(0, (1, 3)))
        ax.plot([], [], color="0.5", lw=1, linestyle=(0, (1, 3)), label=f"chance ({chance:.3g})")
    ax.set_xlabel("K (seeds concatenated; baselines at the K they match)")
    units = dict.fromkeys(c.unit for r in comp.rows for c in r.cells.values())
    over = " / ".join("episodes" if u == "episodes" else "seeds × draws" for u in units)
    ax.set_ylabel(mpl_text(f"test {metric} (mean, bars: 95% CI over {over or 'values'})"))
    ax.set_title(mpl_text(f"{entry} — {protocol or ', '.join(protos)}"), fontsize=10)
    ax.grid(alpha=0.3)
    if ks:
        ax.set_xticks(sorted(ks))
    if (
        metric == "accuracy"
    ):  # an interval of a few draws can reach past [0, 1]: keep the axis there
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 1.0))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    save(fig, path)
    return path


accuracy_vs_k = metric_vs_k


def _err(cells: Sequence[Cell]) -> list[list[float]]:
    """Error bars (below, above) of cells: their clipped 95% interval, 0 without one."""
    return [[c.mean - c.low for c in cells], [c.high - c.mean for c in cells]]


CURVES = (("loss", "training loss"), ("train_acc", "training accuracy"))


def training_curves(members: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Loss and training accuracy per epoch, one line per member (and any ``val_*`` metric of the
    history); None when no member has a history."""
    withh = [m for m in members if isinstance(m.get("history"), list) and m["history"]]
    if not withh:
        return None
    keys = [k for k, _ in CURVES]
    for m in withh:
        for h in m["history"]:
            if isinstance(h, Mapping):
                keys += [k for k in h if str(k).startswith("val_") and k not in keys]
    keys = [k for k in keys if any(_num(h, k) is not None for m in withh for h in m["history"])]
    if not keys:
        return None
    titles = dict(CURVES)
    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.2 * len(keys) + 1.8, 3.6), dpi=100, squeeze=False
    )
    cmap = plt.get_cmap("tab10" if len(withh) <= 10 else "tab20")
    for j, m in enumerate(withh):
        hist = [h for h in m["history"] if isinstance(h, Mapping)]
        for ax, key in zip(axes[0], keys, strict=True):
            pts = [(_num(h, "epoch"), _num(h, key)) for h in hist]
            pts = [(e if e is not None else i + 1, v) for i, (e, v) in enumerate(pts)]
            pts = [(e, v) for e, v in pts if v is not None]
            if pts:
                ax.plot(
                    [e for e, _ in pts],
                    [v for _, v in pts],
                    marker="." if len(pts) < 30 else None,
                    color=cmap(j % cmap.N),
                    label=mpl_text(m.get("name", f"member {j}")),
                )
    for ax, key in zip(axes[0], keys, strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(mpl_text(titles.get(key, key)), fontsize=10)
        ax.grid(alpha=0.3)
        if key == "loss" and _positive(withh, key):
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle("training curves (one line per member)", fontsize=10)
    save(fig, path)
    return path


def _num(h: Mapping[str, Any], key: str) -> float | None:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _positive(members: Sequence[Mapping[str, Any]], key: str) -> bool:
    vals = [_num(h, key) for m in members for h in m["history"] if isinstance(h, Mapping)]
    vals = [v for v in vals if v is not None]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 20


def png_bytes(fig: Any) -> bytes:
    """A figure as PNG bytes (legends outside the axes kept in the frame); the figure is closed."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def save(fig: Any, path: Path) -> bytes:
    """Write a figure as PNG atomically, close it, and return the bytes written."""
    from richrep.store import write_atomic

    data = png_bytes(fig)
    write_atomic(Path(path), data)
    return data


def lines_by_column(
    rows: Sequence[Any],
    entry: str,
    path: Path,
    *,
    x_of: Any,
    xlabel: str,
    ylabel: str,
    title: str,
    metric: str = "accuracy",
    log2: bool = False,
    log10: bool = False,
) -> Path | None:
    """One line per table column: the mean of ``metric`` against ``x_of(row)`` (a number), with
    the 95% interval of its values (seeds or seed subsets × draws, clipped to [0, 1] for a rate)
    as bars and n in the legend, for the rows of ``entry``; a protocol's own report figure
    (continual, truncation, retrieval)."""
    mine = [r for r in rows if r.get("entry") == entry and r.get("metric") == metric]
    if not mine:
        return None
    by: dict[str, dict[float, list[float]]] = {}
    for r in mine:
        x = float(x_of(r))
        by.setdefault(str(r.get("column")), {}).setdefault(x, []).append(r.get("value"))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for col, pts in by.items():
        xs = sorted(pts)
        cells = []
        for x in xs:
            s = summarize(pts[x])
            ci = s["ci95"] if math.isfinite(s["ci95"]) else None
            cells.append(Cell(s["mean"], s["std"], s["n"], ci, bounds=bounds(metric)))
        ns = sorted({c.n for c in cells})
        n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
        ax.errorbar(
            xs,
            [c.mean for c in cells],
            yerr=_err(cells),
            marker="o",
            capsize=3,
            label=mpl_text(f"{col} ({n})"),
        )
    if log2 or log10:
        ax.set_xscale("log", base=2 if log2 else 10)
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_ylabel(mpl_text(ylabel))
    note = "(mean; bars: 95% interval, none from equal values)"
    ax.set_title(mpl_text(f"{entry}: {title}") + "\n" + note, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)
    return path
