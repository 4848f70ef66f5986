"""The ``richrep`` command line."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from richrep.errors import RichrepError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learn rich representations (catK: K seeds, concatenated) and test them under shift.",
)
console = Console()
err = Console(stderr=True)


class Stage(StrEnum):
    train = "train"
    evaluate = "evaluate"
    report = "report"


class Kind(StrEnum):
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
    only: Annotated[
        Stage | None, typer.Option("--only", help="Rerun one stage from the store.")
    ] = None,  # noqa: UP007
    engine: Annotated[
        str | None, typer.Option("--engine", help="local or ray (overrides training.engine).")
    ] = None,  # noqa: UP007
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (with --engine ray).")
    ] = None,  # noqa: UP007
    device: Annotated[
        str | None,
        typer.Option("--device", help="auto, cpu, cuda, cuda:1 … (overrides the file)."),
    ] = None,  # noqa: UP007
    wait: Annotated[
        bool, typer.Option("--wait", help="If another process holds the run, wait for it.")
    ] = False,
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

            store = run_experiment(
                exp,
                out,
                only=only.value if only else None,
                wait=wait,
                log=lambda m: bar.console.print(m),
                progress=tick,
            )
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
    return Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class Format(StrEnum):
    table = "table"
    markdown = "markdown"
    csv = "csv"


@app.command()
def results(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/<name>-<hash>).")],
    fmt: Annotated[
        Format, typer.Option("--format", help="table, markdown or csv (the tidy rows).")
    ] = Format.table,
    entry: Annotated[
        list[str] | None, typer.Option("--entry", help="Only these suite entries.")
    ] = None,  # noqa: UP007
) -> None:
    """Print the comparison table: targets × representations, mean ± std, with catK's gains."""
    from richrep.evaluation.suite import read_results
    from richrep.pipeline import load_run
    from richrep.report.tables import build_comparison, to_markdown

    try:
        exp, store = load_run(run_dir)
        rows = read_results(store)
    except RichrepError as e:
        _fail(e)
    if entry:
        unknown = sorted(set(entry) - {r["entry"] for r in rows})
        if unknown:
            _fail(
                RichrepError(
                    f"no suite entry {unknown} in {run_dir}; it has {sorted({r['entry'] for r in rows})}"
                )
            )
        rows = [r for r in rows if r["entry"] in entry]
    if fmt == Format.csv:
        import csv

        keys = sorted({k for r in rows for k in r})
        w = csv.DictWriter(sys.stdout, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in keys})
        return
    comp = build_comparison(rows, [e.name for e in exp.evaluation.suite])
    if fmt == Format.markdown:
        print(to_markdown(comp))
        return
    table = Table(title=f"{exp.name}: test accuracy (mean ± std)", show_lines=False)
    table.add_column("target", style="bold")
    for c in comp.columns:
        table.add_column(c, justify="right")
    if comp.cat_max:
        table.add_column(f"{comp.cat_max}−single", justify="right")
        if comp.wide_col:
            table.add_column(f"{comp.cat_max}−{comp.wide_col}", justify="right")
    for (label, cells), (_, gs, gw) in zip(comp.rows, comp.gains, strict=True):
        best = max((cells[c].mean for c in comp.columns if c in cells), default=None)
        vals = [
            (f"[bold green]{cells[c].text()}[/]" if cells[c].mean == best else cells[c].text())
            if c in cells
            else ""
            for c in comp.columns
        ]
        if comp.cat_max:
            vals.append(_gain(gs))
            if comp.wide_col:
                vals.append(_gain(gw))
        table.add_row(label, *vals)
    table.add_row(
        "[dim]dim / params[/]",
        *[f"[dim]{comp.meta[c]['dim']} / {comp.meta[c]['params']:,}[/]" for c in comp.columns],
    )
    console.print(table)


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder.")],
    split: Annotated[
        str, typer.Option("--split", help="Source-task split to compare on: train, val or test.")
    ] = "test",
    measure: Annotated[
        list[str] | None, typer.Option("--measure", help="Measures (repeatable); default: all.")
    ] = None,  # noqa: UP007
    max_samples: Annotated[
        int, typer.Option("--max-samples", help="Subsample the split to this many examples.")
    ] = 5000,
    permutations: Annotated[
        int, typer.Option("--permutations", help="Permutations of the CKA test.")
    ] = 200,
) -> None:
    """Are the seeds different? CKA/CCA matrices, unit matching, sparse prediction, clustering."""
    from richrep.analysis.run import DEFAULT_MEASURES, analyze_run
    from richrep.pipeline import load_run
    from richrep.report.html import write_report

    try:
        _, store = load_run(run_dir)
        with console.status("analyzing seeds…"):
            s = analyze_run(
                store,
                split=split,
                measures=measure or DEFAULT_MEASURES,
                max_samples=max_samples,
                n_permutations=permutations,
                log=console.print,
            )
        if store.results.exists():
            write_report(store, log=console.print)
    except RichrepError as e:
        _fail(e)
    import numpy as np

    table = Table(title=f"seed vs seed on {s['n']} {s['split']} examples")
    for c in ("measure", "self", "seed vs seed", "untrained seed vs seed"):
        table.add_column(c, justify="right")
    for name, mat in s["measures"].items():
        m, r = np.asarray(mat), np.asarray(s["random_measures"][name])
        off = m[~np.eye(len(m), dtype=bool)]
        roff = r[~np.eye(len(r), dtype=bool)]
        table.add_row(
            name,
            f"{s['self'][name]:.3f}",
            f"{off.mean():.3f} ± {off.std():.3f}",
            f"{roff.mean():.3f}",
        )
    console.print(table)
    console.print(
        f"one-to-one matched correlation (mean): {np.mean(s['matching']['one_to_one']):.3f}; "
        f"semi-matching: {np.mean(s['matching']['semi']):.3f}; "
        f"CKA permutation p = {s['permutation_test']['p_value']:.3g}"
    )
    console.print(f"plots: {store.plots}/seed_similarity.png, unit_matching.png")


@app.command()
def runs(
    out: Annotated[Path, typer.Argument(help="Folder holding run folders.")] = Path("runs"),
    target: Annotated[
        str | None,
        typer.Option("--target", help="Compare runs on targets containing this text."),
    ] = None,  # noqa: UP007
) -> None:
    """List the runs of a folder, with catK's gain over single and wide per target."""
    from richrep.index import list_runs

    if not out.is_dir():
        _fail(RichrepError(f"{out} is not a folder of runs"))
    try:
        listed = list_runs(out)
    except (RichrepError, OSError) as e:
        _fail(e)
    table = Table(title=f"runs in {out}")
    for c in (
        "run",
        "finished",
        "data / encoder",
        "seeds",
        "epochs",
        "target",
        "catK",
        "−single",
        "−wide",
    ):
        table.add_column(c)
    for r in listed:
        first = True
        for label, h in r["headline"].items():
            if target and target not in label:
                continue
            fmt = lambda v: "" if v is None else f"{v:+.3f}"  # noqa: E731
            table.add_row(
                r["run_id"] if first else "",
                (r["finished"] or "") if first else "",
                f"{r['dataset']} / {r['encoder']}" if first else "",
                str(r["seeds"]) if first else "",
                str(r["epochs"]) if first else "",
                label,
                "" if h["cat"] is None else f"{h['cat']:.3f}",
                fmt(h["gain_single"]),
                fmt(h["gain_wide"]),
            )
            first = False
    console.print(table)


def _gain(v: float | None) -> str:
    if v is None:
        return ""
    return f"[green]{v:+.3f}[/]" if v > 0 else f"[red]{v:+.3f}[/]"


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
