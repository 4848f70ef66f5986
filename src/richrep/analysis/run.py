"""``richrep analyze``: are a run's seeds different? (Li et al. 2015, "Convergent Learning";
Kornblith et al. 2019; Raghu et al. 2017.)

On a named split of the source task it computes, for the run's trained seeds: the K×K matrix of
each measure, the matched-correlation curves (one-to-one and semi-matching), the sparse-
prediction λ curve, spectral clustering of the units of two seeds, a permutation test, the
same numbers for the untrained encoders as a reference, and a check that no two seeds'
checkpoints are identical. Writes ``analysis/summary.json`` and plots, and adds an "Are the
seeds different?" section to the report.
"""

from __future__ import annotations

import html
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from richrep.analysis.matching import match_units, sparse_prediction, spectral_clusters
from richrep.analysis.measures import MEASURES, is_similarity
from richrep.analysis.stats import pairwise, permutation_test
from richrep.errors import ConfigError
from richrep.store import RunStore, read_json, write_json

DEFAULT_MEASURES = ("linear_cka", "debiased_cka", "rbf_cka", "mean_cca", "svcca", "procrustes")
IDENTICAL_CKA = 0.999  # above this two seeds are flagged as (near-)identical


def analyze_run(
    store: RunStore,
    *,
    split: str = "test",
    measures: Sequence[str] = DEFAULT_MEASURES,
    max_samples: int = 5000,
    n_permutations: int = 200,
    n_clusters: int = 16,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Compute the seed-similarity analysis of a trained run and write it into the store."""
    from richrep.config import load_experiment
    from richrep.evaluation.suite import load_encoders, member_status
    from richrep.pipeline import source_task
    from richrep.representations import extract
    from richrep.training.device import resolve_device, resolve_precision
    from richrep.training.members import plan_members

    for m in measures:
        MEASURES.entry(m, where="--measure")
    exp = load_experiment(store.root / "config.yaml")
    task = source_task(exp)
    if split not in task.splits():
        raise ConfigError(f"--split must be one of train, val, test; got {split!r}")
    members = plan_members(exp, task.input_shape)
    status = member_status(store, members)
    singles = [
        m
        for m in members
        if m.kind == "single" and m.name in status and "failed" not in status[m.name]
    ]
    if len(singles) < 2:
        raise ConfigError(
            f"{store.root} has {len(singles)} trained seed(s); the analysis compares at least two"
        )
    data = task.splits()[split]
    if len(data) > max_samples:
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(exp.seed))[
            :max_samples
        ]
        data = data.subset(idx.sort().values)
    device = resolve_device(exp.evaluation.device)
    dtype = resolve_precision(exp.training.precision, device)
    encoders = load_encoders(exp, task, singles, store, status)
    trained = [extract(encoders[m.name], data.x, device=device, dtype=dtype) for m in singles]
    random = [
        extract(encoders[f"random-s{m.seed}"], data.x, device=device, dtype=dtype) for m in singles
    ]
    names = [m.name for m in singles]
    log(f"analysis on {len(data)} {split} examples of {task.name}, {len(singles)} seeds")

    summary: dict[str, Any] = {
        "split": split,
        "n": len(data),
        "seeds": [m.seed for m in singles],
        "members": names,
        "measures": {},
        "random_measures": {},
    }
    for name in measures:
        summary["measures"][name] = pairwise(trained, name).tolist()
        summary["random_measures"][name] = pairwise(random, name).tolist()
        summary.setdefault("self", {})[name] = float(
            MEASURES.entry(name).fn(trained[0], trained[0])
        )
    a, b = trained[0], trained[1]
    one = match_units(a, b, method="one_to_one")
    semi = match_units(a, b, method="semi")
    summary["matching"] = {
        "pair": names[:2],
        "one_to_one": one.correlations.tolist(),
        "semi": semi.correlations.tolist(),
        "random_one_to_one": match_units(random[0], random[1]).correlations.tolist(),
    }
    half = len(data) // 2
    with (
        warnings.catch_warnings()
    ):  # the weakest λ of the path may stop short; its error is still reported
        warnings.simplefilter("ignore", ConvergenceWarning)
        sp = sparse_prediction(a[:half], b[:half], X_eval=a[half:], Y_eval=b[half:], n_alphas=12)
    summary["sparse_prediction"] = {
        "pair": names[:2],
        "alphas": sp.alphas.tolist(),
        "nse": sp.nse.tolist(),
        "nonzero": sp.nonzero.tolist(),
    }
    k = min(n_clusters, a.shape[1] // 2)
    cl = spectral_clusters(a, b, n_clusters=k, seed=exp.seed)
    summary["spectral"] = {
        "pair": names[:2],
        "n_clusters": k,
        "n_mixed": int(cl.n_mixed),
        "sizes": np.asarray(cl.sizes).tolist(),
    }
    pt = permutation_test("linear_cka", a, b, n_permutations=n_permutations, seed=exp.seed)
    summary["permutation_test"] = {
        "pair": names[:2],
        "measure": "linear_cka",
        "observed": pt.observed,
        "p_value": pt.p_value,
        "null_mean": float(pt.null.mean()),
        "n_permutations": n_permutations,
    }
    summary["warnings"] = _warnings(store, singles, summary)
    out = store.root / "analysis"
    write_json(out / "summary.json", summary)
    _plots(store, summary)
    for w in summary["warnings"]:
        log(f"WARNING: {w}")
    return summary


def _warnings(store: RunStore, singles: Sequence[Any], summary: dict[str, Any]) -> list[str]:
    out = []
    shas = {
        m.name: read_json(store.checkpoint(m.name).with_suffix(".json"))["sha256"] for m in singles
    }
    for x, y in itertools.combinations(shas, 2):
        if shas[x] == shas[y]:
            out.append(f"{x} and {y} have byte-identical checkpoints: the seeds did not differ")
    cka = np.asarray(summary["measures"].get("linear_cka", []))
    for i, j in itertools.combinations(range(len(cka)), 2):
        if cka[i, j] > IDENTICAL_CKA:
            out.append(
                f"{summary['members'][i]} and {summary['members'][j]} have linear CKA "
                f"{cka[i, j]:.4f}: (near-)identical representations"
            )
    return out


def _off_diagonal(mat: Sequence[Sequence[float]]) -> list[float]:
    m = np.asarray(mat)
    return [float(m[i, j]) for i, j in itertools.combinations(range(len(m)), 2)]


def _plots(store: RunStore, s: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from richrep.report.plots import save

    names = s["members"]
    ms = list(s["measures"])
    cols = min(3, len(ms))
    rows = math.ceil(len(ms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.5 * rows), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, ms, strict=False):
        m = np.asarray(s["measures"][name])
        im = ax.imshow(m, cmap="viridis" if is_similarity(name) else "viridis_r")
        ax.set_title(name + ("" if is_similarity(name) else " (distance)"))
        ax.set_xticks(range(len(names)), [n.split("-")[-1] for n in names], fontsize=7)
        ax.set_yticks(range(len(names)), [n.split("-")[-1] for n in names], fontsize=7)
        for i in range(len(m)):
            for j in range(len(m)):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(ms) :]:
        ax.axis("off")
    fig.suptitle("seed × seed similarity (trained encoders)")
    fig.tight_layout()
    save(fig, store.plots / "seed_similarity.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    mt = s["matching"]
    ax1.plot(mt["one_to_one"], label="one-to-one (trained)")
    ax1.plot(mt["semi"], label="semi-matching (trained)")
    ax1.plot(mt["random_one_to_one"], "--", label="one-to-one (untrained)")
    ax1.set_xlabel("unit rank")
    ax1.set_ylabel("correlation of matched unit")
    ax1.set_title(f"matched correlations, {mt['pair'][0]} vs {mt['pair'][1]}", fontsize=9)
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    sp = s["sparse_prediction"]
    ax2.semilogx(sp["alphas"], sp["nse"], marker="o")
    ax2.set_xlabel("L1 strength λ")
    ax2.set_ylabel("normalized squared error (held-out)")
    ax2.set_title("sparse prediction of one seed's units from another's", fontsize=9)
    ax3 = ax2.twinx()
    ax3.semilogx(sp["alphas"], sp["nonzero"], color="0.6", ls=":")
    ax3.set_ylabel("mean non-zero weights", color="0.5")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, store.plots / "unit_matching.png")


def report_section(store: RunStore) -> str:
    """The "Are the seeds different?" section of the HTML report (empty without an analysis)."""
    import base64

    path = store.root / "analysis" / "summary.json"
    if not path.exists():
        return ""
    s = read_json(path)
    rows = []
    for name, mat in s["measures"].items():
        off, rnd = _off_diagonal(mat), _off_diagonal(s["random_measures"][name])
        rows.append(
            f"<tr><td>{name}</td><td>{s['self'][name]:.3f}</td><td>{np.mean(off):.3f} ± {np.std(off):.3f}</td>"
            f"<td>{min(off):.3f} – {max(off):.3f}</td><td>{np.mean(rnd):.3f}</td></tr>"
        )
    mt, sp, pt, sc = s["matching"], s["sparse_prediction"], s["permutation_test"], s["spectral"]
    warn = "".join(f"<p class=warn>⚠ {html.escape(w)}</p>" for w in s["warnings"])
    imgs = "".join(
        f"<img alt='{p}' src='data:image/png;base64,{base64.b64encode((store.plots / p).read_bytes()).decode()}'>"
        for p in ("seed_similarity.png", "unit_matching.png")
        if (store.plots / p).exists()
    )
    return (
        "<h2>Are the seeds different?</h2>"
        + warn
        + f"<p>Penultimate features of {len(s['members'])} trained seeds on {s['n']} {s['split']} examples of the "
        "source task. If seeds learned the same features, concatenating them would add nothing.</p>"
        "<table><tr><th>measure</th><th>seed vs itself</th><th>seed vs seed (mean ± std)</th><th>range</th>"
        "<th>untrained seed vs seed</th></tr>" + "".join(rows) + "</table>"
        f"<p>Unit matching ({mt['pair'][0]} vs {mt['pair'][1]}): mean one-to-one matched correlation "
        f"{np.mean(mt['one_to_one']):.3f}, semi-matching {np.mean(mt['semi']):.3f}; the median unit's best "
        f"partner correlates at {np.median(mt['semi']):.3f}. Sparse prediction: normalized error "
        f"{min(sp['nse']):.3f} at best λ. Spectral clustering into {sc['n_clusters']} clusters: "
        f"{sc['n_mixed']} mix units of both seeds. Permutation test of linear CKA: observed "
        f"{pt['observed']:.3f} vs null mean {pt['null_mean']:.3f}, p = {pt['p_value']:.3g} "
        f"({pt['n_permutations']} permutations).</p><div class=figs>{imgs}</div>"
    )
