"""The comparison table in a terminal of any width, one line per target: rows are targets,
columns the chosen representations and gains (each cell ``75.6±1.2``), with an ``n`` and a
``dim/params`` line. Of the layouts that fit the width (rows = targets, split into blocks that
repeat the target; transposed, rows = columns; one line per cell) the one of fewest lines is
printed, or the one asked for.

Every untrusted string (entries, columns, labels) goes in as ``rich.text.Text`` (never parsed
as markup) with control characters and escape sequences stripped."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from richrep.report import columns as cols
from richrep.report.tables import Comparison, count, table_text

HINT = "other forms: --columns NAME,NAME --transpose --format markdown|csv"
UNITS = {"values": "seeds or subsets × draws", "episodes": "episodes"}
LABEL_SHARE = 0.4  # the row labels take at most this share of the width (then they fold)
Cell = tuple[str, str]  # (text, style)


@dataclass
class Grid:
    """A table before layout: column heads, row heads and cells, and dim rows at the foot."""

    heads: list[str]
    rows: list[str]
    cells: list[list[Cell]]
    foot: list[tuple[str, list[Cell]]] = field(default_factory=list)
    header: bool = True

    def widths(self) -> list[int]:
        """Each column's width: its widest cell, or what its head takes on two lines."""
        out = []
        for j, h in enumerate(self.heads):
            texts = [r[j][0] for r in self.cells] + [f[1][j][0] for f in self.foot]
            out.append(max([_two_lines(h), *(cell_len(t) for t in texts)]))
        return out

    def label_width(self, width: int) -> int:
        heads = [*self.rows, *(f[0] for f in self.foot)]
        longest = max([cell_len(h) for h in heads] or [0])
        if not self.header:  # one line per cell: the value takes what it needs
            return max(1, min(longest, width - 1 - max(self.widths() or [0])))
        return min(longest, max(12, int(width * LABEL_SHARE)))

    def take(self, js: Sequence[int]) -> Grid:
        return Grid(
            [self.heads[j] for j in js],
            self.rows,
            [[r[j] for j in js] for r in self.cells],
            [(h, [c[j] for j in js]) for h, c in self.foot],
            header=self.header,
        )


def _two_lines(head: str) -> int:
    """The width that holds ``head`` on two lines at most, split between words."""
    words = head.split()
    if len(words) < 2:
        return cell_len(head)
    return min(
        max(cell_len(" ".join(words[:i])), cell_len(" ".join(words[i:])))
        for i in range(1, len(words))
    )


def render_table(
    comp: Comparison,
    width: int,
    *,
    title: str | None = None,
    hint: str | None = HINT,
    digits: int = 3,
    columns: Sequence[str] | None = None,
    transpose: bool | None = None,
) -> Group:
    """The table fitted to ``width`` columns, a one-line caption and a hint on other forms.

    ``columns`` are names as :func:`richrep.report.columns.resolve_columns` returns them (default: every
    column when they fit one table, else the headline set); ``transpose`` True or False asks for
    a layout, None picks the one of fewest lines."""
    pct = cols.scale(comp) == 100.0
    what = f"test {table_text(comp.metric)}" + (" in % (gains in points)" if pct else "")
    parts: list = [Text(table_text(f"{title}: " if title else "") + what, style="bold")]
    if not comp.rows:
        parts.append(Text("no result rows", style="dim"))
        return Group(*parts)
    if columns is None:
        names, tables = _default(comp, width, digits, transpose)
    else:
        names = cols.chosen(comp, columns)
        tables = _best(comp, names, width, digits, transpose)
    parts += _spaced(tables)
    parts.append(Text(_caption(comp, names), style="dim"))
    if hidden := _hidden(comp, names):
        parts.append(Text(hidden, style="dim"))
    if hint:
        parts.append(Text(table_text(hint), style="dim italic"))
    return Group(*parts)


