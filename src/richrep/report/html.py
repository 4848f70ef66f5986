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
from richrep.report.ood_tables import (
    RULES,
    ood_entries,
    ood_environments,
    ood_summary_lines,
    ood_table,
    ood_view,
    table_rows,
)
from richrep.report.seed_figures import seed_context, seed_plots
from richrep.report.summary import summary_lines
from richrep.report.tables import (
    UNIT,
    Comparison,
    bounds,
    build_comparison,
    caption,
    count,
    derived_note,
    kind_display,
    metrics,
)
from richrep.results import Row
from richrep.store import RunStore, write_atomic

TEMPLATES = Path(__file__).parent / "templates"


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


def table_view(comp: Comparison, digits: int = 3) -> dict[str, Any]:
    """The comparison as plain strings and CSS classes for the template."""
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
            if x is None:
                cells.append({"text": "", "sub": "", "title": "", "cls": ""})
                continue
            cls = "best" if c in best else ("tie" if not best and c in tied else "")
            title = (
                f"mean {x.mean:.{digits + 1}f}, std {x.std:.{digits + 1}f}, "
                f"n={x.n} {UNIT.get(x.unit, x.unit)}; {x.ci_text(digits)}"
            )
            if cls == "tie":
                title += "; within noise of the highest mean"
            sub = x.bracket(digits) if x.ci95 is not None else ""  # the text says "no interval"
            cells.append({"text": x.text(digits), "sub": sub, "title": title, "cls": cls})
        for g in comp.gain_columns:
            x = r.gains.get(g.name)
            if x is None:
                cells.append({"text": "", "sub": "", "title": "", "cls": ""})
                continue
            cls = ("pos" if x.diff > 0 else "neg") if x.significant else "ns"
            sub = f"[{x.low:+.{digits}f}, {x.high:+.{digits}f}]" if x.ci95 is not None else ""
            cells.append(
                {"text": x.text(digits), "sub": sub, "title": x.ci_text(digits), "cls": cls}
            )
        rows.append({"label": r.label, "cells": cells})
    dims = [
        f"{comp.column_info[c].dim} / {count(comp.column_info[c].params)}" for c in comp.columns
    ]
    return {
        "metric": comp.metric,
        "caption": caption(comp),
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


def _figure(path: Path, caption_text: str) -> dict[str, str]:
    return {"src": _data_uri(path), "alt": caption_text, "caption": caption_text}


def _ood_section(data: ReportData, e: str, plots_dir: Path) -> dict[str, Any]:
    """The OOD section of entry ``e``: its tables and a figure per selection rule."""
    view = ood_view(ood_table(data.rows, e), ood_table(data.rows, e, "accuracy"))
    view["entry"] = e
    view["figures"] = []
    for rule in RULES:
        path = ood_environments(data.rows, e, plots_dir / f"ood-{slug(e)}-{rule}.png", rule)
        if path is not None:
            view["figures"].append(
                _figure(
                    path,
                    f"{e}: accuracy per test environment ({rule} selection; mean, bars: "
                    "95% interval over seeds × restarts, clipped to [0, 1])",
                )
            )
    return view


def render_html(data: ReportData, out_dir: Path) -> str:
    """Draw the plots under ``out_dir/plots`` and return the page."""
    plots_dir = RunStore(Path(out_dir)).plots
    shown = table_rows(data.rows)  # an ood entry's accuracy: its worst environment
    comps = [build_comparison(shown, data.entries, m) for m in metrics(shown)]
    comps = [c for c in comps if c.rows]
    entries = list(data.entries) + [
        e for e in dict.fromkeys(r.entry for r in data.rows) if e not in data.entries
    ]
    figures = []
    for comp in comps:
        for e in entries:
            if not any(r.target.entry == e for r in comp.rows):
                continue
            if not PROTOCOLS.meta(data.entry_protocols.get(e, ""), "vs_k", True):
                continue
            path = plots_dir / f"{slug(comp.metric)}_vs_k-{slug(e)}.png"
            P.metric_vs_k(
                data.rows,
                e,
                path,
                metric=comp.metric,
                protocol=data.entry_protocols.get(e),
                chance=_float(data.chance.get(e)),
            )
            figures.append(_figure(path, f"{comp.metric} against K: {e} ({_bars(comp)})"))
    for e in entries:  # a protocol's own figure (report.figures.protocols.FIGURES)
        protocol = data.entry_protocols.get(e, "")
        if protocol in FIGURES:
            path = FIGURES.build(protocol, data.rows, e, plots_dir / f"{slug(e)}.png")
            if path is not None:
                figures.append(_figure(path, e))
    oods = ood_entries(data.rows)
    ood = [_ood_section(data, e, plots_dir) for e in oods]
    curves = P.training_curves(data.members, plots_dir / "training_curves.png")
    seeds = None
    if data.analysis:
        seeds = seed_context(data.analysis)
        seeds["figures"] = [
            _figure(p, p.stem.replace("_", " ")) for p in seed_plots(data.analysis, plots_dir)
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
        "tables": [table_view(c) for c in comps],
        "figures": figures,
        "ood": ood,
        "members": [_member_view(m) for m in data.members],
        "curves": _figure(curves, "training curves") if curves else None,
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
    b = bounds(comp.metric)
    clip = f", clipped to [{b[0]:g}, {b[1]:g}]" if b else ""
    return f"mean; bars: 95% interval{clip}; n in the {comp.metric} table"


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
        "val_acc": m.get("val_acc"),
        "seconds": m.get("train_seconds"),
        "where": " / ".join(str(x) for x in sd if x is not None),
        "epochs": len(m.get("history") or []) if isinstance(m.get("history"), list) else 0,
    }


def comparison_html(comp: Comparison) -> str:
    """One comparison table as an HTML fragment (escaped), for pages other than the report."""
    return environment().get_template("comparison.html.j2").render(t=table_view(comp))
