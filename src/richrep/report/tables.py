"""The one comparison table (the CLI, the HTML report and the runs index use it): rows are
targets (suite entry × protocol × size …), columns representations, one table per metric.

A cell is the mean of its values (seeds or seed subsets × draws of the probe's training
examples; few-shot: episodes, each averaged over seeds) with its n and "±" the half-width of its
95% Student-t interval. One value, or values all equal, give no interval (never "± 0"). The
interval of a metric bounded in [0, 1] (accuracy-like) is clipped to [0, 1] where it is shown
as bounds. Gains (catK − single for every K, catK − wideK and catK − distillK wherever that
baseline has the same K) carry a 95% interval: paired over draws (or episodes) when both sides share several, else Welch. Nothing
is called best, and no gain is coloured, without an interval that clears the others or 0.

Intervals and differences are views computed here from the rows, never rows themselves: the
pseudo-metrics older runs stored (``accuracy_ci95``, ``diff_vs_single``) are ignored
(:func:`derived_note` says so).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from richrep.report.cells import UNIT, Cell, Gain, bounds
from richrep.report.display import Display, kind_display
from richrep.report.text import strip_control
from richrep.results.rows import count
from richrep.results.stats import aggregate, paired_difference, welch_interval

TARGET_KEYS = ("entry", "protocol", "shift", "size", "group", "environment", "variant")
CELL_KEYS = (*TARGET_KEYS, "column", "representation", "k")
GAIN_AGAINST = ("single", "wide", "distill")  # catK − these (the baselines of the same K)
PRIMARY_METRIC = "accuracy"
DERIVED = ("accuracy_ci95", "diff_vs_single")  # views older few-shot runs stored as metrics


def derived_note(rows: Iterable[Any]) -> str | None:
    """What is ignored of rows holding an interval or a difference as a metric (older runs)."""
    names = [r.get("metric") for r in rows if r.get("metric") in DERIVED]
    if not names:
        return None
    kinds = ", ".join(dict.fromkeys(names))
    return (
        f"ignored {len(names)} result rows of {kinds}: an interval or a difference stored as a "
        "metric by an older richrep; the tables compute them from the per-episode accuracy rows"
    )


@dataclass(frozen=True)
class Target:
    """What a table row measures."""

    entry: str
    protocol: str
    shift: str = "none"
    size: int | str = "all"
    group: str | None = None
    environment: str | None = None
    variant: str | None = None

    @property
    def size_text(self) -> str:
        return "all" if str(self.size) == "all" else f"{self.size}/class"

    @property
    def parts(self) -> list[str]:
        out = [self.entry, self.protocol, self.size_text]
        if self.variant is not None:
            out.append(self.variant)
        if self.group is not None:
            out.append(f"group {self.group}")
        if self.environment is not None:
            out.append(f"env {self.environment}")
        return out

    @property
    def label(self) -> str:
        return " · ".join(self.parts)


@dataclass(frozen=True)
class GainColumn:
    name: str  # e.g. "cat5 − wide5"
    left: str  # column
    right: str  # column
    k: int = 0  # the K of its catK


@dataclass(frozen=True)
class Column:
    name: str  # e.g. cat5
    kind: str
    k: int
    dim: int | None
    params: int | None

    @property
    def display(self) -> Display:
        return kind_display(self.kind)


@dataclass
class TableRow:
    target: Target
    cells: dict[str, Cell]
    gains: dict[str, Gain | None]  # gain column name -> gain

    @property
    def label(self) -> str:
        return self.target.label


@dataclass
class Comparison:
    """Targets × representation columns for one metric, with catK's gains."""

    metric: str
    columns: list[str]
    column_info: dict[str, Column]
    rows: list[TableRow]
    gain_columns: list[GainColumn]  # every K's, K ascending
    k: int | None  # the headline K: the largest with both cat and wide (else the largest cat)

    @property
    def headline_gains(self) -> list[GainColumn]:
        """The gain columns of the headline K (catK − single / wideK / distillK)."""
        return [g for g in self.gain_columns if g.k == self.k]

    def top(self, row: TableRow) -> str | None:
        """The column of the highest mean in ``row``."""
        cells = {c: x for c, x in row.cells.items() if math.isfinite(x.mean)}
        return max(cells, key=lambda c: cells[c].mean) if cells else None

    def tied(self, row: TableRow) -> set[str]:
        """Columns whose 95% interval overlaps the top one's (the top included); a column with
        one value counts as its point. Empty when the row is empty."""
        top = self.top(row)
        if top is None:
            return set()
        t = row.cells[top]
        return {
            c
            for c, x in row.cells.items()
            if c == top or (math.isfinite(x.mean) and x.low <= t.high and t.low <= x.high)
        }

    def best(self, row: TableRow) -> set[str]:
        """``{column}`` of the highest mean when it stands clear of every other column's 95%
        interval (and has one itself); empty when the top is tied within noise."""
        top = self.top(row)
        if top is None or row.cells[top].ci95 is None:
            return set()
        return {top} if self.tied(row) == {top} else set()

    def headline(self) -> dict[str, dict[str, Any]]:
        """Plain, JSON-ready summary per target: the headline catK, single and its gains with
        their intervals."""
        out = {}
        for r in self.rows:
            d: dict[str, Any] = {"metric": self.metric, "k": self.k}
            for g in self.headline_gains:
                cell = r.cells.get(g.left)
                d.setdefault("cat", cell.mean if cell else None)
                base = r.cells.get(g.right)
                d[g.right] = base.mean if base else None
                gain = r.gains.get(g.name)
                d[f"gain_{column_kind(self, g.right)}"] = (
                    None
                    if gain is None
                    else {
                        "diff": gain.diff,
                        "ci95": gain.ci95,
                        "n": gain.n,
                        "method": gain.method,
                        "significant": gain.significant,
                    }
                )
            out[r.label] = d
        return out


def column_kind(comp: Comparison, column: str) -> str:
    info = comp.column_info.get(column)
    return info.kind if info else column


def metrics(rows: Iterable[Any]) -> list[str]:
    """The metrics present, accuracy first, then in order of appearance (not the intervals and
    differences older runs stored as metrics: :data:`DERIVED`)."""
    seen = list(dict.fromkeys(r.get("metric", PRIMARY_METRIC) for r in rows))
    seen = [m for m in seen if m not in DERIVED]
    return sorted(seen, key=lambda m: (m != PRIMARY_METRIC, seen.index(m)))


def size_rank(size: Any) -> float:
    return math.inf if str(size) == "all" else float(size) if _isnum(size) else math.inf - 1


def _isnum(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def build_comparison(
    rows: Sequence[Any], entries: Sequence[str] | None = None, metric: str = PRIMARY_METRIC
) -> Comparison:
    """Aggregate result rows (``Row`` objects or dicts) of ``metric`` into the table.

    ``entries`` orders the targets (the suite's order); entries it does not name follow in
    order of appearance. Rows of another metric are ignored, and so is a metric of
    :data:`DERIVED` (an interval or a difference is computed here, not read)."""
    agg = aggregate(rows, CELL_KEYS, metric=metric) if metric not in DERIVED else []
    info: dict[str, Column] = {}
    table: dict[Target, dict[str, Cell]] = {}
    for a in agg:
        col = str(a["column"])
        info.setdefault(
            col, Column(col, str(a["representation"]), int(a["k"] or 0), a["dim"], a["params"])
        )
        target = Target(
            str(a["entry"]),
            str(a["protocol"]),
            str(a["shift"] if a["shift"] is not None else "none"),
            a["size"] if a["size"] is not None else "all",
            a["group"],
            a["environment"],
            a["variant"],
        )
        ci = a["ci95"] if a["n"] > 1 and math.isfinite(a["ci95"]) else None
        table.setdefault(target, {})[col] = Cell(
            a["mean"],
            a["std"],
            a["n"],
            ci,
            a["dim"],
            a["params"],
            a["by_draw"],
            a["unit"],
            bounds(metric),
        )
    columns = sorted(info, key=lambda c: (info[c].display.order, info[c].k, c))
    order = list(entries or [])
    order += [e for e in dict.fromkeys(str(r.get("entry")) for r in rows) if e not in order]
    protos = list(dict.fromkeys(t.protocol for t in table))
    variants = list(dict.fromkeys(str(r.get("variant")) for r in rows))  # the protocol's order
    targets = sorted(
        table,
        key=lambda t: (
            order.index(t.entry) if t.entry in order else len(order),
            protos.index(t.protocol),
            t.shift,
            size_rank(t.size),
            str(t.size),
            variants.index(str(t.variant)) if str(t.variant) in variants else 0,
            t.group or "",
            t.environment or "",
        ),
    )
    k, gain_columns = _gain_columns(info)
    out = []
    for t in targets:
        cells = table[t]
        gains = {g.name: gain(cells.get(g.left), cells.get(g.right), g) for g in gain_columns}
        out.append(TableRow(t, cells, gains))
    return Comparison(metric, columns, info, out, gain_columns, k)


def _gain_columns(info: dict[str, Column]) -> tuple[int | None, list[GainColumn]]:
    """catK − single for every K of cat, catK − wideK and catK − distillK wherever that
    baseline has the same K (K ascending); and the headline K: the largest with both cat and
    wide, else the largest cat K."""

    def find(kind: str, k: int | None) -> str | None:
        hits = [c for c in info.values() if c.kind == kind and (k is None or c.k == k)]
        return hits[0].name if hits else None

    cat_ks = sorted({c.k for c in info.values() if c.kind == "cat"})
    if not cat_ks:
        return None, []
    both = [k for k in cat_ks if find("wide", k)]
    out = []
    for k in cat_ks:
        cat = find("cat", k)
        assert cat is not None
        for kind in GAIN_AGAINST:
            other = find(kind, None if kind == "single" else k)
            if other is not None:
                out.append(GainColumn(f"{cat} − {other}", cat, other, k))
    return (both or cat_ks)[-1], out


def gain(a: Cell | None, b: Cell | None, g: GainColumn) -> Gain | None:
    """``a − b`` with its 95% interval: paired over shared draws when both sides have several
    (none when the difference is the same on every draw), otherwise Welch from the cells' std
    and n; no interval when neither side has two distinct values."""
    if a is None or b is None:
        return None
    p = None
    if len(a.by_draw) > 1 and len(b.by_draw) > 1:
        p = paired_difference(a.by_draw, b.by_draw)
    if p is not None:
        ci = p["ci95"] if math.isfinite(p["ci95"]) else None
        over = "episodes" if a.unit == "episodes" else "draws"
        return Gain(g.left, g.right, p["mean"], ci, p["n"], "paired", over)
    w = welch_interval(a.mean, a.std, a.n, b.mean, b.std, b.n)
    if w is None:
        return Gain(g.left, g.right, a.mean - b.mean, None, min(a.n, b.n), "none")
    return Gain(g.left, g.right, w["mean"], w["ci95"], w["n"], "welch")


# ---------------------------------------------------------------------------- plain text


def table_text(s: Any) -> str:
    """Text of an untrusted value on one line, without terminal escape sequences, control
    characters or bidirectional overrides."""
    return strip_control(re.sub(r"[\t\n\r]+", " ", str(s)))


def caption(comp: Comparison) -> str:
    """What the numbers of a table are: what "±" means, what n counts, how bounds clip."""
    units = set(c.unit for r in comp.rows for c in r.cells.values()) or {"values"}
    n = " or ".join(UNIT.get(u, u) for u in sorted(units, reverse=True))
    b = bounds(comp.metric)
    clip = (
        f"; an interval that would leave [{b[0]:g}, {b[1]:g}] is clipped and shown as [low, high]"
        if b
        else ""
    )
    return (
        f"test {comp.metric}: mean ± half-width of the 95% Student-t interval over what varied "
        f"(n = {n}){clip}; no interval from one value or equal values; gains ± their 95% "
        "interval, paired over shared draws or episodes where possible, else Welch"
    )


def _md(s: Any) -> str:
    return table_text(s).replace("\\", "\\\\").replace("|", "\\|")


def to_markdown(comp: Comparison, digits: int = 3, columns: Sequence[str] | None = None) -> str:
    """The table in GitHub markdown: **bold** a best standing clear of noise and a gain whose
    interval excludes 0. ``columns`` (names of columns and gain columns) narrows it."""
    if not comp.rows:
        return f"_no {_md(comp.metric)} result rows_"
    shown, gains = list(comp.columns), list(comp.gain_columns)
    if columns is not None:
        by_name = {g.name: g for g in comp.gain_columns}
        shown = [c for c in columns if c in comp.column_info]
        gains = [by_name[c] for c in columns if c in by_name]
    head = ["target", *shown, *(g.name for g in gains)]
    lines = [
        f"_{_md(caption(comp))}_",
        "",
        "| " + " | ".join(_md(h) for h in head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for r in comp.rows:
        best = comp.best(r)
        vals = []
        for c in shown:
            cell = r.cells.get(c)
            text = cell.text(digits) if cell else ""
            vals.append(f"**{text}**" if c in best else text)
        for g in gains:
            x = r.gains.get(g.name)
            text = "" if x is None else x.text(digits)
            vals.append(f"**{text}**" if x is not None and x.significant else text)
        lines.append("| " + " | ".join([_md(r.label), *vals]) + " |")
    dims = ["dim / params"]
    for c in shown:
        i = comp.column_info[c]
        dims.append(f"{i.dim} / {count(i.params)}")
    dims += [""] * len(gains)
    lines.append("| " + " | ".join(dims) + " |")
    return "\n".join(lines)


def to_csv(rows: Iterable[Any]) -> str:
    """The tidy rows as CSV (one line per row; ``extra`` keys flattened)."""
    dicts = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in rows]
    for d in dicts:
        extra = d.pop("extra", None) or {}
        for k, v in extra.items():
            d.setdefault(k, v)
        if isinstance(d.get("seeds"), list | tuple):
            d["seeds"] = " ".join(str(s) for s in d["seeds"])
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for d in dicts:
        w.writerow({k: _csv_safe(d.get(k)) for k in keys})
    return buf.getvalue()


def _csv_safe(v: Any) -> Any:
    """Text stripped of control characters and terminal escapes (structured values as JSON),
    and spreadsheet formulas neutralized (``=``, ``+``, ``-``, ``@`` first)."""
    if isinstance(v, dict | list | tuple):
        v = json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, str):
        v = table_text(v)
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@") and not _isnum(v):
        return "'" + v
    return v
