"""The self-contained HTML report, rendered from plain data (``ReportData``) with Jinja2,
autoescaped: every string from a run (entry, member and measure names, errors, config) is
escaped. Figures are written under ``plots/`` and embedded as data URIs; the page is written
atomically."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from richrep.plugins import PROTOCOLS
from richrep.report import plots as P
from richrep.report.figures.protocols import FIGURES
from richrep.report.headline import EMPTY, cell_view, gain_view, headline_view, unit_of
from richrep.report.ood_tables import (
    RULES,
    ood_entries,
    ood_summary_lines,
    ood_table,
    ood_view,
    save_ood_environments,
    table_rows,
)
from richrep.report.seed_figures import seed_context, seed_plots
from richrep.report.summary import summary_lines
from richrep.report.tables import (
    Comparison,
    bounds,
    build_comparison,
    caption,
    count,
    derived_note,
    kind_display,
    metrics,
)
from richrep.report.vs_k import lead, vs_k
from richrep.results import Row
from richrep.store import RunStore, write_atomic

TEMPLATES = Path(__file__).parent / "templates"
CURVES_TEXT = "Training loss and accuracy (%) per epoch, one line per member."


@dataclass
class ReportData:
    """Everything the report shows, gathered by the report stage (no run folder needed)."""

    name: str
    run_id: str
    rows: list[Row]
    entries: list[str] = field(default_factory=list)  # suite order
    entry_protocols: dict[str, str] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)  # entry -> 1 / classes
    intro: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)
    analysis: dict[str, Any] | None = None  # the seed-analysis summary
    config_text: str = ""
    env: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    advice: list[dict[str, Any]] = field(default_factory=list)  # "What to use": verdict, lines


def environment() -> Environment:
    """The Jinja2 environment of the report: autoescape on, undefined names are errors."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = num
    env.filters["count"] = lambda n: count(n) if isinstance(n, int) else num(n)
    return env


def num(v: Any, digits: int = 3, signed: bool = False) -> str:
    """A number with ``digits`` decimals; anything else as text (escaped by the template)."""
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, int):
        return f"{v:+,}" if signed else f"{v:,}"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def slug(s: str) -> str:
    """A file-name-safe form of ``s`` (a short hash keeps distinct names distinct)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("._")[:48] or "x"
    if safe == str(s):
        return safe
    return f"{safe}-{hashlib.sha1(str(s).encode()).hexdigest()[:8]}"


def table_view(comp: Comparison, percent: bool = False) -> dict[str, Any]:
    """The comparison as plain strings and CSS classes for the template; ``percent``: a metric
    bounded in [0, 1] in percent and its gains in points (the report's one unit)."""
    scale, d, unit = unit_of(comp.metric) if percent else (1.0, 3, "")
    head = [
        {"text": c, "title": kind_display(comp.column_info[c].kind).description or ""}
        for c in comp.columns
    ]
    head += [
        {"text": g.name, "title": "± 95% interval half-width; coloured only when it excludes 0"}
        for g in comp.gain_columns
    ]
    rows = []
    for r in comp.rows:
        best, tied = comp.best(r), comp.tied(r)
        top = comp.top(r)
        if len(tied) < 2 or top is None or r.cells[top].ci95 is None:
            tied = set()  # "within noise" needs the top's interval
        cells = []
        for c in comp.columns:
            x = r.cells.get(c)
            cls = "best" if c in best else ("tie" if not best and c in tied else "")
            cells.append(dict(EMPTY) if x is None else cell_view(x, scale, d, cls))
        cells += [gain_view(r.gains.get(g.name), scale, d) for g in comp.gain_columns]
        rows.append({"label": r.label, "cells": cells})
    dims = [
        f"{comp.column_info[c].dim} / {count(comp.column_info[c].params)}" for c in comp.columns
    ]
    cap = caption(comp)
    if unit:
        cap = cap.replace("[0, 1]", "[0, 100]")
        cap = f"{comp.metric} in %, gains in percentage points; {cap}"
    return {
        "metric": comp.metric,
        "caption": cap,
        "head": head,
        "rows": rows,
        "dims": dims + [""] * len(comp.gain_columns),
    }


def _intro_sentence(intro: dict[str, Any]) -> str:
    g = intro.get
    parts = []
    if g("seeds") is not None:
        n = len(g("seeds")) if isinstance(g("seeds"), list | tuple) else g("seeds")
        parts.append(f"{n} seeds of")
    if g("encoder"):
        parts.append(
            str(g("encoder")) + (f" (width {g('width')})" if g("width") is not None else "")
        )
    if g("dataset"):
        src = f" [{g('source')}]" if g("source") else ""
        parts.append(f"trained on {g('dataset')}{src}")
    if g("epochs") is not None:
        parts.append(f"for {g('epochs')} epochs")
    opt = ", ".join(
        f"{label} {g(k)}" if label else str(g(k))
        for k, label in (("optimizer", ""), ("lr", "lr"), ("weight_decay", "weight decay"))
        if g(k) is not None
    )
    if opt:
        parts.append(f"({opt})")
    return (" ".join(parts) + ".") if parts else ""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path, caption_text: str, root: Path | None = None) -> dict[str, Any]:
    """A figure for the template: the PNG inline, links to its SVG and PDF beside it."""
    links = []
    if root is not None:
        for fmt in P.FORMATS[1:]:
            other = path.with_suffix(f".{fmt}")
            if other.exists():
                links.append({"fmt": fmt.upper(), "href": other.relative_to(root).as_posix()})
    return {"src": _data_uri(path), "alt": caption_text, "caption": caption_text, "links": links}