def render_tables(
    comps: Sequence[Comparison],
    width: int,
    title: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    transpose: bool | None = None,
) -> Group:
    """One :func:`render_table` per comparison (one per metric), a blank line between, the
    hint on other forms once at the end."""
    parts: list = []
    for i, comp in enumerate(comps):
        last = i == len(comps) - 1
        hint = HINT if last else None
        parts.append(
            render_table(comp, width, title=title, hint=hint, columns=columns, transpose=transpose)
        )
        parts += [] if last else [Text("")]
    return Group(*parts)


def _default(
    comp: Comparison, width: int, digits: int, transpose: bool | None
) -> tuple[list[str], list[Table]]:
    """Every column when they fit one table; else the headline set, its floors only when they
    cost at most a line each (a row of the transposed form, or room in the blocks)."""
    every = cols.everything(comp)
    if transpose is not True and _fits(_grid(comp, every, digits), width):
        return every, _best(comp, every, width, digits, False)
    full, main = cols.headline(comp), cols.headline(comp, floors=False)
    with_floors = _best(comp, full, width, digits, transpose)
    if full == main:
        return full, with_floors
    without = _best(comp, main, width, digits, transpose)
    if _cost(with_floors, width) <= _cost(without, width) + len(full) - len(main):
        return full, with_floors
    return main, without


def _hidden(comp: Comparison, names: Sequence[str]) -> str:
    """``not shown: cat2, input and 3 gains (--columns all)`` ("" when every column is
    shown)."""
    gains = {g.name for g in comp.gain_columns}
    left = [c for c in cols.available(comp) if c not in names]
    if not left:
        return ""
    plain = [table_text(c) for c in left if c not in gains]
    n = len(left) - len(plain)
    listed = plain + ([f"{n} gain{'s' * (n > 1)}"] if n else [])
    text = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    return f"not shown: {text} (--columns all)"


def _caption(comp: Comparison, names: Sequence[str]) -> str:
    """What ± is, what n counts, and what a bare or bracketed value means."""
    shown = [x for r in comp.rows for c in names if (x := r.cells.get(c)) is not None]
    units = sorted({x.unit for x in shown} or {"values"}, reverse=True)
    out = ["±: 95% t half-width", "n: " + " or ".join(UNITS.get(u, u) for u in units)]
    if any(x.ci95 is None for x in shown):
        out.append("bare: no interval")
    clipped = [x for x in shown if x.clipped and x.bounds]
    if clipped:
        lo, hi = (cols.scale(comp) * b for b in clipped[0].bounds or (0, 1))
        out.append(f"[lo,hi]: clipped to [{lo:g},{hi:g}]")
    if any(comp.best(r) & set(names) for r in comp.rows):
        out.append("bold green: highest beyond noise")
    return "; ".join(out)


def _cells(comp: Comparison, names: Sequence[str], digits: int) -> list[list[Cell]]:
    """Per row, per name: its compact text and style."""
    s, d = cols.scale(comp), cols.decimals(comp, digits)
    gains = {g.name for g in comp.gain_columns}
    out = []
    for r in comp.rows:
        best = comp.best(r)
        line: list[Cell] = []
        for n in names:
            if n in gains:
                g = r.gains.get(n)
                sig = g is not None and g.significant
                style = ("green" if g.diff > 0 else "red") if sig and g is not None else ""
                line.append((cols.gain_text(g, s, d), style))
            else:
                line.append((cols.cell_text(r.cells.get(n), s, d), "bold green" * (n in best)))
        out.append(line)
    return out


def _dims(comp: Comparison, names: Sequence[str]) -> list[Cell]:
    out = []
    for n in names:
        i = comp.column_info.get(n)
        out.append(("" if i is None else f"{i.dim}/{count(i.params)}", "dim"))
    return out


def _grid(comp: Comparison, names: Sequence[str], digits: int) -> Grid:
    """Rows = targets, columns = ``names``; n and dim/params at the foot."""
    labels = cols.labels(comp)
    foot = [
        ("n", [(cols.n_range(comp, n), "dim") for n in names]),
        ("dim/params", _dims(comp, names)),
    ]
    return Grid(
        [table_text(n) for n in names],
        [labels[i] for i in range(len(comp.rows))],
        _cells(comp, names, digits),
        foot,
    )


