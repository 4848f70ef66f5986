"""The comparison table: rows are targets (suite entry × size), columns representations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from richrep.evaluation.stats import aggregate

KEYS = ("entry", "shift", "protocol", "size", "representation", "k")
ORDER = {"input": 0, "random": 1, "single": 2, "cat": 3, "wide": 4, "wide_dim": 5, "joint": 6}


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    ci95: float
    dim: int | None
    params: int | None

    def text(self, digits: int = 3) -> str:
        return (
            f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
            if self.n > 1
            else f"{self.mean:.{digits}f}"
        )


@dataclass
class Comparison:
    columns: list[str]
    rows: list[tuple[str, dict[str, Cell]]]  # (row label, column -> cell)
    gains: list[tuple[str, float | None, float | None]]  # (row label, catN - single, catN - wide)
    cat_max: str | None
    wide_col: str | None
    meta: dict[str, dict[str, Any]]  # column -> {dim, params}


def column(rep: str, k: int) -> str:
    if rep in ("single", "input"):
        return rep
    if rep == "random":
        return f"random{k}"
    return f"{rep}{k}"


def build_comparison(
    rows: Sequence[dict[str, Any]], entries: Sequence[str] | None = None
) -> Comparison:
    """Aggregate tidy rows into the table (mean ± std over seed subsets and draws)."""
    agg = aggregate(rows, KEYS)
    cols: dict[str, tuple[int, int]] = {}
    table: dict[tuple, dict[str, Cell]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for a in agg:
        col = column(a["representation"], a["k"])
        cols[col] = (ORDER.get(a["representation"], 9), a["k"])
        key = (a["entry"], a["protocol"], a["size"])
        table.setdefault(key, {})[col] = Cell(
            a["mean"], a["std"], a["n"], a["ci95"], a["dim"], a["params"]
        )
        meta[col] = {"dim": a["dim"], "params": a["params"]}
    columns = sorted(cols, key=lambda c: cols[c])
    entry_order = list(entries) if entries else list(dict.fromkeys(r["entry"] for r in rows))
    size_rank = lambda s: 10**9 if s == "all" else int(s)  # noqa: E731
    keys = sorted(
        table,
        key=lambda k: (
            entry_order.index(k[0]) if k[0] in entry_order else 999,
            k[1],
            size_rank(k[2]),
        ),
    )
    cats = [c for c in columns if c.startswith("cat")]
    cat_max = max(cats, key=lambda c: cols[c][1]) if cats else None
    wides = [c for c in columns if c.startswith("wide") and not c.startswith("wide_dim")]
    wide_col = wides[-1] if wides else None
    out_rows, gains = [], []
    for key in keys:
        label = f"{key[0]} · {key[1]} · {key[2] if key[2] == 'all' else f'{key[2]}/class'}"
        cells = table[key]
        out_rows.append((label, cells))
        g_single = (
            cells[cat_max].mean - cells["single"].mean
            if cat_max in cells and "single" in cells
            else None
        )
        g_wide = (
            cells[cat_max].mean - cells[wide_col].mean
            if cat_max in cells and wide_col in cells
            else None
        )
        gains.append((label, g_single, g_wide))
    return Comparison(columns, out_rows, gains, cat_max, wide_col, meta)


def to_markdown(c: Comparison, digits: int = 3) -> str:
    head = ["target", *c.columns]
    if c.cat_max:
        head += [f"{c.cat_max} − single"] + ([f"{c.cat_max} − {c.wide_col}"] if c.wide_col else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (label, cells), (_, gs, gw) in zip(c.rows, c.gains, strict=True):
        vals = [cells[col].text(digits) if col in cells else "" for col in c.columns]
        if c.cat_max:
            vals.append(_signed(gs))
            if c.wide_col:
                vals.append(_signed(gw))
        lines.append("| " + " | ".join([label, *vals]) + " |")
    dims = [
        "dim / params",
        *[f"{c.meta[col]['dim']} / {_count(c.meta[col]['params'])}" for col in c.columns],
    ]
    lines.append("| " + " | ".join(dims + [""] * (len(head) - len(dims))) + " |")
    return "\n".join(lines)


def _signed(v: float | None) -> str:
    return "" if v is None else f"{v:+.3f}"


def _count(n: int | None) -> str:
    if not n:
        return "0"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"
