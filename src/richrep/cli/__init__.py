"""The ``richrep`` command line."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from richrep import __version__
from richrep.cli.advise import advise, print_verdicts
from richrep.cli.common import console, err, fail, guard, guarded, say
from richrep.cli.data import data_app
from richrep.cli.progress import progress_bar
from richrep.cli.sweeps import OVERRIDES_HELP, SWEEP_HELP, print_sweeps, run_sweep
from richrep.errors import RichrepError
from richrep.report.text import show

app = typer.Typer(
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
        list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder holding run folders.")] = Path("runs"),
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
    sweep: Annotated[list[str] | None, typer.Option("--sweep", help=SWEEP_HELP)] = None,
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


def _print_ood(rows: list[Any], run_dir: Path, metric: str | None) -> None:
    """The ood entries as algorithm × initialization tables, one per selection rule."""
    from richrep.report.ood_tables import MEANING, RULES, ood_entries, ood_markdown, ood_table

    names = ood_entries(rows)
    if not names:
        raise RichrepError(f"{run_dir} has no entry evaluated by the ood protocol")
    for e in names:
        comp = ood_table(rows, e, metric or "worst_env_accuracy")
        for rule in RULES:
            print(f"**{e}** · {comp.metric} (%) · {rule} selection\n")
            print(ood_markdown(comp, rule))
            print(f"\n_{MEANING}_\n")


@app.command()
def results(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/<name>-<hash>).")],
    fmt: Annotated[
        Format, typer.Option("--format", help="table, markdown or csv (the tidy rows).")
    ] = Format.table,
    entry: Annotated[
        list[str] | None, typer.Option("--entry", help="Only these suite entries.")
    ] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Only this metric.")] = None,
    ood: Annotated[
        bool,
        typer.Option(
            "--ood",
            help="The ood entries as algorithm × initialization tables, one per selection "
            "rule (markdown, in %: mean ± 95% half-width (n); --metric, default "
            "worst_env_accuracy).",
        ),
    ] = False,
) -> None:
    """Print the comparison table: targets × representations, catK's gains.

    Every cell is the mean ± the half-width of its 95% Student-t interval over what varied
    (n = seeds or seed subsets × draws; few-shot: episodes), clipped to [0, 1] for
    accuracy-like metrics; one value or equal values give no interval."""
    from richrep.registry import did_you_mean
    from richrep.report.ood_tables import table_rows
    from richrep.report.tables import build_comparison, derived_note, metrics, to_csv, to_markdown
    from richrep.report.terminal import render_table
    from richrep.run import Run
    from richrep.stages.evaluate import read_results

    with guard():
        r = Run.open(run_dir)
        rows = read_results(r)
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
        if fmt == Format.csv:
            sys.stdout.write(to_csv(rows))
            return
        note = derived_note(rows)
        if note:
            say(note, style="yellow", to=err)
        if ood:
            _print_ood(rows, run_dir, metric)
            return
        order = [e.name for e in r.exp.evaluation.suite]
        rows = table_rows(rows)  # an ood entry's accuracy: its worst test environment
        for m in [metric] if metric else metrics(rows):
            comp = build_comparison(rows, order, metric=m)
            if fmt == Format.markdown:
                print(to_markdown(comp))
                print()
            else:
                console.print(render_table(comp, console.width, title=r.exp.name))
        if metric in (None, "accuracy"):
            print_verdicts(r, rows, order, markdown=fmt == Format.markdown)


app.command("advise")(guarded(advise))
app.add_typer(data_app, name="data")


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
        int, typer.Option("--max-samples", help="Subsample the split to this many examples.")
    ] = 5000,
    permutations: Annotated[
        int, typer.Option("--permutations", help="Permutations of the CKA test.")
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
    out: Annotated[Path, typer.Argument(help="Folder holding run folders.")] = Path("runs"),
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
    """List the runs of a folder, with catK's gain over single and wide per target; then each
    sweep's runs side by side."""
    from richrep.index import list_runs

    with guard():
        if not out.is_dir():
            raise RichrepError(f"{out} is not a folder of runs")
        listed = list_runs(out)
        if sweep is not None:
            return print_sweeps(out, listed, sweep, target)
    table = Table(title=Text(f"runs in {show(out)}"))
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
    fmt = lambda v: "" if v is None else f"{v:+.3f}"  # noqa: E731
    for r in listed:
        if r.get("error"):
            table.add_row(
                Text(show(r.get("run_id", "?"))),
                "",
                "",
                "",
                "",
                Text(show(f"broken: {r['error']}"), style="red"),
            )
            continue
        first = True
        for label, h in (r.get("headline") or {}).items():
            if target and target not in label:
                continue
            table.add_row(
                Text(show(r["run_id"])) if first else "",
                Text(show(r.get("finished") or "")) if first else "",
                Text(show(f"{r['dataset']} / {r['encoder']}")) if first else "",
                str(r["seeds"]) if first else "",
                str(r["epochs"]) if first else "",
                Text(show(label)),
                "" if h.get("cat") is None else f"{h['cat']:.3f}",
                fmt(h.get("gain_single")),
                fmt(h.get("gain_wide")),
            )
            first = False
    console.print(table)
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
def list_(kind: Annotated[Kind, typer.Argument(help="What to list.")], pattern: str = "*") -> None:
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
