"""``richrep run EXP --sweep KEY=V1,V2``: each combination as its own run, then a summary; and
the sweeps of a folder side by side under ``richrep runs``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from richrep.cli.common import console, say
from richrep.cli.progress import progress_bar
from richrep.errors import RichrepError
from richrep.registry import did_you_mean
from richrep.report.text import show

if TYPE_CHECKING:
    from richrep.config import Experiment

SWEEP_HELP = (
    "KEY=V1,V2,...: run every combination of the values (with the other --sweep axes), each "
    "as its own run, one at a time. Values are YAML, split at commas outside brackets and "
    "quotes (model.params.hidden=[64],[128,128]). Repeatable."
)
OVERRIDES_HELP = (
    "KEY=VALUE overrides of the file (training.epochs=3, model.params.hidden=[64,64], "
    "evaluation.suite.0.sizes=[10]): VALUE is YAML; +KEY=VALUE adds a key the file lacks, "
    "~KEY deletes one."
)


def run_sweep(
    experiment: Path,
    axes: Sequence[str],
    overrides: Sequence[str],
    out: Path,
    prepare: Callable[[Experiment], Experiment],
    **options: Any,
) -> None:
    """Run the sweep, print each combination's run folder and state; exit 1 if any failed."""
    from richrep.config.overrides import format_value
    from richrep.sweeps import sweep

    with progress_bar() as tick:

        def announce(combo: Any, n: int, path: Path) -> None:
            tick.log(f"[{combo.index}/{n}] {combo.label()} → {path}")

        result = sweep(
            experiment,
            axes,
            out=out,
            overrides=overrides,
            prepare=prepare,
            log=tick.log,
            progress=tick,
            announce=announce,
            **options,
        )
    table = Table(title=Text(f"sweep {show(result.id)}"))
    table.add_column("#")
    _key_columns(table, result.keys)
    table.add_column("run folder", overflow="fold")
    table.add_column("state")
    for o in result.outcomes:
        c = o.combination
        state = Text("done", style="green") if o.state == "done" else Text(show(o.error), "red")
        table.add_row(
            str(c.index),
            *(Text(show(format_value(c.values[k]))) for k in result.keys),
            Text(show(o.path)),
            state,
        )
    console.print(table)
    say(f"side by side: richrep runs {out} --sweep {result.id}")
    if result.failed:
        say(f"{len(result.failed)} of {len(result.outcomes)} runs failed", style="red")
        raise typer.Exit(1)


def _key_columns(table: Table, keys: Sequence[str]) -> None:
    """A column per swept key, headed by its last part when those are distinct (the full keys
    in the caption)."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    if len(set(short)) < len(short) or short == list(keys):
        short = list(keys)
    else:
        table.caption = Text("; ".join(f"{s} = {k}" for s, k in zip(short, keys, strict=True)))
    for name in short:
        table.add_column(Text(show(name)), overflow="fold")


def _signed(v: Any) -> str:
    return "" if v is None else f"{v:+.3f}"


def print_sweeps(
    out: Path, listed: list[dict[str, Any]], only: str | None, target: str | None
) -> None:
    """Each sweep of ``out`` (or only the sweep ``only``) as a table: one row per run (and
    target), the swept keys as columns, catK and its gains."""
    from richrep.config.overrides import format_value
    from richrep.sweeps import sweep_groups

    groups = sweep_groups(out, listed)
    if only is not None:
        ids = [g.id for g in groups]
        if only not in ids:
            have = f"its sweeps are {ids}" if ids else "it has no sweep"
            raise RichrepError(f"no sweep {only!r} in {out}{did_you_mean(only, ids)}; {have}")
        groups = [g for g in groups if g.id == only]
    for g in groups:
        table = Table(title=Text(f"sweep {show(g.id)} ({len(g.runs)} runs)"))
        _key_columns(table, g.keys)
        table.add_column("run", overflow="fold")
        lines = [(r, label, h) for r in g.runs for label, h in _headline(r["row"], target)]
        gains = list(dict.fromkeys(k for *_, h in lines for k in h if k.startswith("gain_")))
        for c in ("target", "catK", *(f"−{k.removeprefix('gain_')}" for k in gains)):
            table.add_column(c)
        for r in g.runs:
            values = [Text(show(format_value(r["values"].get(k, "")))) for k in g.keys]
            row, run_id = r["row"], Text(show(r["run_id"]))
            if row is None or row.get("error") or not _headline(row, target):
                if row is not None and row.get("error"):
                    why = f"broken: {row['error']}"
                else:  # no results yet: the run's live state where the index read it
                    why = "not finished" + (
                        f" ({row['state']})" if row and row.get("state") else ""
                    )
                table.add_row(*values, run_id, Text(show(why), style="yellow"))
                continue
            first = True
            for label, h in _headline(row, target):
                table.add_row(
                    *(values if first else [""] * len(values)),
                    run_id if first else "",
                    Text(show(label)),
                    "" if h.get("cat") is None else f"{h['cat']:.3f}",
                    *(_signed(h.get(k)) for k in gains),
                )
                first = False
        console.print(table)


def _headline(row: dict[str, Any] | None, target: str | None) -> list[tuple[str, dict[str, Any]]]:
    """A listed run's headline per target (those containing ``target``)."""
    if row is None or row.get("error"):
        return []
    return [
        (label, h)
        for label, h in (row.get("headline") or {}).items()
        if isinstance(h, dict) and (not target or target in label)
    ]
