"""``richrep advise`` (registered by :mod:`richrep.cli`) and the verdicts ``richrep results``
prints under its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from richrep.errors import RichrepError
from richrep.report.text import show

console = Console(highlight=False)


def _say(message: object, style: str | None = None) -> None:
    console.print(Text(show(message, keep="\n"), style=style or ""), soft_wrap=True)


def advise(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/<name>-<hash>).")],
    target: Annotated[
        str | None, typer.Option("--target", help="A suite entry (or a target's full label).")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option("--budget", help="Training budget: 8members, 600s / 600cpu-s, 0.5gpu-h."),
    ] = None,
    max_k: Annotated[
        int | None,
        typer.Option("--max-k", help="Use only the seed subsets of K ≤ this.", metavar="K"),
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="The metric to advise on.")] = "accuracy",
) -> None:
    """How many seeds are worth it, and which method? Per target, from the run's own rows and
    ledger: what more seeds would buy (fitted against K, with intervals), each option's cost,
    and the cheapest representation within noise of the best."""
    from richrep.analysis.advise_text import OPTION_HEAD, OPTION_LEGEND, advice_lines, option_rows
    from richrep.run import advise_store

    answers = advise_store(run_dir, target=target, budget=budget, max_k=max_k, metric=metric)
    for a in answers:
        lines = advice_lines(a)
        _say(lines[0], style="bold")
        for line in lines[1:]:
            _say(f"  {line}")
        table = Table(box=None, padding=(0, 1), show_edge=False)
        for h in OPTION_HEAD:
            table.add_column(h, justify="left" if h in ("option", "") else "right")
        for cells in option_rows(a):
            table.add_row(*(Text(show(c)) for c in cells))
        console.print(table)
        console.print()
    if answers:
        _say(OPTION_LEGEND, style="dim")


def print_verdicts(run: Any, rows: list[Any], order: list[str], markdown: bool) -> None:
    """One line per target: what to use (``richrep advise`` gives the reasons)."""
    from richrep.analysis.advise import advise as advise_rows
    from richrep.analysis.advise_text import verdict
    from richrep.run import member_costs

    if not any(r.metric == "accuracy" for r in rows):
        return
    try:
        answers = advise_rows(rows, member_costs(run.store), order=order)
    except RichrepError as e:
        _say(f"no verdicts: {e}", style="yellow")
        return
    head = "What to use (`richrep advise RUN` for the reasons):"
    if markdown:
        _say(f"**{head}**\n")
        for a in answers:
            _say(f"- {verdict(a)}")
        return
    out = Console(highlight=False)  # the width now: COLUMNS, else the terminal's, else 80
    out.print(Text(head, style="bold"))
    for a in answers:  # wrapped at the width
        out.print(Text("  " + show(verdict(a))))
