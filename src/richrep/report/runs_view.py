"""``richrep runs`` in a terminal of any width: per run its full name (folded, never cut), its
state (complete, running, failed, stopped, with the stage reached or why it failed) and
settings, then catK's level and gains per target from the runs index's rows (plain dicts).

Every untrusted string goes in as ``rich.text.Text`` with control characters stripped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from richrep.report.tables import table_text

STYLE = {"complete": "green", "running": "yellow", "stopped": "yellow", "failed": "red"}
GAINS = ("single", "wide", "distill")  # the index's gain_<kind> keys, in this order


def render_runs(rows: Sequence[Mapping[str, Any]], title: str, target: str | None = None) -> Group:
    """Each run of ``rows`` (:func:`richrep.index.list_runs`), its targets narrowed to those
    containing ``target``."""
    parts: list = [Text(table_text(title), style="bold")]
    if not rows:
        parts.append(Text("no runs", style="dim"))
    for r in rows:
        parts.append(Text(""))
        parts.append(Text(table_text(r.get("run_id") or "?"), style="bold", overflow="fold"))
        parts.append(Padding(_state(r), (0, 0, 0, 2), expand=False))
        table = _targets(r.get("headline") or {}, target)
        if table is not None:
            parts.append(Padding(table, (0, 0, 0, 2), expand=False))
    return Group(*parts)


def _state(r: Mapping[str, Any]) -> Text:
    """``complete 2024-01-02T03:04:05 · mnist1d / mlp · 5 seeds · 30 epochs``, ``failed in
    training, 2 members trained: why · …``, or why the run cannot be read."""
    if r.get("error"):
        return Text(table_text(f"broken: {r['error']}"), style="red")
    state = str(r.get("state") or "unknown")
    out = Text(table_text(state), style=STYLE.get(state, ""))
    detail = r.get("detail") or (r.get("finished") if state == "complete" else "")
    if detail:
        out.append(table_text(f" {detail}"))
    settings = [f"{r.get('dataset')} / {r.get('encoder')}"]
    settings += [f"{r.get('seeds')} seeds", f"{r.get('epochs')} epochs"]
    out.append(table_text(" · " + " · ".join(settings)), style="dim")
    return out


def _targets(headline: Mapping[str, Any], target: str | None) -> Table | None:
    """catK and its gains per target (significant gains in bold); None without a target."""
    items = [(label, h) for label, h in headline.items() if not target or target in label]
    if not items:
        return None
    k = next((h.get("k") for _, h in items if h.get("k")), None)
    kinds = [g for g in GAINS if any(h.get(f"gain_{g}") is not None for _, h in items)]
    suffix = "" if k is None else str(k)
    heads = ["single" if g == "single" else f"{g}{suffix}" for g in kinds]
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    t.add_column(Text("target"), overflow="fold")
    t.add_column(Text(f"cat{suffix or 'K'}"), justify="right", no_wrap=True)
    for h in heads:
        t.add_column(Text(f"− {table_text(h)}"), justify="right", no_wrap=True)
    for label, h in items:
        cells = [Text("" if h.get("cat") is None else f"{h['cat']:.3f}")]
        sig = h.get("significant") or {}
        for g in kinds:
            v = h.get(f"gain_{g}")
            style = "bold" if sig.get(f"gain_{g}") else ""
            cells.append(Text("" if v is None else f"{v:+.3f}", style=style))
        t.add_row(Text(table_text(label)), *cells)
    return t
