"""The report's opening paragraph, written from the numbers: per entry, catK against one seed
and against the baselines of the same K, each with its 95% interval, saying when a gain is
within noise or has no interval. (``ood`` entries speak through worst test-environment
accuracy: :func:`richrep.report.ood_tables.ood_summary_lines`.)"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from richrep.report.tables import Comparison, Gain, TableRow, size_rank


def headline_row(comp: Comparison, entry: str, protocol: str | None = None) -> TableRow | None:
    """The row that speaks for ``entry``: its protocol (else the first), no group or
    environment when there is such a row, the ``all`` size (else the largest) and, of several
    variants, the protocol's last (a continual stream's end, not its trivial first task)."""
    rows = [r for r in comp.rows if r.target.entry == entry]
    if protocol and any(r.target.protocol == protocol for r in rows):
        rows = [r for r in rows if r.target.protocol == protocol]
    elif rows:
        rows = [r for r in rows if r.target.protocol == rows[0].target.protocol]
    plain = [r for r in rows if r.target.group is None and r.target.environment is None]
    rows = plain or rows
    rows = [r for r in rows if r.gains and any(g is not None for g in r.gains.values())] or rows
    if not rows:
        return None
    top = max(size_rank(r.target.size) for r in rows)
    return [r for r in rows if size_rank(r.target.size) == top][-1]


def _scale(comp: Comparison) -> tuple[float, str]:
    """Points (×100) for a metric in [0, 1] like accuracy, else its own units."""
    vals = [c.mean for r in comp.rows for c in r.cells.values()]
    if vals and all(0.0 <= v <= 1.0 for v in vals):
        return 100.0, " points"
    return 1.0, ""


def gain_phrase(g: Gain, other: str, scale: float, unit: str) -> str:
    d = g.diff * scale
    if g.ci95 is None:
        return f"{d:+.1f}{unit} against {other} (no interval: {g.no_interval})"
    lo, hi = g.low * scale, g.high * scale  # type: ignore[operator]
    ci = f"95% CI {lo:+.1f} to {hi:+.1f}"
    if not g.significant:
        return f"is within noise of {other} ({d:+.1f}{unit}, {ci})"
    verb = "beats" if d > 0 else "trails"
    return f"{verb} {other} by {abs(d):.1f}{unit} ({ci})"


def summary_lines(
    comp: Comparison,
    entries: Sequence[str] | None = None,
    entry_protocols: Mapping[str, str] | None = None,
    skip: Collection[str] = (),
) -> list[str]:
    """One sentence per entry (suite order) on catK's gains in ``comp``'s metric, but for the
    entries in ``skip``."""
    if not comp.headline_gains:
        return []
    scale, unit = _scale(comp)
    order = list(entries or []) + [
        e for e in dict.fromkeys(r.target.entry for r in comp.rows) if e not in (entries or [])
    ]
    out = []
    for entry in order:
        if entry in skip:
            continue
        row = headline_row(comp, entry, (entry_protocols or {}).get(entry))
        if row is None:
            continue
        phrases = []
        cat = None
        for gc in comp.headline_gains:
            g = row.gains.get(gc.name)
            if g is None:
                continue
            cat = gc.left
            phrases.append(gain_phrase(g, gc.right, scale, unit))
        if not phrases:
            continue
        t = row.target
        c = row.cells[cat]
        level = f"{c.mean * scale:.1f}" if unit else f"{c.mean:.3f}"
        where = f"{t.entry} ({', '.join(p for p in (t.protocol, t.size_text, t.variant) if p)})"
        out.append(
            f"{where}: {cat} reaches {level}{unit and ' %'} {comp.metric} and "
            + _join(phrases)
            + "."
        )
    return out


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