def _vs_k_figures(
    data: ReportData, comps: list[Comparison], entries: list[str], out: Path
) -> list[dict[str, Any]]:
    """A metric against K per entry (each metric with a table), then each protocol's own."""
    plots_dir = RunStore(out).plots
    figures = []
    for comp in comps:
        for e in entries:
            if not any(r.target.entry == e for r in comp.rows):
                continue
            if not PROTOCOLS.meta(data.entry_protocols.get(e, ""), "vs_k", True):
                continue
            path = plots_dir / f"{slug(comp.metric)}_vs_k-{slug(e)}.png"
            ax = vs_k(
                data.rows,
                e,
                metric=comp.metric,
                protocol=data.entry_protocols.get(e),
                chance=_float(data.chance.get(e)),
            )
            P.save(ax.figure, path)
            figures.append(_figure(path, f"{comp.metric} against K: {e} ({_bars(comp)})", out))
    for e in entries:  # a protocol's own figure (report.figures.protocols.FIGURES)
        protocol = data.entry_protocols.get(e, "")
        if protocol in FIGURES:
            fig = FIGURES.build(protocol, data.rows, e)
            if fig is not None:
                path = plots_dir / f"{slug(e)}.png"
                P.save(fig, path)
                figures.append(_figure(path, e, out))
    return figures


def _lead(data: ReportData, shown: list[Any], comps: list[Comparison], out: Path) -> Any:
    """The lead figure and the headline table of the primary metric (None without one)."""
    if not comps:
        return None
    comp = comps[0]
    skip = ood_entries(data.rows)
    table = headline_view(comp, data.entries, data.entry_protocols, skip=skip)
    fig = lead(
        [r for r in shown if r.get("entry") not in skip],
        data.entries,
        metric=comp.metric,
        protocols=data.entry_protocols,
    )
    if fig is None and table is None:
        return None
    figure = None
    if fig is not None:
        path = RunStore(out).plots / f"lead-{slug(comp.metric)}.png"
        P.save(fig, path)
        figure = _figure(path, f"{comp.metric} against K per target", out)
    return {"figure": figure, "table": table, "metric": comp.metric}


