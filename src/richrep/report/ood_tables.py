"""The out-of-distribution view of an ``ood`` entry: a table of initialization (representation)
× algorithm, one per selection rule, cells mean ± std over seeds and restarts (the spread is
part of the result: Zhang & Bottou 2023 report it shrinking from ERM to cat20 initialization),
and a figure with one panel per test environment."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richrep.report.plots import mpl_text, plt, save
from richrep.report.tables import Comparison, build_comparison

PROTOCOL = "ood"
RULES = ("train-domain", "oracle")


def ood_entries(rows: Sequence[Any]) -> list[str]:
    """The entries evaluated by the ``ood`` protocol, in order of appearance."""
    return list(dict.fromkeys(r.get("entry") for r in rows if r.get("protocol") == PROTOCOL))


def ood_table(rows: Sequence[Any], entry: str, metric: str = "worst_env_accuracy") -> Comparison:
    """``metric`` of ``entry``: rows ``<algorithm> · <rule>``, columns representations."""
    return build_comparison([r for r in rows if r.get("entry") == entry], [entry], metric)


def split_variant(variant: str | None) -> tuple[str, str]:
    alg, _, rule = str(variant).partition(" · ")
    return alg, rule


def ood_markdown(comp: Comparison, rule: str, digits: int = 1) -> str:
    """The table of one selection rule in markdown, in percent: mean ± std (n)."""
    head = ["algorithm", *comp.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in comp.rows:
        alg, r = split_variant(row.target.variant)
        if r != rule:
            continue
        cells = []
        for c in comp.columns:
            x = row.cells.get(c)
            cells.append(
                "" if x is None else f"{100 * x.mean:.{digits}f} ± {100 * x.std:.{digits}f} ({x.n})"
            )
        lines.append("| " + " | ".join([alg, *cells]) + " |")
    return "\n".join(lines)


def ood_view(comp: Comparison, digits: int = 1) -> dict[str, Any]:
    """Both rules' tables as plain strings for the report template."""
    out = []
    for rule in RULES:
        body = []
        for row in comp.rows:
            alg, r = split_variant(row.target.variant)
            if r != rule:
                continue
            cells = []
            best = max((x.mean for x in row.cells.values()), default=None)
            for c in comp.columns:
                x = row.cells.get(c)
                if x is None:
                    cells.append({"text": "", "cls": ""})
                    continue
                cells.append(
                    {
                        "text": f"{100 * x.mean:.{digits}f} ± {100 * x.std:.{digits}f}",
                        "sub": f"n={x.n}",
                        "cls": "best" if x.mean == best else "",
                    }
                )
            body.append({"label": alg, "cells": cells})
        if body:
            out.append({"rule": rule, "rows": body})
    return {"metric": comp.metric, "columns": list(comp.columns), "rules": out}


def ood_environments(
    rows: Sequence[Any], entry: str, path: Path, rule: str = "train-domain"
) -> Path | None:
    """One panel per test environment (and the worst): per representation, a bar per algorithm
    (mean accuracy, error bar: std over seeds and restarts), for one selection rule."""
    mine = [r for r in rows if r.get("entry") == entry]
    per_env = build_comparison(mine, [entry], "accuracy")
    worst = build_comparison(mine, [entry], "worst_env_accuracy")
    panels: dict[str, dict[str, Any]] = {}
    for comp, name in ((per_env, None), (worst, "worst environment")):
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
            stds = [cells[c].std if c in cells else 0.0 for c in columns]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=mpl_text(alg))
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([mpl_text(c) for c in columns], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(mpl_text(panel), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(mpl_text(f"{entry}: {rule} selection"), fontsize=10)
    save(fig, path)
    return path