def _transposed(comp: Comparison, names: Sequence[str], digits: int) -> Grid:
    """Rows = ``names``, columns = targets, then n and dim/params."""
    g = _grid(comp, names, digits)
    cells = [[*(row[i] for row in g.cells), *(f[1][i] for f in g.foot)] for i in range(len(names))]
    return Grid([*g.rows, *(f[0] for f in g.foot)], g.heads, cells)


def _per_cell(comp: Comparison, names: Sequence[str], digits: int) -> Grid:
    """One line per cell under its target's line: the column's name, its value."""
    g = _grid(comp, names, digits)
    rows, cells = [], []
    for label, line in zip(g.rows, g.cells, strict=True):
        rows.append(label)
        cells.append([("", "")])
        for n, c in zip(g.heads, line, strict=True):
            if c[0]:
                rows.append(f"  {n}")
                cells.append([c])
    return Grid([""], rows, cells, header=False)


def _fits(grid: Grid, width: int) -> bool:
    """Whether the grid fits ``width`` as one table (a space between columns)."""
    return grid.label_width(width) + sum(w + 1 for w in grid.widths()) <= width


def _blocks(grid: Grid, width: int) -> list[Grid] | None:
    """The grid's columns in blocks that each fit ``width`` (each repeating the row heads);
    None when one column alone does not fit."""
    room = width - grid.label_width(width)
    out: list[list[int]] = [[]]
    used = 0
    for j, w in enumerate(grid.widths()):
        if w + 1 > room:
            return None
        if out[-1] and used + w + 1 > room:
            out.append([])
            used = 0
        out[-1].append(j)
        used += w + 1
    return [grid.take(js) for js in out if js]


def _head_widths(grid: Grid, width: int) -> list[int]:
    """The columns' widths, widened to hold every head on one line when the room allows (a
    head that wraps anyway gains nothing from the others' widening)."""
    widths = grid.widths()
    spare = width - grid.label_width(width) - sum(w + 1 for w in widths)
    wide = [max(w, cell_len(h)) for w, h in zip(widths, grid.heads, strict=True)]
    return wide if sum(wide) - sum(widths) <= spare else widths


def _table(grid: Grid, width: int) -> Table:
    t = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=0,
        show_header=grid.header,
    )
    lw = grid.label_width(width)
    t.add_column(Text(""), min_width=lw, max_width=lw, overflow="fold")
    for h, w in zip(grid.heads, _head_widths(grid, width), strict=True):
        t.add_column(Text(h), justify="right", min_width=w, max_width=w, overflow="fold")
    for label, line in zip(grid.rows, grid.cells, strict=True):
        t.add_row(Text(label), *(Text(x, style=s) for x, s in line))
    for label, line in grid.foot:
        t.add_row(Text(label, style="dim"), *(Text(x, style=s) for x, s in line))
    return t


def _lines(blocks: Sequence[Table], width: int) -> int:
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    with console.capture() as cap:
        console.print(Group(*_spaced(blocks)))
    return len(cap.get().splitlines())


def _spaced(blocks: Sequence[Table]) -> list:
    out: list = []
    for b in blocks:
        out += [Text("")] if out else []
        out.append(b)
    return out


def _best(
    comp: Comparison, names: Sequence[str], width: int, digits: int, transpose: bool | None
) -> list[Table]:
    """The tables of the layout of least :func:`_cost` (then fewest blocks) among those allowed
    that fit; one line per cell when none does."""
    makers = {False: _grid, True: _transposed}
    kinds = [transpose] if transpose is not None else [False, True]
    best: tuple[int, int, list[Table]] | None = None
    for kind in kinds:
        blocks = _blocks(makers[kind](comp, names, digits), width)
        if blocks is None:
            continue
        tables = [_table(b, width) for b in blocks]
        score = (_cost(tables, width), len(tables))
        if best is None or score < best[:2]:
            best = (*score, tables)
    if best is None:
        return [_table(_per_cell(comp, names, digits), width)]
    return best[2]


def _cost(tables: Sequence[Table], width: int) -> int:
    """Lines printed, and two more for each block after the first (the eye's way back)."""
    return _lines(tables, width) + 2 * (len(tables) - 1)