def render_html(data: ReportData, out_dir: Path) -> str:
    """Draw the plots under ``out_dir/plots`` and return the page."""
    out_dir = Path(out_dir)
    plots_dir = RunStore(out_dir).plots
    shown = table_rows(data.rows)  # an ood entry's accuracy: its worst environment
    comps = [build_comparison(shown, data.entries, m) for m in metrics(shown)]
    comps = [c for c in comps if c.rows]
    entries = list(data.entries) + [
        e for e in dict.fromkeys(r.entry for r in data.rows) if e not in data.entries
    ]
    glance = _lead(data, shown, comps, out_dir)
    figures = _vs_k_figures(data, comps, entries, out_dir)
    ood = []
    oods = ood_entries(data.rows)
    for e in oods:
        view = ood_view(ood_table(data.rows, e), ood_table(data.rows, e, "accuracy"))
        view["entry"] = e
        view["figures"] = []
        for rule in RULES:
            path = save_ood_environments(
                data.rows, e, plots_dir / f"ood-{slug(e)}-{rule}.png", rule
            )
            if path is not None:
                view["figures"].append(
                    _figure(
                        path,
                        f"{e}: accuracy per test environment ({rule} selection; mean, bars: "
                        "95% interval over seeds × restarts, clipped to [0, 1])",
                        out_dir,
                    )
                )
        ood.append(view)
    curves = P.save_training_curves(data.members, plots_dir / "training_curves.png")
    seeds = None
    if data.analysis:
        seeds = seed_context(data.analysis)
        seeds["figures"] = [
            _figure(p, p.stem.replace("_", " "), out_dir)
            for p in seed_plots(data.analysis, plots_dir)
        ]
    kinds = list(
        dict.fromkeys(i.kind for c in comps for i in (c.column_info[x] for x in c.columns))
    )
    summary = []
    if comps:
        summary = summary_lines(comps[0], data.entries, data.entry_protocols, skip=oods)
    note = derived_note(data.rows)
    context = {
        "data": data,
        "warnings": [*data.warnings, *([note] if note else [])],
        "written": dt.datetime.now().isoformat(timespec="seconds"),
        "glance": glance,
        "summary": summary + ood_summary_lines(data.rows, data.entries),
        "summary_metric": comps[0].metric if comps else "",
        "intro": _intro_sentence(data.intro),
        "intro_items": [(str(k), _plain(v)) for k, v in data.intro.items()],
        "kinds": [
            {
                "label": kind_display(k).label.replace("{k}", "K"),
                "text": kind_display(k).description,
            }
            for k in kinds
        ],
        "tables": [table_view(c, percent=True) for c in comps],
        "percent": any(unit_of(c.metric)[2] for c in comps) or bool(ood),
        "figures": figures,
        "ood": ood,
        "members": [_member_view(m) for m in data.members],
        "curves": _figure(curves, CURVES_TEXT, out_dir) if curves else None,
        "seeds": seeds,
        "env_text": json.dumps(data.env, indent=2, sort_keys=True, default=str),
    }
    return environment().get_template("report.html.j2").render(**context)


def write_report(data: ReportData, out_dir: Path) -> Path:
    """Write the plots under ``out_dir/plots/`` and ``out_dir/report.html`` (atomically)."""
    out_dir = Path(out_dir)
    page = render_html(data, out_dir)
    path = RunStore(out_dir).report
    write_atomic(path, page.encode("utf-8"))
    return path


def _bars(comp: Comparison) -> str:
    clip = " in %, clipped to [0, 100]" if bounds(comp.metric) else ""
    return f"mean; band and bars: 95% interval{clip}; n in the {comp.metric} table"


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _plain(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


def _member_view(m: dict[str, Any]) -> dict[str, Any]:
    failed = str(m.get("status", "finished")) != "finished"
    sd = m.get("precision"), m.get("device")
    return {
        "name": m.get("name", "?"),
        "kind": m.get("kind", ""),
        "k": m.get("k", ""),
        "seed": m.get("seed", ""),
        "status": m.get("status", "finished"),
        "failed": failed,
        "error": m.get("error") or "",
        "params": m.get("encoder_params"),
        "dim": m.get("feature_dim"),
        "val_acc": 100 * v if isinstance(v := m.get("val_acc"), int | float) else v,
        "seconds": m.get("train_seconds"),
        "where": " / ".join(str(x) for x in sd if x is not None),
        "epochs": len(m.get("history") or []) if isinstance(m.get("history"), list) else 0,
    }


def comparison_html(comp: Comparison) -> str:
    """One comparison table as an HTML fragment (escaped), for pages other than the report."""
    return environment().get_template("comparison.html.j2").render(t=table_view(comp))
