"""The out-of-distribution view of an ``ood`` entry: worst test-environment accuracy first (the
number an OOD claim rests on), a table of algorithm × initialization (representation) per
selection rule, the accuracy of each test environment in tables of its own, a figure with one
panel per test environment, and the summary's sentences.

Every cell is the mean over seeds (or seed subsets) × restarts, in percent, ± the half-width of
its 95% Student-t interval over those n values (the same "±" as every other table), the
interval clipped to [0, 100] %; one value or equal values give no interval. The std, the spread
Zhang & Bottou (2023) see shrinking from ERM to cat20 initialization, is in the tooltip."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richrep.report.plots import mpl_text, plt, save
from richrep.report.summary import gain_phrase
from richrep.report.tables import Cell, Comparison, TableRow, build_comparison

PROTOCOL = "ood"
RULES = ("train-domain", "oracle")
WORST = "worst"  # the environment label of worst-environment rows in the accuracy table
MEANING = (
    "% mean over seeds (or seed subsets) × restarts ± half-width of its 95% Student-t "
    "interval (n values); an interval that would leave [0, 100] is clipped and shown as "
    "[low, high]"
)


def ood_entries(rows: Sequence[Any]) -> list[str]:
    """The entries evaluated by the ``ood`` protocol, in order of appearance."""
    return list(dict.fromkeys(r.get("entry") for r in rows if r.get("protocol") == PROTOCOL))


def ood_table(rows: Sequence[Any], entry: str, metric: str = "worst_env_accuracy") -> Comparison:
    """``metric`` of ``entry``: rows ``<algorithm> · <rule>``, columns representations."""
    return build_comparison([r for r in rows if r.get("entry") == entry], [entry], metric)


def table_rows(rows: Sequence[Any]) -> list[Any]:
    """The rows of the generic per-metric tables: an ``ood`` entry's ``accuracy`` is its
    worst test-environment accuracy (environment ``worst``), one table row per algorithm and
    rule; the accuracy of each environment is left to the OOD section's own tables."""
    out = []
    for r in rows:
        if r.get("protocol") != PROTOCOL:
            out.append(r)
        elif r.get("metric") == "worst_env_accuracy":
            out.append(r)
            out.append(_replace(r, metric="accuracy", environment=WORST))
        elif r.get("metric") != "accuracy" or r.get("environment") is None:
            out.append(r)
    return out


def _replace(row: Any, **changes: Any) -> Any:
    if dataclasses.is_dataclass(row):
        return dataclasses.replace(row, **changes)
    return {**row, **changes}


def split_variant(variant: str | None) -> tuple[str, str]:
    alg, _, rule = str(variant).partition(" · ")
    return alg, rule


def _pct(x: Cell, digits: int) -> str:
    """``61.0 ± 1.4`` (percent), ``61.0 [52.1, 100.0]`` when clipped, ``61.0`` without an
    interval."""
    return f"{100 * x.mean:.{digits}f}{x.pm_text(digits, 100.0)}"


def _rows_of(comp: Comparison, rule: str) -> list[tuple[str, TableRow]]:
    """(label, row) of ``rule``: the algorithm, and the environment when there is one."""
    out = []
    for row in comp.rows:
        alg, r = split_variant(row.target.variant)
        if r == rule:
            env = row.target.environment
            out.append((alg if env is None else f"{alg} · {env}", row))
    return out


