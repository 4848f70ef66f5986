"""The "Are the seeds different?" part of the report, from the seed-analysis summary (the dict
``analysis/summary.json`` holds): plots and the plain values the template shows."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from richrep.report.plots import mpl_text, plt, save

DISTANCES = ("procrustes",)  # distances when the measure registry cannot say


def _is_similarity(summary: Mapping[str, Any], name: str) -> bool:
    """Whether higher values of measure ``name`` mean more similar (False for distances)."""
    given = summary.get("similarity")
    if isinstance(given, Mapping) and name in given:
        return bool(given[name])
    try:
        from richrep.analysis.measures import is_similarity as registered

        return registered(name)
    except Exception:  # unknown measure, or the registry cannot load
        return not (name in DISTANCES or "dist" in name)


def _matrix(m: Any) -> np.ndarray | None:
    try:
        a = np.asarray(m, dtype=float)
    except (TypeError, ValueError):
        return None
    return a if a.ndim == 2 and a.shape[0] == a.shape[1] and a.size else None


def off_diagonal(m: Any) -> list[float]:
    a = _matrix(m)
    if a is None:
        return []
    return [float(a[i, j]) for i, j in itertools.combinations(range(len(a)), 2)]


def _short(name: Any) -> str:
    return mpl_text(str(name).split("-")[-1])


def _text_color(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def similarity_heatmaps(summary: Mapping[str, Any], path: Path) -> Path | None:
    """Seed × seed heatmaps of every measure: similarities on one 0–1 colour scale, distances on
    one shared scale of their own; each value printed in a colour readable on its cell."""
    from matplotlib.colors import Normalize

    mats = {str(k): _matrix(v) for k, v in dict(summary.get("measures") or {}).items()}
    mats = {k: v for k, v in mats.items() if v is not None}
    if not mats:
        return None
    groups = [
        ("similarity (1 = identical)", [k for k in mats if _is_similarity(summary, k)], "viridis"),
        ("distance (0 = identical)", [k for k in mats if not _is_similarity(summary, k)], "magma"),
    ]
    groups = [g for g in groups if g[1]]
    most = max(len(g[1]) for g in groups)
    cols = min(3 if most <= 6 else 4, most)
    nrows = sum(math.ceil(len(g[1]) / cols) for g in groups)
    names = list(summary.get("members") or [])
    size = max(len(v) for v in mats.values())
    cell = max(2.6, 0.45 * size + 1.2)
    fig = plt.figure(figsize=(cell * cols + 1.4, cell * nrows + 0.8), dpi=100)
    gs = fig.add_gridspec(
        nrows, cols + 1, width_ratios=[1.0] * cols + [0.06], wspace=0.35, hspace=0.5
    )
    r0 = 0
    for title, keys, cmap_name in groups:
        cmap = plt.get_cmap(cmap_name)
        vals = np.concatenate([mats[k].ravel() for k in keys])
        vals = vals[np.isfinite(vals)]
        if "similarity" in title:
            lo = min(0.0, float(vals.min())) if vals.size else 0.0
            hi = max(1.0, float(vals.max())) if vals.size else 1.0
        else:
            lo, hi = 0.0, (float(vals.max()) if vals.size and vals.max() > 0 else 1.0)
        norm = Normalize(lo, hi)
        rows = math.ceil(len(keys) / cols)
        for idx, k in enumerate(keys):
            ax = fig.add_subplot(gs[r0 + idx // cols, idx % cols])
            m = mats[k]
            ax.imshow(m, cmap=cmap, norm=norm)
            ax.set_title(mpl_text(k), fontsize=9)
            labels = [_short(n) for n in names[: len(m)]]
            labels += [str(i) for i in range(len(labels), len(m))]
            ax.set_xticks(range(len(m)), labels, fontsize=7, rotation=90)
            ax.set_yticks(range(len(m)), labels, fontsize=7)
            fs = max(5, 9 - len(m) // 2)
            for i in range(len(m)):
                for j in range(len(m)):
                    v = m[i, j]
                    if np.isfinite(v):
                        color = _text_color(cmap(norm(v)))
                        ax.text(
                            j, i, f"{v:.2f}", ha="center", va="center", fontsize=fs, color=color
                        )
        cax = fig.add_subplot(gs[r0 : r0 + rows, cols])
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, cax=cax, label=title)
        r0 += rows
    fig.suptitle("seed × seed, trained encoders (one colour scale per kind of measure)")
    save(fig, path)
    return path


def matching_curves(summary: Mapping[str, Any], path: Path) -> Path | None:
    """Matched-unit correlations (one-to-one, semi; untrained for reference) and the sparse
    prediction error against the L1 strength λ."""
    mt = summary.get("matching") or {}
    sp = summary.get("sparse_prediction") or {}
    if not mt and not sp:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=100)
    for key, label, style in (
        ("one_to_one", "one-to-one (trained)", "-"),
        ("semi", "semi-matching (trained)", "-"),
        ("random_one_to_one", "one-to-one (untrained)", "--"),
    ):
        v = _floats(mt.get(key))
        if v:
            ax1.plot(v, style, label=label)
    pair = [str(p) for p in (mt.get("pair") or [])][:2]
    ax1.set_xlabel("unit rank")
    ax1.set_ylabel("correlation of matched unit")
    ax1.set_title(
        mpl_text("matched correlations" + (f", {' vs '.join(pair)}" if pair else "")), fontsize=9
    )
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=3)
    ax1.grid(alpha=0.3)
    alphas, nse, nz = _floats(sp.get("alphas")), _floats(sp.get("nse")), _floats(sp.get("nonzero"))
    if alphas and len(nse) == len(alphas) and all(a > 0 for a in alphas):
        ax2.semilogx(alphas, nse, marker="o", label="normalized squared error")
        if len(nz) == len(alphas):
            ax3 = ax2.twinx()
            ax3.semilogx(alphas, nz, color="0.6", ls=":", label="non-zero weights")
            ax3.set_ylabel("mean non-zero weights", color="0.5")
    ax2.set_xlabel("L1 strength λ")
    ax2.set_ylabel("normalized squared error (held-out)")
    ax2.set_title("sparse prediction of one seed's units from another's", fontsize=9)
    ax2.grid(alpha=0.3)
    save(fig, path)
    return path


def _floats(v: Any) -> list[float]:
    if not isinstance(v, list | tuple):
        return []
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float):
            return []
        out.append(float(x))
    return out


def _f(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def seed_context(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values for the template: a row per measure and the matching/test numbers."""
    rows = []
    rnd = summary.get("random_measures") or {}
    self_ = summary.get("self") or {}
    for name, mat in dict(summary.get("measures") or {}).items():
        off = off_diagonal(mat)
        roff = off_diagonal(rnd.get(name)) if isinstance(rnd, Mapping) else []
        rows.append(
            {
                "measure": str(name),
                "kind": "similarity" if _is_similarity(summary, str(name)) else "distance",
                "self": _f(self_.get(name)) if isinstance(self_, Mapping) else None,
                "mean": float(np.mean(off)) if off else None,
                "std": float(np.std(off)) if off else None,
                "low": min(off) if off else None,
                "high": max(off) if off else None,
                "random": float(np.mean(roff)) if roff else None,
            }
        )
    mt = summary.get("matching") or {}
    sp = summary.get("sparse_prediction") or {}
    pt = summary.get("permutation_test") or {}
    sc = summary.get("spectral") or {}
    one, semi = _floats(mt.get("one_to_one")), _floats(mt.get("semi"))
    nse = _floats(sp.get("nse"))
    warnings = summary.get("warnings") or []
    return {
        "n_members": len(summary.get("members") or []),
        "members": [str(m) for m in summary.get("members") or []],
        "seeds": [str(s) for s in summary.get("seeds") or []],
        "n": summary.get("n"),
        "split": summary.get("split"),
        "rows": rows,
        "pair": " vs ".join(str(p) for p in (mt.get("pair") or [])[:2]),
        "one_to_one": float(np.mean(one)) if one else None,
        "semi": float(np.mean(semi)) if semi else None,
        "semi_median": float(np.median(semi)) if semi else None,
        "nse_best": min(nse) if nse else None,
        "n_clusters": sc.get("n_clusters"),
        "n_mixed": sc.get("n_mixed"),
        "perm_measure": pt.get("measure"),
        "observed": _f(pt.get("observed")),
        "null_mean": _f(pt.get("null_mean")),
        "p_value": _f(pt.get("p_value")),
        "n_permutations": pt.get("n_permutations"),
        "warnings": [str(w) for w in warnings] if isinstance(warnings, list) else [str(warnings)],
    }


def seed_plots(summary: Mapping[str, Any], plots: Path) -> list[Path]:
    """Write the analysis plots under ``plots``; the paths written."""
    out = [
        similarity_heatmaps(summary, plots / "seed_similarity.png"),
        matching_curves(summary, plots / "unit_matching.png"),
    ]
    return [p for p in out if p is not None]
