"""The ``richrep`` command line."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from richrep.errors import RichrepError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Learn rich representations (catK: K seeds, concatenated) and test them under shift.")  # fmt: skip
console = Console()
err = Console(stderr=True)


class Stage(str, Enum):
    train = "train"
    evaluate = "evaluate"
    report = "report"


class Kind(str, Enum):
    datasets = "datasets"
    shifts = "shifts"
    encoders = "encoders"
    protocols = "protocols"
    measures = "measures"


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder holding run folders.")] = Path("runs"),
    only: Annotated[Optional[Stage], typer.Option("--only", help="Rerun one stage from the store.")] = None,  # noqa: UP007
    engine: Annotated[Optional[str], typer.Option("--engine", help="local or ray (overrides training.engine).")] = None,  # noqa: UP007
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (with --engine ray).")] = None,  # noqa: UP007
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:1 … (overrides the file).")] = None,  # noqa: UP007
    wait: Annotated[bool, typer.Option("--wait", help="If another process holds the run, wait for it.")] = False,
) -> None:
    """Train the seeds and baselines, evaluate the suite and write the report, resuming any earlier work."""
    from richrep.config import load_experiment
    from richrep.pipeline import run_experiment

    try:
        exp = load_experiment(experiment)
        exp = _override(exp, engine, address, device)
        console.print(f"[bold]{exp.name}[/] → {out / exp.run_id()}")
        with _progress() as bar:
            tasks: dict[str, int] = {}

            def tick(member: str, done: int, total: int) -> None:
                if member not in tasks:
                    tasks[member] = bar.add_task(member, total=total)
                bar.update(tasks[member], completed=done, total=total)

            store = run_experiment(exp, out, only=only.value if only else None, wait=wait,
                                   log=lambda m: bar.console.print(m), progress=tick)  # fmt: skip
        console.print(f"[green]done[/]: {store.root}")
        if store.report.exists():
            console.print(f"report: {store.report}")
    except RichrepError as e:
        _fail(e)


def _override(exp, engine, address, device):  # noqa: ANN001, ANN202
    from richrep.config import parse_experiment

    if engine is None and address is None and device is None:
        return exp
    raw = exp.model_dump(mode="json")
    if engine is not None:
        raw["training"]["engine"] = engine
    if address is not None:
        raw["training"]["ray"] = {**raw["training"].get("ray", {}), "address": address}
    if device is not None:
        raw["training"]["device"] = device
        raw["evaluation"]["device"] = device
    return parse_experiment(raw, "(with command-line overrides)")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)  # fmt: skip


@app.command("list")
def list_(kind: Annotated[Kind, typer.Argument(help="What to list.")], pattern: str = "*") -> None:
    """Show a registry: datasets, shifts, encoders, protocols or measures."""
    from richrep.registries import registry_of

    reg = registry_of(kind.value)
    table = Table(title=kind.value, show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("arguments")
    table.add_column("what it is")
    for e in reg:
        if e.name in reg.names(pattern):
            table.add_row(e.name, e.signature()[len(e.name) :], e.summary)
    console.print(table)


def main() -> None:  # pragma: no cover
    try:
        app()
    except RichrepError as e:
        _fail(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
