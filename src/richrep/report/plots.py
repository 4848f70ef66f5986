"""Figures shared by the report: writing a figure (PNG for the page, SVG and PDF beside it),
training curves per member, and one line per table column against a number (a protocol's own
figure). The against-K figures are :mod:`richrep.report.vs_k`.

Error bars are the tables' intervals (95% Student-t, clipped to [0, 1] for accuracy-like
metrics); a point without an interval (one value, or equal values) has no bar. A metric bounded
in [0, 1] is drawn in percent, like the report's tables."""

from __future__ import annotations

import contextlib
import contextvars
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from richrep.report.tables import Cell, bounds, table_text  # noqa: E402
from richrep.results.stats import summarize  # noqa: E402

FORMATS = ("png", "svg", "pdf")  # every figure: PNG (embedded in the page), SVG and PDF
_METADATA = {"png": None, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
_KEEP: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("keep", default=None)


def mpl_text(s: Any) -> str:
    """Untrusted text made literal for matplotlib (no mathtext, no control characters)."""
    return table_text(s).replace("\\", "\\\\").replace("$", r"\$")


def _err(cells: Sequence[Cell], scale: float = 1.0) -> list[list[float]]:
    """Error bars (below, above) of cells: their clipped 95% interval, 0 without one."""
    return [[scale * (c.mean - c.low) for c in cells], [scale * (c.high - c.mean) for c in cells]]


def percent(metric: str) -> float:
    """100 for a metric bounded in [0, 1] (drawn in percent, like the report's tables), else 1."""
    return 100.0 if bounds(metric) else 1.0


CURVES = (("loss", "training loss"), ("train_acc", "training accuracy"))


def save_training_curves(members: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Write :func:`curves_figure` to ``path`` (and its SVG and PDF); None when no member has a
    history."""
    fig = curves_figure(members)
    if fig is None:
        return None
    save(fig, path)
    return path


def curves_figure(members: Sequence[Mapping[str, Any]]) -> Any:
    """Loss and training accuracy (%) per epoch, one line per member (and any ``val_*`` metric
    of the history); None when no member has a history."""
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
            scale = 100.0 if "acc" in str(key) else 1.0
            pts = [(_num(h, "epoch"), _num(h, key)) for h in hist]
            pts = [(e if e is not None else i + 1, v) for i, (e, v) in enumerate(pts)]
            pts = [(e, scale * v) for e, v in pts if v is not None]
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        pct = " (%)" if "acc" in str(key) else ""
        ax.set_title(mpl_text(titles.get(key, key)) + pct, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "loss" and _positive(withh, key):
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle("training curves (one line per member)", fontsize=10)
    return fig


def _num(h: Mapping[str, Any], key: str) -> float | None:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _positive(members: Sequence[Mapping[str, Any]], key: str) -> bool:
    vals = [_num(h, key) for m in members for h in m["history"] if isinstance(h, Mapping)]
    vals = [v for v in vals if v is not None]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 20


def figure_bytes(fig: Any, fmt: str = "png") -> bytes:
    """A figure in ``fmt`` (png, svg or pdf), legends outside the axes kept in the frame, without
    a date (the same figure gives the same bytes)."""
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "richrep"}):
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata=_METADATA[fmt])
    return buf.getvalue()


def png_bytes(fig: Any) -> bytes:
    """A figure as PNG bytes; the figure is closed."""
    try:
        return figure_bytes(fig)
    finally:
        plt.close(fig)


def save(fig: Any, path: Path) -> bytes:
    """Write a figure as PNG to ``path`` and as SVG and PDF beside it (same name), each
    atomically; close it and return the PNG bytes. Inside :func:`kept`, keep the figure open
    and write nothing."""
    from richrep.store import write_atomic

    keep = _KEEP.get()
    if keep is not None:
        keep.append(fig)
        return b""
    try:
        data = {fmt: figure_bytes(fig, fmt) for fmt in FORMATS}
    finally:
        plt.close(fig)
    path = Path(path)
    write_atomic(path, data["png"])
    for fmt in FORMATS[1:]:
        write_atomic(path.with_suffix(f".{fmt}"), data[fmt])
    return data["png"]


@contextlib.contextmanager
def kept() -> Iterator[list[Any]]:
    """The figures drawn inside, kept open: :func:`save` writes nothing there (so a function
    that draws to a path can hand its figure to :mod:`richrep.report.figures`)."""
    figs: list[Any] = []
    token = _KEEP.set(figs)
    try:
        yield figs
    finally:
        _KEEP.reset(token)


def lines_by_column(
    rows: Sequence[Any],
    entry: str,
    *,
    x_of: Any,
    xlabel: str,
    ylabel: str,
    title: str,
    metric: str = "accuracy",
    log2: bool = False,
    log10: bool = False,
    integer: bool = False,
    ax: Any = None,
) -> Any:
    """One line per table column: the mean of ``metric`` (in percent for a rate) against
    ``x_of(row)`` (a number), with the 95% interval of its values (seeds or seed subsets ×
    draws, clipped to the bounds) as bars and n in the legend, for the rows of ``entry``; a
    protocol's own figure (continual, truncation, retrieval). ``integer``: an axis that counts,
    with integer ticks and the columns' points side by side at each. Returns the axes (a new
    figure's without ``ax``); None without rows."""
    mine = [r for r in rows if r.get("entry") == entry and r.get("metric") == metric]
    if not mine:
        return None
    by: dict[str, dict[float, list[float]]] = {}
    for r in mine:
        x = float(x_of(r))
        by.setdefault(str(r.get("column")), {}).setdefault(x, []).append(r.get("value"))
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    scale = percent(metric)
    for i, (col, pts) in enumerate(by.items()):
        xs = sorted(pts)
        dodge = 0.5 * (i - (len(by) - 1) / 2) / max(len(by) - 1, 1) if integer else 0.0
        cells = []
        for x in xs:
            s = summarize(pts[x])
            ci = s["ci95"] if math.isfinite(s["ci95"]) else None
            cells.append(Cell(s["mean"], s["std"], s["n"], ci, bounds=bounds(metric)))
        ns = sorted({c.n for c in cells})
        n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
        ax.errorbar(
            [x + dodge for x in xs],  # columns side by side at each integer x
            [scale * c.mean for c in cells],
            yerr=_err(cells, scale),
            marker="o",
            capsize=3,
            label=mpl_text(f"{col} ({n})"),
        )
    if log2 or log10:
        ax.set_xscale("log", base=2 if log2 else 10)
    if integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(mpl_text(xlabel))
    ax.set_ylabel(mpl_text(ylabel) + (" (%)" if scale != 1.0 else ""))
    note = "(mean; bars: 95% interval, none from equal values)"
    ax.set_title(mpl_text(f"{entry}: {title}") + "\n" + note, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax
