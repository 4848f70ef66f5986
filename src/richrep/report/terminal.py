"""The comparison table in a terminal of any width: one table when it fits, else the columns
split over several tables (each repeating the target), else one small table per target.

Every untrusted string (entries, columns, labels) goes in as ``rich.text.Text`` (never parsed
as markup) with control characters and escape sequences stripped."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Group
from rich.table import Table
from rich.text import Text

from richrep.report.tables import Cell, Comparison, Gain, TableRow, caption, cell_text, count

HINT = "other forms: richrep results RUN --format markdown | csv"
LABEL_MAX = 28  # the target column folds beyond this


def render_table(
    comp: Comparison,
    width: int,
    *,
    title: str | None = None,
    hint: str | None = HINT,
    digits: int = 3,
) -> Group:
    """The table fitted to ``width`` columns, a caption and a hint line on other formats."""
    head = Text(
        cell_text(f"{title}: " if title else "") + f"test {cell_text(comp.metric)}", style="bold"
    )
    parts: list = [head]
    if not comp.rows:
        parts.append(Text("no result rows", style="dim"))
    else:
        wide = _one_line(comp, digits)
        if _table_width(wide) <= width:
            parts.append(_build(comp, comp.columns, comp.gain_columns, wide, digits, False))
        else:
            parts.extend(_split(comp, width, digits))
    parts.append(Text(caption(comp) + "; bold green: highest beyond noise", style="dim"))
    if hint:
        parts.append(Text(cell_text(hint), style="dim italic"))
    return Group(*parts)


def _table_width(widths: Sequence[int]) -> int:
    """Width of a boxed table with cell padding 1 (a border between columns and at the edges)."""
    return sum(w + 3 for w in widths) + 1


def _cell_lines(cell: Cell | None, digits: int) -> list[str]:
    if cell is None:
        return [""]
    if cell.ci95 is None:
        return [cell.mean_text(digits), cell.n_text()]
    return [cell.mean_text(digits), f"{cell.pm_text(digits).strip()} n={cell.n}"]


def _gain_lines(g: Gain | None, digits: int) -> list[str]:
    if g is None:
        return [""]
    return [
        f"{g.diff:+.{digits}f}",
        f"± {g.ci95:.{digits}f}" if g.ci95 is not None else "no interval",
    ]


def _one_line(comp: Comparison, digits: int) -> list[int]:
    """Widths of [target, *columns, *gains] with every cell on one line."""
    label = max([len("target"), *(cell_len(cell_text(r.label)) for r in comp.rows)])
    out = [label]
    for c in comp.columns:
        texts = [r.cells[c].text(digits) for r in comp.rows if c in r.cells]
        out.append(max([cell_len(cell_text(c)), *(cell_len(t) for t in texts)]))
    for g in comp.gain_columns:
        texts = [x.text(digits) for r in comp.rows if (x := r.gains.get(g.name)) is not None]
        out.append(max([cell_len(cell_text(g.name)), *(cell_len(t) for t in texts)]))
    return out


def _two_line(comp: Comparison, digits: int) -> tuple[int, list[int], list[int]]:
    """Widths of target (folded), columns and gains with cells on two lines, headers wrapped."""
    label = min(
        LABEL_MAX,
        max([len("target"), *(cell_len(x) for r in comp.rows for x in _label_lines(r))]),
    )

    def word(h: str) -> int:
        return max(cell_len(w) for w in cell_text(h).split() or [""])

    cols = []
    for c in comp.columns:
        lines = [x for r in comp.rows for x in _cell_lines(r.cells.get(c), digits)]
        i = comp.column_info[c]
        lines += [str(i.dim), count(i.params)]
        cols.append(max([word(c), *(cell_len(x) for x in lines)]))
    gains = []
    for g in comp.gain_columns:
        lines = [x for r in comp.rows for x in _gain_lines(r.gains.get(g.name), digits)]
        gains.append(max([word(g.name), *(cell_len(x) for x in lines)]))
    return label, cols, gains


def _split(comp: Comparison, width: int, digits: int) -> list:
    label, cols, gains = _two_line(comp, digits)
    items = [("col", c, w) for c, w in zip(comp.columns, cols, strict=True)]
    items += [("gain", g, w) for g, w in zip(comp.gain_columns, gains, strict=True)]
    room = width - (label + 3) - 1
    if not items or max(w for *_, w in items) + 3 > room:
        return _per_target(comp, digits)
    chunks: list[list] = [[]]
    used = 0
    for it in items:
        if chunks[-1] and used + it[2] + 3 > room:
            chunks.append([])
            used = 0
        chunks[-1].append(it)
        used += it[2] + 3
    out = []
    for chunk in chunks:
        cs = [c for kind, c, _ in chunk if kind == "col"]
        gs = [g for kind, g, _ in chunk if kind == "gain"]
        widths = [label, *(w for *_, w in chunk)]
        out.append(_build(comp, cs, gs, widths, digits, True))
    return out


def _label_lines(row: TableRow) -> list[str]:
    """The target on two lines: the entry, then protocol · size (· group · environment)."""
    parts = [cell_text(p) for p in row.target.parts]
    return [parts[0], " · ".join(parts[1:])]


def _style(comp: Comparison, row: TableRow, col: str) -> str:
    return "bold green" if col in comp.best(row) else ""


def _gain_style(g: Gain | None) -> str:
    if g is None or not g.significant:
        return ""
    return "green" if g.diff > 0 else "red"


def _build(comp, columns, gain_columns, widths, digits, stacked) -> Table:
    table = Table(box=box.SQUARE, expand=False, pad_edge=True, show_lines=stacked)
    table.add_column(Text("target"), min_width=widths[0], max_width=widths[0], overflow="fold")
    for c, w in zip([*columns, *(g.name for g in gain_columns)], widths[1:], strict=True):
        table.add_column(
            Text(cell_text(c)), justify="right", min_width=w, max_width=w, overflow="fold"
        )
    for r in comp.rows:
        label = Text("\n".join(_label_lines(r)) if stacked else cell_text(r.label))
        vals: list[Text] = []
        for c in columns:
            cell = r.cells.get(c)
            if stacked:
                lines = _cell_lines(cell, digits)
                t = Text(lines[0], style=_style(comp, r, c), no_wrap=True)
                if len(lines) > 1:
                    t.append("\n" + lines[1], style="dim")
            else:
                t = Text(cell.text(digits) if cell else "", style=_style(comp, r, c))
            vals.append(t)
        for g in gain_columns:
            x = r.gains.get(g.name)
            lines = _gain_lines(x, digits)
            text = "\n".join(lines) if stacked else ("" if x is None else x.text(digits))
            vals.append(Text(text, style=_gain_style(x)))
        table.add_row(label, *vals)
    dims = []
    for c in columns:
        i = comp.column_info[c]
        sep = "\n" if stacked else " / "
        dims.append(Text(f"{i.dim}{sep}{count(i.params)}", style="dim"))
    table.add_row(Text("dim / params", style="dim"), *dims, *([Text("")] * len(gain_columns)))
    return table


def _per_target(comp: Comparison, digits: int) -> list:
    """One narrow table per target: representation, mean, ± interval and n."""
    out = []
    for r in comp.rows:
        t = Table(title=Text(cell_text(r.label)), box=box.SIMPLE, expand=False)
        t.add_column("column", overflow="fold")
        t.add_column("mean", justify="right", no_wrap=True)
        t.add_column("± 95% interval", justify="right", no_wrap=True)
        t.add_column("n", justify="right", no_wrap=True)
        for c in comp.columns:
            cell = r.cells.get(c)
            if cell is None:
                continue
            t.add_row(
                Text(cell_text(c)),
                Text(cell.mean_text(digits), style=_style(comp, r, c)),
                Text(cell.pm_text(digits).strip() or "none"),
                Text(str(cell.n)),
            )
        for g in comp.gain_columns:
            x = r.gains.get(g.name)
            if x is None:
                continue
            t.add_row(
                Text(cell_text(g.name)),
                Text(f"{x.diff:+.{digits}f}", style=_gain_style(x)),
                Text(f"± {x.ci95:.{digits}f}" if x.ci95 is not None else "none"),
                Text(str(x.n)),
            )
        out.append(t)
    return out
