"""Sweeps: every combination of some keys' values (a Cartesian product), each run as its own
run, one at a time, and the runs of a folder grouped by sweep for side-by-side listing.

Every combination is validated before any run starts, and two combinations that would share a
run folder (they differ only in ``runtime`` or ``evaluation``, which are not the folder's
identity) are refused. A combination that fails does not stop the others. Each run records the
sweep (its id, the swept keys, its combination) in its ``overrides.json``
(:mod:`richrep.store.origin`), so ``richrep runs`` can put the sweep's runs side by side.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from richrep.config import Experiment, stable_hash
from richrep.config.overrides import (
    Axis,
    axis,
    experiment_with,
    format_value,
    load_raw,
    parse_axis,
    parse_override,
)
from richrep.errors import ConfigError, RichrepError
from richrep.index import list_runs, run_folders
from richrep.pipeline import Log, Progress, Stage, run_experiment
from richrep.run import Run
from richrep.store.origin import Origin, read_origin

Axes = Mapping[str, Sequence[Any]] | Sequence[str | Axis]


@dataclass
class Combination:
    """One combination of a sweep: its place (from 1), swept key → value, the overrides that
    make it and the experiment they give."""

    index: int
    values: dict[str, Any]
    overrides: list[str]
    exp: Experiment

    def label(self) -> str:
        return label(self.values)


def label(values: Mapping[str, Any]) -> str:
    """A combination as ``key=value, key=value``."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in values.items())


@dataclass
class Outcome:
    """How a combination's run went: ``done`` (``run`` is its Run) or ``failed`` (``error``)."""

    combination: Combination
    path: Path
    state: Literal["done", "failed"]
    error: str = ""
    run: Run | None = None


@dataclass
class SweepResult:
    """A sweep's id, its swept keys and each combination's outcome, in order."""

    id: str
    keys: list[str]
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state == "failed"]


def _axes(axes: Axes) -> list[Axis]:
    if isinstance(axes, Mapping):
        return [axis(k, v) for k, v in axes.items()]
    if isinstance(axes, str):
        return [parse_axis(axes)]
    return [a if isinstance(a, Axis) else parse_axis(a) for a in axes]


def plan_sweep(
    experiment: Experiment | Path | str,
    axes: Axes,
    overrides: Sequence[str] = (),
    prepare: Callable[[Experiment], Experiment] | None = None,
) -> tuple[str, list[str], list[Combination]]:
    """The sweep's id, its keys and every combination, each validated (``prepare``: a last
    change to each experiment, e.g. the command line's ``--device``). Raises ConfigError
    before any work for a bad axis, a bad combination or two combinations of one run."""
    parsed = _axes(axes)
    if not parsed:
        raise ConfigError("a sweep needs at least one KEY=V1,V2,... axis")
    keys = [a.key for a in parsed]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"sweep: {repeated} swept twice; give each key one axis")
    fixed = {parse_override(o).key: o for o in overrides}
    both = [k for k in keys if k in fixed]
    if both:
        raise ConfigError(
            f"sweep: {both} both overridden ({', '.join(repr(fixed[k]) for k in both)}) and "
            f"swept; drop one"
        )
    if isinstance(experiment, Experiment):
        raw, source = experiment.model_dump(mode="json"), repr(experiment.name)
    else:
        raw, source = load_raw(experiment), str(Path(experiment))
    combos, folders = [], {}
    for i, values in enumerate(itertools.product(*(a.values for a in parsed)), 1):
        made = [*overrides, *(a.override(v) for a, v in zip(parsed, values, strict=True))]
        chosen = dict(zip(keys, values, strict=True))
        try:
            exp = experiment_with(raw, made, source)
            exp = prepare(exp) if prepare is not None else exp
        except ConfigError as e:
            raise ConfigError(f"sweep combination {label(chosen)}: {e}") from None
        combo = Combination(i, chosen, made, exp)
        run_id = combo.exp.run_id()
        if run_id in folders:
            raise ConfigError(
                f"sweep combinations {folders[run_id].label()} and {combo.label()} are the "
                f"same run ({run_id}): a run folder is its data, model and training, not its "
                f"runtime or evaluation settings; sweep keys that change what is trained"
            )
        folders[run_id] = combo
        combos.append(combo)
    sweep_id = f"{combos[0].exp.name}-sweep-{stable_hash([keys, list(folders)], 8)}"
    return sweep_id, keys, combos


