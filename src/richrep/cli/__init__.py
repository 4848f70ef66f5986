"""The ``richrep`` command line."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from richrep import __version__
from richrep.cli.advise import advise, print_verdicts
from richrep.cli.common import console, err, fail, guard, guarded, say
from richrep.cli.data import data_app
from richrep.cli.helptext import HelpGroup
from richrep.cli.progress import progress_bar
from richrep.cli.sweeps import OVERRIDES_HELP, SWEEP_HELP, print_sweeps, run_sweep
from richrep.cli.views import DG_HELP, OOD_HELP, print_dg, print_ood
from richrep.errors import RichrepError
from richrep.report.text import show

app = typer.Typer(
    cls=HelpGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Learn rich representations (catK: K seeds, concatenated) and test them under shift.",
)
YES = typer.Option("--yes", help="Run work estimated above richrep's limits anyway.")


def _version(value: bool) -> None:
    if value:
        console.print(f"richrep {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Learn rich representations (catK: K seeds, concatenated) and test them under shift."""


class Stage(StrEnum):
    train = "train"
    evaluate = "evaluate"
    report = "report"


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help=OVERRIDES_HELP, show_default=False, metavar="KEY=VALUE"),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder holding run folders.", metavar="DIR")
    ] = Path("runs"),
    only: Annotated[Stage | None, typer.Option("--only", help="Rerun one stage.")] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="local or ray (overrides runtime.engine).")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (with --engine ray).")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:1 … (overrides the file).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="If another process holds the run, wait for it.")
    ] = False,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing", help="Evaluate even if some members are missing or corrupt."
        ),
    ] = False,
    yes: Annotated[bool, YES] = False,
    sweep: Annotated[
        list[str] | None, typer.Option("--sweep", help=SWEEP_HELP, metavar="KEY=V1,V2")
    ] = None,
) -> None:
    """Train the seeds and baselines, evaluate the suite and write the report, resuming any
    earlier work."""
    from richrep.config.overrides import load_with_overrides
    from richrep.pipeline import run_experiment
    from richrep.store.origin import Origin

    with guard():
        if sweep:
            stage = only.value if only else None
            prepare = lambda e: _override(e, engine, address, device)  # noqa: E731
            options = {"only": stage, "wait": wait, "allow_missing": allow_missing, "yes": yes}
            return run_sweep(experiment, sweep, overrides or [], out, prepare, **options)
        exp = _override(load_with_overrides(experiment, overrides or []), engine, address, device)
        say(f"{exp.name} → {out / exp.run_id()}", style="bold")
        with progress_bar() as tick:
            result = run_experiment(
                exp,
                out,
                only=only.value if only else None,
                wait=wait,
                log=tick.log,
                progress=tick,
                allow_missing=allow_missing,
                yes=yes,
                origin=Origin(overrides or [], experiment=str(experiment.absolute())),
            )
        say(f"done: {result.store.root}", style="green")
        bin_ = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "richrep"
        say(f"table: {'richrep' if bin_ == 'richrep' else bin_} results {result.store.root}")


def _override(exp, engine, address, device):  # noqa: ANN001, ANN202
    from richrep.config import parse_experiment

    if engine is None and address is None and device is None:
        return exp
    raw = exp.model_dump(mode="json")
    rt = raw["runtime"]
    if engine is not None:
        params = rt["engine"]["params"] if rt["engine"]["name"] == engine else {}
        rt["engine"] = {"name": engine, "params": params}
    if address is not None:
        rt["engine"] = {
            "name": rt["engine"]["name"],
            "params": {**rt["engine"]["params"], "address": address},
        }
    if device is not None:
        rt["device"] = device
        rt["eval_device"] = None
    return parse_experiment(raw, "(with command-line overrides)")


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
        list[str] | None,
        typer.Option("--entry", help="Only this suite entry (repeatable).", metavar="NAME"),
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="Only this metric.", metavar="NAME")
    ] = None,
    ood: Annotated[bool, typer.Option("--ood", help=OOD_HELP)] = False,
    dg: Annotated[bool, typer.Option("--dg", help=DG_HELP)] = False,
    columns: Annotated[
        list[str] | None,
        typer.Option(
            "--columns",
            help="Columns to show, comma-separated, as the table names them (a gain typed as "
            "cat5-single); all, or default: single, catK and its baselines, the floors and "
            "catK's gains.",
        ),
    ] = None,
    transpose: Annotated[
        bool | None,
        typer.Option(
            "--transpose/--no-transpose",
            help="Rows = columns, or rows = targets; default: the layout of fewest lines that "
            "fits the terminal.",
        ),
    ] = None,
) -> None:
    """Print the comparison table: targets × representations, catK's gains, one line per
    target, fitted to the terminal's width.

    Every cell is the mean ± the half-width of its 95% Student-t interval over what varied
    (n = seeds or seed subsets × draws; few-shot: episodes), clipped to [0, 1] for
    accuracy-like metrics; one value or equal values give no interval."""
    from richrep.evaluation.stored import left_out, left_out_message
    from richrep.report.ood_tables import table_rows
    from richrep.report.tables import derived_note, to_csv
    from richrep.run import Run
    from richrep.stages.evaluate import read_results

    with guard():
        _layout_options(fmt, ood, columns, transpose, dg)
        r = Run.open(run_dir)
        rows = _selected_rows(read_results(r), run_dir, entry, metric)
        if fmt == Format.csv:
            sys.stdout.write(to_csv(rows))
            return
        note = derived_note(rows)
        if note:
            say(note, style="yellow", to=err)
        if left := left_out(r.store.results_dir, {e.name for e in r.suite}):
            say(left_out_message(left, r.store.root), style="yellow", to=err)
        if ood:
            print_ood(rows, run_dir, metric)
            return
        if dg:
            print_dg(rows, run_dir, metric)
            return
        if dgs := sorted({x.entry for x in rows if x.protocol == "domain_generalization"}):
            say(
                f"{', '.join(dgs)}: domain generalization; `richrep results {run_dir} --dg` "
                f"shows {'it' if len(dgs) == 1 else 'them'} as DomainBed tables",
                style="yellow",
                to=err,
            )
        order = [e.name for e in r.suite]
        rows = table_rows(rows)  # an ood entry's accuracy: its worst test environment
        _print_tables(r.exp.name, rows, order, fmt, metric, columns, transpose)
        if metric in (None, "accuracy"):
            print_verdicts(r, rows, order, markdown=fmt == Format.markdown)


