"""The DomainBed-style table of a ``domain_generalization`` entry: one row per method, one
column per test domain and their average, one table per selection rule; each cell the mean
over restarts (draws) with its 95 % interval and n. :func:`dg_table` builds it from rows,
:func:`markdown` writes it as text, and the report draws it (``FIGURES``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from richrep.plugins import DG_METHODS
from richrep.registry import load_plugins
from richrep.report.figures.protocols import FIGURES
from richrep.results.stats import summarize

RULES = ("train-domain", "oracle")


def _order(row: dict[str, Any]) -> tuple[int, str]:
    load_plugins()
    method = str((row.get("extra") or {}).get("method", ""))
    order = DG_METHODS.meta(method, "order", 99) if method in DG_METHODS else 99
    return int(order), method


def dg_table(
    rows: list[dict[str, Any]], entry: str, rule: str, metric: str = "accuracy"
) -> tuple[list[str], list[tuple[str, list[dict[str, float] | None]]]]:
    """(columns, [(method label, cells)]) of ``entry``'s rows under ``rule``: the columns are
    the test domains in the rows' order and ``average``; a cell is
    :func:`~richrep.results.stats.summarize` of the values over draws (None: no rows)."""
    mine = [
        r
        for r in rows
        if r.get("entry") == entry
        and r.get("protocol") == "domain_generalization"
        and r.get("metric") == metric
        and (r.get("extra") or {}).get("selection") == rule
    ]
    envs = [e for e in dict.fromkeys(str(r.get("environment")) for r in mine) if e != "average"]
    columns = [*envs, "average"] if envs else []
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    labels: dict[str, tuple[int, str]] = {}
    for r in mine:
        label = str(r.get("variant", "")).split(" · ")[0]
        labels.setdefault(label, _order(r))
        cells[label][str(r.get("environment"))].append(float(r["value"]))
    body = []
    for label in sorted(labels, key=lambda lab: (*labels[lab], lab)):
        body.append(
            (label, [summarize(cells[label][c]) if cells[label][c] else None for c in columns])
        )
    return columns, body


def dg_cell(s: dict[str, float] | None, scale: float = 100.0) -> str:
    """``mean ± half-width (n)`` in percent; ``mean (n)`` without an interval."""
    if s is None:
        return "–"
    mean = f"{scale * s['mean']:.1f}"
    if s["ci95"] == s["ci95"]:  # not NaN
        return f"{mean} ± {scale * s['ci95']:.1f} ({int(s['n'])})"
    return f"{mean} ({int(s['n'])})"


def markdown(rows: list[dict[str, Any]], entry: str, metric: str = "accuracy") -> str:
    """Both rules' tables as Markdown (accuracy in %, mean ± 95 % interval (n))."""
    out = []
    for rule in RULES:
        columns, body = dg_table(rows, entry, rule, metric)
        if not body:
            continue
        out.append(f"**{entry}, {metric}, {rule} selection** (%, mean ± 95 % interval (n))\n")
        out.append("| method | " + " | ".join(columns) + " |")
        out.append("|---" * (len(columns) + 1) + "|")
        out += [f"| {lab} | " + " | ".join(map(dg_cell, cs)) + " |" for lab, cs in body]
        out.append("")
    return "\n".join(out)


@FIGURES.register("domain_generalization")
def domainbed_table(rows: list[Any], entry: str) -> Any:
    """The report's figure of a domain_generalization entry: the DomainBed-style table (test
    accuracy, %), one panel per selection rule."""
    import matplotlib.pyplot as plt

    from richrep.report.plots import mpl_text

    tables = [(rule, *dg_table(rows, entry, rule)) for rule in RULES]
    tables = [t for t in tables if t[2]]
    if not tables:
        return None
    n_rows = sum(len(t[2]) + 2 for t in tables)
    width = 2.0 + 1.45 * len(tables[0][1])
    fig, axes = plt.subplots(len(tables), 1, figsize=(width, 0.32 * n_rows + 0.8), dpi=110)
    axes = [axes] if len(tables) == 1 else list(axes)
    for ax, (rule, columns, body) in zip(axes, tables, strict=True):
        ax.axis("off")
        table = ax.table(
            cellText=[[dg_cell(c) for c in cs] for _, cs in body],
            rowLabels=[mpl_text(lab) for lab, _ in body],
            colLabels=[mpl_text(c) for c in columns],
            loc="center",
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        ax.set_title(mpl_text(f"{entry}: {rule} selection (test accuracy, %)"), fontsize=9)
    return fig
