"""The figures of protocols that have their own (registry ``FIGURES``, keyed by protocol
name): ``FIGURES[protocol](rows, entry)`` draws the figure of one entry of that protocol from its
result rows and returns it (a matplotlib figure; None when there is nothing to draw); the report
writes it. A protocol plug-in that wants a figure registers one here by its name. Matplotlib
loads when a figure is drawn, not when the figures are registered."""

from __future__ import annotations

from typing import Any

import numpy as np

from richrep.registry import Registry

FIGURES: Registry[Any] = Registry("protocol figure", skip=2, plural="figures")


@FIGURES.register("compatibility")
def compatibility_matrices(rows: list[Any], entry: str) -> Any:
    """The report's figure of a compatibility entry: each sequence's cross-model top-1 matrix
    (queries by the newer model, gallery by the older), one panel per sequence."""
    import matplotlib.pyplot as plt

    from richrep.report.plots import mpl_text

    mine = [r for r in rows if r.get("entry") == entry and r.get("metric") == "cross_top1"]
    seqs = list(dict.fromkeys(str(r.get("sequence")) for r in mine))
    if not seqs:
        return None
    fig, axes = plt.subplots(
        1,
        len(seqs),
        figsize=(3.4 * len(seqs) + 1.2, 3.8),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    im = None
    for ax, name in zip(axes[0], seqs, strict=True):
        cells = [r for r in mine if str(r.get("sequence")) == name]
        names = list(
            dict.fromkeys(str(r.get("queries")) for r in sorted(cells, key=lambda r: r.get("i")))
        )
        t = len(names)
        m = np.full((t, t), np.nan)
        for r in cells:
            m[int(r.get("i")), int(r.get("j"))] = r.get("value")
        im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
        for i in range(t):
            for j in range(i + 1):
                ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_xticks(range(t), [mpl_text(n) for n in names], rotation=45, fontsize=6, ha="right")
        ax.set_yticks(range(t), [mpl_text(n) for n in names], fontsize=6)
        ax.set_xlabel("gallery (old)", fontsize=8)
        ax.set_ylabel("queries (new)", fontsize=8)
        ax.set_title(mpl_text(name), fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03, label="top-1")
    fig.suptitle(mpl_text(f"{entry}: cross-model top-1"), fontsize=10)
    return fig


@FIGURES.register("continual")
def accuracy_after_tasks(rows: list[Any], entry: str) -> Any:
    """The report's figure of a continual entry: accuracy after each task, one line per
    representation column (mean over orders and seeds)."""
    from richrep.report.plots import lines_by_column

    ax = lines_by_column(
        rows,
        entry,
        x_of=lambda r: str(r.get("variant")).split()[2].split("/")[0],
        xlabel="tasks seen",
        ylabel="test accuracy on the classes seen",
        title="nearest class mean, class-incremental",
        integer=True,
    )
    return None if ax is None else ax.figure


@FIGURES.register("truncation")
def accuracy_against_dims(rows: list[Any], entry: str) -> Any:
    """The report's figure of a truncation entry: probe accuracy against the prefix length,
    one line per column (mean over seeds and subsets), log-scaled dimensions."""
    from richrep.report.plots import lines_by_column

    ax = lines_by_column(
        rows,
        entry,
        x_of=lambda r: r.get("prefix"),
        xlabel="first m features",
        ylabel="probe test accuracy",
        title="accuracy under truncation",
        log2=True,
    )
    return None if ax is None else ax.figure


@FIGURES.register("retrieval")
def cost_vs_accuracy(rows: list[Any], entry: str) -> Any:
    """The report's figure of a retrieval entry: top-1 against the cost (features touched per
    query relative to full search), one line per column."""
    from richrep.report.plots import lines_by_column

    ax = lines_by_column(
        rows,
        entry,
        x_of=lambda r: r.get("cost"),
        xlabel="features touched per query (fraction of full search)",
        ylabel="top-1 retrieval accuracy",
        title="adaptive retrieval",
        metric="top1",
        log10=True,
    )
    return None if ax is None else ax.figure