def sweep(
    experiment: Experiment | Path | str,
    axes: Axes,
    *,
    out: Path | str = "runs",
    overrides: Sequence[str] = (),
    prepare: Callable[[Experiment], Experiment] | None = None,
    only: Stage | None = None,
    wait: bool = False,
    allow_missing: bool = False,
    yes: bool = False,
    log: Log = print,
    progress: Progress | None = None,
    announce: Callable[[Combination, int, Path], None] | None = None,
) -> SweepResult:
    """Run every combination of ``axes`` (``{"training.seeds": [2, 3]}`` or
    ``["training.seeds=2,3"]``) on ``experiment`` (a file or an Experiment) with
    ``overrides``, one run after another under ``out``; return each one's outcome. A failed
    combination is logged and the next one runs (``SweepResult.failed`` lists them)."""
    sweep_id, keys, combos = plan_sweep(experiment, axes, overrides, prepare)
    source = None if isinstance(experiment, Experiment) else str(Path(experiment).absolute())
    started = dt.datetime.now().isoformat(timespec="seconds")
    result = SweepResult(sweep_id, keys)
    for combo in combos:
        path = Path(out) / combo.exp.run_id()
        if announce is not None:
            announce(combo, len(combos), path)
        record = {"id": sweep_id, "keys": keys, "values": combo.values}
        record |= {"index": combo.index, "of": len(combos), "started": started}
        origin = Origin(combo.overrides, record, source)
        try:
            run = run_experiment(
                combo.exp,
                out,
                origin=origin,
                only=only,
                wait=wait,
                log=log,
                progress=progress,
                allow_missing=allow_missing,
                yes=yes,
            )
        except Exception as e:  # noqa: BLE001 - a failed combination does not stop the others
            why = str(e) if isinstance(e, RichrepError) else f"{type(e).__name__}: {e}"
            log(f"{combo.label()}: failed: {why}")
            result.outcomes.append(Outcome(combo, path, "failed", why))
        else:
            result.outcomes.append(Outcome(combo, run.store.root, "done", run=run))
    return result


@dataclass
class SweepGroup:
    """The runs of one sweep in a folder, in the sweep's order: each a dict with ``run_id``,
    ``values`` (swept key → value), ``index`` and ``row`` (its listing row, None when the
    run has no results yet)."""

    id: str
    keys: list[str]
    started: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def sweep_groups(out: Path, listed: Sequence[dict[str, Any]] | None = None) -> list[SweepGroup]:
    """The sweeps of the runs in ``out``, oldest first, each with its runs and their
    ``richrep runs`` rows (``listed``: :func:`~richrep.index.list_runs`'s, read if None)."""
    rows = {r["run_id"]: r for r in (list_runs(out) if listed is None else listed)}
    groups: dict[str, SweepGroup] = {}
    for folder in run_folders(out):
        for s in read_origin(folder)["sweeps"]:
            group = groups.setdefault(s["id"], SweepGroup(s["id"], s["keys"], s["started"]))
            group.started = max(group.started, s["started"])
            group.runs.append(
                {
                    "run_id": folder.name,
                    "values": s["values"],
                    "index": s["index"],
                    "row": rows.get(folder.name),
                }
            )
    for g in groups.values():
        g.runs.sort(key=lambda r: (r["index"] is None, r["index"] or 0, r["run_id"]))
    return sorted(groups.values(), key=lambda g: (g.started, g.id))
