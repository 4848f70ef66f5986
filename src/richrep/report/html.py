"""The self-contained HTML report of a run (figures embedded), written atomically."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Callable
from typing import Any

from richrep.report.plots import accuracy_vs_k
from richrep.report.tables import Comparison, build_comparison
from richrep.store import RunStore, read_json, write_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem} h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left} td.best{font-weight:bold;background:#eef8ee}
td.pos{color:#1a7f37} td.neg{color:#c0392b} .figs{display:flex;flex-wrap:wrap;gap:1rem} .figs img{max-width:580px;border:1px solid #eee}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem 1rem} code,pre{background:#f6f8fa;font-size:.8rem}
pre{padding:.5rem;overflow:auto} .muted{color:#777;font-size:.85rem}
"""

Section = Callable[[RunStore], str]


def sections() -> list[Section]:
    """Extra sections, each empty when its stage has not run."""
    from richrep.analysis.run import report_section

    return [report_section]


def write_report(store: RunStore, log: Callable[[str], None] = print) -> None:
    """Draw the plots and write ``report.html`` from the run's ``results.jsonl``."""
    from richrep.config import load_experiment
    from richrep.evaluation.suite import read_results

    exp = load_experiment(store.root / "config.yaml")
    rows = read_results(store)
    entries = [e.name for e in exp.evaluation.suite]
    comp = build_comparison(rows, entries)
    figs = []
    for e in entries:
        if any(r["entry"] == e for r in rows):
            figs.append(accuracy_vs_k(rows, e, store.plots / f"accuracy_vs_k-{e}.png"))
    env = read_json(store.root / "env.json") if (store.root / "env.json").exists() else {}
    parts = [
        f"<h1>richrep report — {html.escape(exp.name)}</h1>",
        f"<p class=muted>run <code>{html.escape(store.root.name)}</code> · written "
        f"{dt.datetime.now().isoformat(timespec='seconds')} · {len(rows)} result rows</p>",
        _intro(exp),
        "<h2>Results</h2>",
        "<p>Test accuracy, mean ± std over seed subsets (catK) or seeds (single) and draws of the "
        "target training examples. <b>transfer</b>: the probe is fit on the target's own training "
        "data (n per class); <b>robustness</b>: fit on the source task, tested on the shifted test set. "
        "Regularization is chosen on validation data carved from the probe's training data.</p>",
        _table_html(comp),
        "<h2>Accuracy against K</h2><div class=figs>",
        *[
            f"<img alt='{html.escape(p.stem)}' src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
            for p in figs
        ],
        "</div>",
        _members_html(store),
        *[s(store) for s in sections()],
        "<h2>Reproduce</h2><p>Config (resolved) and environment:</p>",
        f"<details><summary>config.yaml</summary><pre>{html.escape((store.root / 'config.yaml').read_text())}</pre></details>",
        f"<details><summary>env.json</summary><pre>{html.escape(json.dumps(env, indent=2))}</pre></details>",
    ]
    page = f"<!doctype html><html><head><meta charset=utf-8><title>richrep · {html.escape(exp.name)}</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    write_atomic(store.report, page.encode())
    log(f"report: {store.report}")


def _intro(exp: Any) -> str:
    src = ", ".join(s.label() for s in exp.data.source) or "all classes"
    seeds = exp.training.seed_list
    return (
        f"<p>{len(seeds)} seeds of <code>{html.escape(exp.model.encoder)}</code> (width {exp.model.width}) "
        f"trained on <code>{html.escape(exp.data.dataset)}</code> [{html.escape(src)}] for "
        f"{exp.training.epochs} epochs ({exp.training.optimizer}, lr {exp.training.lr}, weight decay "
        f"{exp.training.weight_decay}). <b>catK</b> concatenates K seeds' penultimate features "
        f"(Zhang &amp; Bottou, ICML 2023); <b>wideK</b> is one network with as many encoder parameters as catK; "
        f"<b>wide_dimK</b> one network with catK's feature dimension; <b>jointK</b> K towers trained "
        f"together with one head; <b>input</b> the raw input; <b>randomK</b> catK of the untrained encoders.</p>"
    )


def _table_html(c: Comparison) -> str:
    head = ["target", *c.columns]
    if c.cat_max:
        head.append(f"{c.cat_max} − single")
        if c.wide_col:
            head.append(f"{c.cat_max} − {c.wide_col}")
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for (label, cells), (_, gs, gw) in zip(c.rows, c.gains, strict=True):
        best = max((cells[col].mean for col in c.columns if col in cells), default=None)
        tds = [f"<td>{html.escape(label)}</td>"]
        for col in c.columns:
            cell = cells.get(col)
            cls = " class=best" if cell and cell.mean == best else ""
            tds.append(f"<td{cls}>{html.escape(cell.text()) if cell else ''}</td>")
        for g in ([gs] + ([gw] if c.wide_col else [])) if c.cat_max else []:
            cls = "" if g is None else (" class=pos" if g > 0 else " class=neg")
            tds.append(f"<td{cls}>{'' if g is None else f'{g:+.3f}'}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append(
        "<tr><td class=muted>feature dim / encoder params</td>"
        + "".join(
            f"<td class=muted>{c.meta[col]['dim']} / {c.meta[col]['params']:,}</td>"
            for col in c.columns
        )
        + "</tr>"
    )
    out.append("</table>")
    return "".join(out)


def _members_html(store: RunStore) -> str:
    rows = []
    for side in sorted(store.checkpoints.glob("*.json")):
        if side.name.endswith(".partial.json"):
            continue
        meta = read_json(side)
        if side.name.endswith(".failed.json"):
            m = meta["member"]
            rows.append(
                f"<tr><td>{m['name']}</td><td>{m['seed']}</td><td colspan=5 class=neg>failed: {html.escape(meta['error'])}</td></tr>"
            )
            continue
        m = meta["member"]
        rows.append(
            f"<tr><td>{m['name']}</td><td>{m['seed']}</td><td>{meta['encoder_params']:,}</td><td>{meta['feature_dim']}</td>"
            f"<td>{meta['val_acc']:.3f}</td><td>{meta['train_seconds']:.1f}</td><td>{meta['precision']} / {meta['device']}</td></tr>"
        )
    return (
        "<h2>Trained members</h2><table><tr><th>member</th><th>seed</th><th>encoder params</th>"
        "<th>feature dim</th><th>source val acc</th><th>train s</th><th>precision / device</th></tr>"
        + "".join(rows)
        + "</table>"
    )