def ood_markdown(comp: Comparison, rule: str, digits: int = 1) -> str:
    """The table of one selection rule in markdown, in percent: mean ± 95% half-width (n)."""
    head = ["algorithm", *comp.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in _rows_of(comp, rule):
        cells = []
        for c in comp.columns:
            x = row.cells.get(c)
            cells.append("" if x is None else f"{_pct(x, digits)} ({x.n_text()})")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def _view_rows(
    comp: Comparison, rule: str, digits: int, columns: Sequence[str]
) -> list[dict[str, Any]]:
    body = []
    for label, row in _rows_of(comp, rule):
        best = comp.best(row)  # clear of every other column's interval, never from no interval
        cells = []
        for c in columns:
            x = row.cells.get(c)
            if x is None:
                cells.append({"text": "", "sub": "", "title": "", "cls": ""})
                continue
            title = f"std {100 * x.std:.{digits}f}; {x.ci_text(3)}"
            cls = "best" if c in best else ""
            cells.append({"text": _pct(x, digits), "sub": x.n_text(), "title": title, "cls": cls})
        body.append({"label": label, "cells": cells})
    return body


def ood_view(comp: Comparison, env: Comparison | None = None, digits: int = 1) -> dict[str, Any]:
    """Both rules' tables (``comp``: worst environment) and, from ``env`` (per-environment
    accuracy), each rule's environment table, as plain strings for the report template."""
    out = []
    for rule in RULES:
        body = _view_rows(comp, rule, digits, comp.columns)
        envs = _view_rows(env, rule, digits, comp.columns) if env is not None else []
        if body or envs:
            out.append({"rule": rule, "rows": body, "environments": envs})
    return {"metric": comp.metric, "columns": list(comp.columns), "rules": out}


def ood_summary_lines(rows: Sequence[Any], entries: Sequence[str] | None = None) -> list[str]:
    """Per ``ood`` entry and selection rule, one sentence led by worst test-environment
    accuracy: per algorithm, catK's level and its gains (with their intervals), or, without
    catK, every column's level."""
    found = ood_entries(rows)
    names = [e for e in entries or [] if e in found]
    names += [e for e in found if e not in names]
    out = []
    for e in names:
        comp = ood_table(rows, e)
        for rule in RULES:
            clauses = [_clause(comp, alg, row) for alg, row in _rows_of(comp, rule)]
            clauses = [c for c in clauses if c]
            if clauses:
                head = f"{e} (ood; worst test-environment accuracy, {rule} selection): "
                out.append(head + "; ".join(clauses) + ".")
    return out


def _clause(comp: Comparison, alg: str, row: TableRow) -> str:
    cat = next((g.left for g in comp.headline_gains if g.left in row.cells), None)
    if cat is None:
        levels = [f"{c} {100 * x.mean:.1f} %" for c, x in row.cells.items()]
        return f"with {alg}, " + ", ".join(levels) if levels else ""
    phrases = []
    for gc in comp.headline_gains:
        g = row.gains.get(gc.name)
        if g is not None:
            phrases.append(gain_phrase(g, gc.right, 100.0, " points"))
    level = f"with {alg}, {cat} reaches {100 * row.cells[cat].mean:.1f} %"
    return level + (" and " + ", ".join(phrases) if phrases else "")


def save_ood_environments(
    rows: Sequence[Any], entry: str, path: Path, rule: str = "train-domain"
) -> Path | None:
    """One panel per test environment (and the worst): per representation, a bar per algorithm
    (mean accuracy, error bar: its 95% interval, clipped to [0, 1]), for one selection rule."""
    mine = [r for r in rows if r.get("entry") == entry]
    per_env = build_comparison(mine, [entry], "accuracy")
    worst = build_comparison(mine, [entry], "worst_env_accuracy")
    panels: dict[str, dict[str, Any]] = {}
    for comp, name in ((worst, "worst environment"), (per_env, None)):
        for row in comp.rows:
            alg, r = split_variant(row.target.variant)
            if r != rule:
                continue
            panel = name or str(row.target.environment)
            panels.setdefault(panel, {})[alg] = row.cells
    if not panels:
        return None
    columns = list(worst.columns) or list(per_env.columns)
    algs = list(dict.fromkeys(a for p in panels.values() for a in p))
    n = len(panels)
    fig, axes = plt.subplots(
        1, n, figsize=(max(4.0, 0.55 * len(columns) * n + 2), 3.8), dpi=110, squeeze=False
    )
    width = 0.8 / max(len(algs), 1)
    for ax, (panel, by_alg) in zip(axes[0], panels.items(), strict=True):
        for i, alg in enumerate(algs):
            cells = by_alg.get(alg, {})
            xs = [j + (i - (len(algs) - 1) / 2) * width for j in range(len(columns))]
            means = [cells[c].mean if c in cells else float("nan") for c in columns]
            err = [
                [cells[c].mean - cells[c].low if c in cells else 0.0 for c in columns],
                [cells[c].high - cells[c].mean if c in cells else 0.0 for c in columns],
            ]
            ax.bar(xs, means, width, yerr=err, capsize=2, label=mpl_text(alg))
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([mpl_text(c) for c in columns], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(mpl_text(panel), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (bars: 95% interval)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(mpl_text(f"{entry}: {rule} selection"), fontsize=10)
    save(fig, path)
    return path
