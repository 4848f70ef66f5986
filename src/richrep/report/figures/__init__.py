"""Every figure of the report, redrawn from result rows: a pandas DataFrame of them (columns:
the fields of :class:`richrep.results.Row`, as ``Run.results()`` or ``richrep results --format
csv`` give them) or the rows themselves. The report draws through these same functions; each
returns a matplotlib object to show, change or save (``fig.savefig("x.pdf")``)::

    from richrep.report import figures
    ax = figures.accuracy_vs_k(df, "new_classes")
    fig = figures.lead_figure(df[df.entry != "noise"])

Also a protocol's own figure (registry ``FIGURES`` of :mod:`.protocols`, where a plug-in
registers one). Matplotlib and the table code load when a figure is drawn, not on import."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from richrep.errors import ConfigError

NEEDED = ("entry", "protocol", "representation", "column", "k", "metric", "value")


def as_rows(data: Any) -> list[Any]:
    """Result rows from a pandas DataFrame (one record per row; ``extra`` mappings and extra
    columns read like a row's extras, missing values as None) or from rows (``Row`` objects or
    dicts), checked: a ConfigError names what is wrong."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a pandas DataFrame
        missing = [c for c in NEEDED if c not in data.columns]
        if missing:
            raise ConfigError(
                f"the DataFrame lacks the result-row columns {missing} (it has "
                f"{[str(c) for c in data.columns][:12]}): pass Run.results() or the rows of "
                "richrep results --format csv"
            )
        return [_record(r) for r in data.to_dict(orient="records")]
    if isinstance(data, str | bytes | Mapping) or not isinstance(data, Iterable):
        raise ConfigError(
            "expected result rows (richrep Row objects or dicts) or a pandas DataFrame of them, "
            f"got {type(data).__name__}"
        )
    rows = list(data)
    for r in rows:
        missing = [c for c in NEEDED if not hasattr(r, "get") or r.get(c) is None]
        if missing:
            raise ConfigError(f"a result row lacks {missing}: {str(r)[:120]}")
    return rows


def _record(rec: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    extra = rec.get("extra")
    if isinstance(extra, Mapping):
        out.update({str(k): _plain(v) for k, v in extra.items()})
    for k, v in rec.items():
        if k != "extra":
            out[str(k)] = _plain(v)
    try:
        out["value"] = float(rec["value"])
    except (TypeError, ValueError):
        raise ConfigError(f"a result row's value is not a number: {rec['value']!r}") from None
    return out


def _plain(v: Any) -> Any:
    """A DataFrame cell as a plain value: NaN and pandas' NA as None, numpy scalars and arrays
    as Python numbers and tuples."""
    if v is None or type(v).__name__ in ("NAType", "NaTType"):
        return None
    if hasattr(v, "tolist") and not isinstance(v, str):  # a numpy scalar or array
        v = v.tolist()
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _entry_rows(rows: list[Any], entry: str, metric: str | None = None) -> list[Any]:
    entries = list(dict.fromkeys(str(r.get("entry")) for r in rows))
    if entry not in entries:
        raise ConfigError(f"no result rows of entry {entry!r}; the rows have entries {entries}")
    mine = [r for r in rows if r.get("entry") == entry]
    metrics = list(dict.fromkeys(str(r.get("metric")) for r in mine))
    if metric is not None and metric not in metrics:
        raise ConfigError(f"entry {entry!r} has no {metric!r} rows; its metrics: {metrics}")
    return mine


def accuracy_vs_k(
    data: Any,
    entry: str,
    ax: Any = None,
    *,
    metric: str = "accuracy",
    chance: float | None = None,
) -> Any:
    """``metric`` of one entry against K (the report's "Against K" figure): a colour per
    training size, the single/catK line and its 95% band, the baselines as markers right of the
    K they match, the floors as lines; drawn on ``ax`` (else a new figure). Returns the axes."""
    from richrep.report.vs_k import vs_k

    mine = _entry_rows(as_rows(data), entry, metric)
    return vs_k(mine, entry, metric=metric, chance=chance, ax=ax)


def lead_figure(
    data: Any,
    entries: Sequence[str] | None = None,
    *,
    metric: str = "accuracy",
    chance: Mapping[str, float] | None = None,
    ncols: int = 4,
) -> Any:
    """The report's lead figure: one panel per entry drawn against K (``entries``, else every
    one), each at its largest training size, ``chance`` (entry -> 1 / classes) as a grey line.
    Returns the figure, or None when no entry has a catK line."""
    from richrep.report.ood_tables import table_rows
    from richrep.report.vs_k import lead

    rows = as_rows(data)
    for e in entries or []:
        _entry_rows(rows, e, metric)
    return lead(table_rows(rows), entries, metric=metric, chance=chance, ncols=ncols)


def protocol_figure(data: Any, entry: str, protocol: str | None = None) -> Any:
    """The own figure of an entry's protocol (continual, truncation, retrieval, compatibility
    or a plug-in's; ``protocol``, else its rows'); None when it has none or nothing to draw."""
    from richrep.report.figures.protocols import FIGURES

    mine = _entry_rows(as_rows(data), entry)
    protocol = protocol or str(mine[0].get("protocol"))
    return FIGURES.build(protocol, mine, entry) if protocol in FIGURES else None


def ood_environments(data: Any, entry: str, rule: str = "train-domain") -> Any:
    """An out-of-distribution entry's accuracy per test environment under selection ``rule``
    (train-domain or oracle), a panel each; None when it has no such rows."""
    from pathlib import Path

    from richrep.report.ood_tables import RULES
    from richrep.report.ood_tables import save_ood_environments as draw
    from richrep.report.plots import kept

    if rule not in RULES:
        raise ConfigError(f"unknown selection rule {rule!r}; one of {list(RULES)}")
    with kept() as figs:
        draw(_entry_rows(as_rows(data), entry), entry, Path("ood.png"), rule)
    return figs[0] if figs else None


def training_curves(members: Sequence[Mapping[str, Any]]) -> Any:
    """Loss and training accuracy per epoch, one line per member (records with a ``name`` and a
    ``history``: the report stage's ``members_info``); None when none has a history."""
    from richrep.report.plots import curves_figure

    return curves_figure(members)


def seed_figures(analysis: Mapping[str, Any]) -> list[Any]:
    """The seed-similarity figures of a seed analysis (``analysis/summary.json`` of a run)."""
    from pathlib import Path

    from richrep.report.plots import kept
    from richrep.report.seed_figures import seed_plots

    with kept() as figs:
        seed_plots(analysis, Path("."))
    return figs
