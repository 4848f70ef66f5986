"""Plots: accuracy against K per target, with the baselines and floors marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from richrep.evaluation.stats import aggregate  # noqa: E402

MARKERS = {"wide": ("s", "tab:red"), "wide_dim": ("D", "tab:purple"), "joint": ("^", "tab:green")}


def accuracy_vs_k(rows: Sequence[dict[str, Any]], entry: str, path: Path) -> Path:
    """One panel: a line per (protocol, size) of single/catK mean ± std against K, baselines as
    markers at their K, the input and random floors as dashed lines."""
    rows = [r for r in rows if r["entry"] == entry]
    agg = aggregate(rows, ("protocol", "size", "representation", "k"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    groups = sorted(
        {(a["protocol"], str(a["size"])) for a in agg},
        key=lambda g: (g[0], 1e9 if g[1] == "all" else int(g[1])),
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (proto, size) in enumerate(groups):
        color = colors[i % len(colors)]
        mine = [a for a in agg if a["protocol"] == proto and str(a["size"]) == size]
        line = sorted(
            (a for a in mine if a["representation"] in ("single", "cat")), key=lambda a: a["k"]
        )
        label = f"{proto}, {size if size == 'all' else size + '/class'}"
        ax.errorbar(
            [a["k"] for a in line],
            [a["mean"] for a in line],
            yerr=[a["std"] for a in line],
            marker="o",
            color=color,
            capsize=3,
            label=f"catK ({label})",
        )
        for a in mine:
            if a["representation"] in MARKERS:
                m, _ = MARKERS[a["representation"]]
                ax.errorbar(
                    [a["k"]],
                    [a["mean"]],
                    yerr=[a["std"]],
                    marker=m,
                    color=color,
                    ms=8,
                    mfc="white",
                    capsize=2,
                    linestyle="none",
                )
            elif a["representation"] in ("input", "random"):
                ax.axhline(
                    a["mean"],
                    color=color,
                    lw=1,
                    linestyle="--" if a["representation"] == "input" else ":",
                )
    present = {a["representation"] for a in agg}
    for name, (m, _) in MARKERS.items():
        if name in present:
            ax.plot([], [], marker=m, mfc="white", color="0.3", linestyle="none", label=name)
    if "input" in present:
        ax.plot([], [], "--", color="0.3", label="input floor")
    if "random" in present:
        ax.plot([], [], ":", color="0.3", label="random floor")
    ax.set_xlabel("K (seeds concatenated)")
    ax.set_ylabel("test accuracy")
    ax.set_title(entry)
    ax.grid(alpha=0.3)
    ks = sorted({a["k"] for a in agg if a["k"] >= 1})
    if ks:
        ax.set_xticks(ks)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save(fig, path)
    return path


def save(fig: Any, path: Path) -> None:
    """Write a figure as PNG atomically, and close it."""
    import io

    from richrep.store import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