def _print_tables(
    title: str,
    rows: list[Any],
    order: list[str],
    fmt: Format,
    metric: str | None,
    columns: list[str] | None,
    transpose: bool | None,
) -> None:
    """Each metric's comparison table: markdown, or fitted to the terminal's width."""
    from richrep.report.columns import chosen, resolve_columns
    from richrep.report.tables import build_comparison, metrics, to_markdown
    from richrep.report.terminal import render_tables

    wanted = [metric] if metric else metrics(rows)
    comps = [build_comparison(rows, order, metric=m) for m in wanted]
    names = resolve_columns(comps, columns) if columns else None
    if fmt == Format.markdown:
        for comp in comps:
            print(to_markdown(comp, columns=None if names is None else chosen(comp, names)))
            print()
        return
    out = Console(highlight=False)  # the width now: COLUMNS, else the terminal's, else 80
    out.print(render_tables(comps, out.width, title, columns=names, transpose=transpose))


def _selected_rows(
    rows: list[Any], run_dir: Path, entry: list[str] | None, metric: str | None
) -> list[Any]:
    """The rows of the entries asked for; an unknown entry or metric is named with what the
    results have."""
    from richrep.registry import did_you_mean

    if entry:
        have = sorted({x.entry for x in rows})
        unknown = sorted(set(entry) - set(have))
        if unknown:
            raise RichrepError(f"no suite entry {unknown} in {run_dir}; it has {have}")
        rows = [x for x in rows if x.entry in entry]
    have = sorted({x.metric for x in rows})
    if metric is not None and metric not in have:
        raise RichrepError(
            f"--metric: no metric {metric!r} in the results{did_you_mean(metric, have)}; "
            f"they have {', '.join(have) or 'none'}"
        )
    return rows


def _layout_options(
    fmt: Format, ood: bool, columns: Any, transpose: bool | None, dg: bool = False
) -> None:
    """--columns and --transpose shape the table (--columns the markdown too): refused where
    they would be ignored; --ood and --dg are one view each."""
    if ood and dg:
        raise RichrepError("--ood and --dg are two views: ask for one at a time")
    ood = ood or dg
    if columns and (fmt == Format.csv or ood):
        raise RichrepError(
            "--columns applies to the table and markdown formats (not csv, --ood, --dg)"
        )
    if transpose is not None and (fmt != Format.table or ood):
        raise RichrepError(
            "--transpose applies to the table format (not markdown, csv, --ood, --dg)"
        )


app.command("advise")(guarded(advise))
app.add_typer(data_app, name="data")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/<name>-<hash>).")],
    entry: Annotated[
        list[str] | None,
        typer.Option(
            help="A suite entry in YAML or JSON (repeatable): '{name: mine, dataset: "
            "npz, params: {path: mine.npz}, sizes: [10, all]}'."
        ),
    ] = None,
    suite: Annotated[
        Path | None, typer.Option(help="A file of entries: a list, or suite: [...]")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace an extra entry of the same name.")] = False,
    drop: Annotated[list[str] | None, typer.Option(help="Remove this extra entry.")] = None,
    allow_missing: Annotated[bool, typer.Option(help="Evaluate without missing members.")] = False,
    yes: Annotated[bool, YES] = False,
) -> None:
    """Evaluate a run on more targets: the entries become the run's own (extra_entries.yaml,
    kept when the experiment runs again), in results.jsonl, the report and `richrep results`."""
    from richrep.config.entries import gather_entries
    from richrep.pipeline import evaluate_entries

    with guard(), progress_bar() as tick:
        new = gather_entries(entry or [], [suite] if suite else [])
        kw = {"replace": replace, "drop": drop, "allow_missing": allow_missing, "yes": yes}
        r, names = evaluate_entries(run_dir, new, log=tick.log, progress=tick, **kw)
    if names:
        results(run_dir, entry=names)
    else:
        say(f"extra entries of {run_dir}: {', '.join(e.name for e in r.extra_entries) or 'none'}")


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder.")],
    split: Annotated[
        str, typer.Option("--split", help="Source-task split to compare on: train, val or test.")
    ] = "test",
    measure: Annotated[
        list[str] | None, typer.Option("--measure", help="Measures (repeatable); default: all.")
    ] = None,
    max_samples: Annotated[
        int,
        typer.Option(
            "--max-samples", help="Subsample the split to this many examples.", metavar="N"
        ),
    ] = 5000,
    permutations: Annotated[
        int, typer.Option("--permutations", help="Permutations of the CKA test.", metavar="N")
    ] = 200,
    yes: Annotated[bool, YES] = False,
) -> None:
    """Are the seeds different? CKA/CCA matrices, unit matching, sparse prediction, clustering."""
    import numpy as np

    from richrep.analysis import DEFAULT_MEASURES
    from richrep.run import Run
    from richrep.stages.analyze import analyze as analyze_stage
    from richrep.stages.report import report

    with guard():
        r = Run.open(run_dir)
        with r.store.lock(), console.status("analyzing seeds…"):
            s = analyze_stage(
                r,
                split=split,
                measures=measure or DEFAULT_MEASURES,
                max_samples=max_samples,
                n_permutations=permutations,
                log=say,
                yes=yes,
            )
            if r.store.results.exists():
                report(r, log=say)
    table = Table(title=f"seed vs seed on {s['n']} {show(s['split'])} examples")
    for c in ("measure", "self", "seed vs seed", "untrained seed vs seed"):
        table.add_column(c, justify="right")
    for name, mat in s["measures"].items():
        m = np.asarray(mat)
        off = m[~np.eye(len(m), dtype=bool)]
        rnd = s.get("random_measures", {}).get(name)
        roff = "" if rnd is None else f"{np.asarray(rnd)[~np.eye(len(rnd), dtype=bool)].mean():.3f}"
        table.add_row(
            Text(show(name)), f"{s['self'][name]:.3f}", f"{off.mean():.3f} ± {off.std():.3f}", roff
        )
    console.print(table)
    say(
        f"one-to-one matched correlation (mean): {np.mean(s['matching']['one_to_one']):.3f}; "
        f"semi-matching: {np.mean(s['matching']['semi']):.3f}; "
        f"CKA permutation p = {s['permutation_test']['p_value']:.3g}"
    )


@app.command()
def runs(
    out: Annotated[Path, typer.Argument(help="Folder holding run folders.", metavar="DIR")] = Path(
        "runs"
    ),
    target: Annotated[
        str | None, typer.Option("--target", help="Compare runs on targets containing this text.")
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep", help="Only this sweep's runs, side by side (swept keys as columns)."
        ),
    ] = None,
) -> None:
    """List the runs of a folder: each run's full name, its state (complete, running, failed,
    stopped, with the stage reached or why it failed), and catK's gains per target; then each sweep's runs side by side."""
    from richrep.index import list_runs
    from richrep.report.runs_view import render_runs

    with guard():
        if not out.is_dir():
            raise RichrepError(f"{out} is not a folder of runs")
        listed = list_runs(out)
        if sweep is not None:
            return print_sweeps(out, listed, sweep, target)
    Console(highlight=False).print(render_runs(listed, f"runs in {out}", target))
    with guard():
        print_sweeps(out, listed, None, target)


class Kind(StrEnum):
    datasets = "datasets"
    shifts = "shifts"
    augmentations = "augmentations"
    encoders = "encoders"
    objectives = "objectives"
    members = "members"
    probes = "probes"
    protocols = "protocols"
    floors = "floors"
    engines = "engines"
    trackers = "trackers"
    measures = "measures"


@app.command("list")
def list_(
    kind: Annotated[Kind, typer.Argument(help="What to list.")],
    pattern: Annotated[
        str, typer.Option("--pattern", help="Only the names this glob matches.", metavar="GLOB")
    ] = "*",
) -> None:
    """Show a registry: datasets, shifts, augmentations, encoders, objectives, members, probes,
    protocols, floors, engines, trackers or measures."""
    from richrep.plugins import registry_of

    with guard():
        reg = registry_of(kind.value)
    table = Table(title=kind.value, show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("arguments")
    table.add_column("what it is")
    for e in (reg.entry(n) for n in reg.names(pattern)):
        about = e.meta.get("description") or e.summary
        table.add_row(Text(e.name), Text(e.signature()[len(e.name) :]), Text(about))
    console.print(table)


def main() -> None:  # pragma: no cover
    try:
        app()
    except RichrepError as e:
        fail(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
