"""The whole job: data → training → representations → evaluation → report, through the run
folder. Each stage reads what the one before wrote; ``only`` reruns one stage.

A finished run's ``done`` marker records what it vouches for: the size and sha256 of the
results, the report, every checkpoint and every suite entry's results file. Rerunning a
"complete" run checks each against it (and the files with sidecars against their sidecars: a
hash of each file, remembered within the process) and redoes whatever is missing or changed —
retraining a member, evaluating an entry again — instead of reporting that there is nothing
to do. Nothing is written under ``out`` until the experiment passes its pre-flight check.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from richrep import __version__
from richrep.config import Experiment, SuiteEntry, dump_experiment, stable_hash
from richrep.config.entries import merge_extras, resolve_entries
from richrep.errors import ConfigError, StoreError
from richrep.run import Run
from richrep.runtime.device import resolve_device
from richrep.runtime.environment import describe
from richrep.stages.budget import check_evaluation, check_run
from richrep.stages.evaluate import evaluate, preflight
from richrep.stages.report import report
from richrep.stages.track import open_tracker, track
from richrep.stages.train import train
from richrep.store import read_json, sha256_file, sidecar, verify, write_atomic, write_json
from richrep.store.origin import Origin, write_origin
from richrep.store.progress import recording

Stage = Literal["train", "evaluate", "report"]
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def results_hash(exp: Experiment) -> str:
    """What the results depend on: the experiment without its runtime section."""
    return stable_hash(exp.results_identity())


def vouched(run: Run) -> dict[str, Any]:
    """What ``done`` vouches for: the size and sha256 of the results, the report, each finished
    member's checkpoint and each suite entry's results file (those with a sidecar say so)."""
    root = run.store.root
    out: dict[str, Any] = {}
    files = [run.store.results, run.store.report, run.store.extra_entries]
    files += [run.ledger.final(m) for m in run.ledger.finished(m.name for m in run.members)]
    with contextlib.suppress(StoreError, FileNotFoundError):
        sources = read_json(sidecar(run.store.results)).get("sources", [])
        files += [run.store.results_dir / name for name in sources]
    for p in files:
        if p.is_file():
            side = sidecar(p).is_file() and p.suffix != ".html"
            digest = read_json(sidecar(p))["sha256"] if side else sha256_file(p)
            out[str(p.relative_to(root))] = {
                "bytes": p.stat().st_size,
                "sha256": digest,
                "sidecar": side,
            }
    return out


def _changed(p: Path, want: dict[str, Any]) -> str:
    """Why ``p`` no longer is what ``done`` vouched for ("" if it is)."""
    if not p.is_file() or p.is_symlink():
        return "missing since the run finished"
    if "sha256" not in want:
        return "vouched for by its size only (a done marker of an older richrep)"
    if p.stat().st_size != want.get("bytes"):
        return "its size changed since the run finished"
    if want.get("sidecar"):
        side = sidecar(p)
        if not side.is_file():
            return f"its sidecar {side.name} is gone"
        if not verify(p) or read_json(side).get("sha256") != want["sha256"]:
            return "it no longer matches the sha256 recorded when the run finished"
    elif sha256_file(p) != want["sha256"]:
        return "it no longer matches the sha256 recorded when the run finished"
    return ""


def is_complete(run: Run, log: Log = print) -> bool:
    """Whether ``done`` exists for this experiment and everything it vouches for is intact:
    every file's size and sha256 (through its sidecar where it has one)."""
    done = run.store.done
    if not done.exists():
        return False
    try:
        record = read_json(done)
    except Exception:  # noqa: BLE001 - an unreadable marker vouches for nothing
        return False
    if not isinstance(record, dict) or record.get("results_hash") != results_hash(run.exp):
        return False
    extras = str(run.store.extra_entries.relative_to(run.store.root))
    if run.store.extra_entries.exists() and extras not in record.get("files", {}):
        log(f"{extras}: added since the run finished; redoing what it needs")
        return False
    for rel, want in record.get("files", {}).items():
        try:
            why = _changed(run.store.root / rel, want if isinstance(want, dict) else {})
        except StoreError as e:
            why = f"unreadable ({e})"
        if why:
            log(f"{rel}: {why}; redoing what it needs")
            return False
    if not verify(run.store.results):
        log("results.jsonl does not match its sidecar; redoing the evaluation")
        return False
    return True


def mark_done(run: Run) -> None:
    """Write ``done``: the run is complete, vouching for its files (:func:`vouched`)."""
    record = {"results_hash": results_hash(run.exp), "files": vouched(run)}
    write_atomic(run.store.done, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def with_overrides(
    exp: Experiment | Path | str, overrides: Sequence[str], origin: Origin | None = None
) -> tuple[Experiment, Origin]:
    """``exp`` (an experiment or its file) with ``overrides`` applied, and what to record of
    it: ``origin`` with these overrides added (and the file)."""
    from richrep.config.overrides import experiment_with, load_with_overrides

    origin = origin or Origin()
    source = origin.experiment
    if not isinstance(exp, Experiment):
        source = source or str(Path(exp).absolute())
        exp = load_with_overrides(exp, overrides)
    elif overrides:
        exp = experiment_with(exp.model_dump(mode="json"), overrides, repr(exp.name))
    return exp, Origin([*origin.overrides, *overrides], origin.sweep, source)


def run_experiment(
    exp: Experiment | Path | str,
    out: Path | str,
    *,
    overrides: Sequence[str] = (),
    origin: Origin | None = None,
    only: Stage | None = None,
    wait: bool = False,
    log: Log = print,
    progress: Progress | None = None,
    allow_missing: bool = False,
    yes: bool = False,
) -> Run:
    """Run (or resume) ``exp`` (an experiment or its file) under ``out``; return its
    :class:`Run`. Finished work is reused. ``overrides`` (``KEY=VALUE``, see
    :mod:`richrep.config.overrides`) are applied first; they and ``origin`` (overrides a caller
    applied itself, the sweep it runs in) are recorded in the folder's ``overrides.json``.
    With ``runtime.track``, the run is then logged to that tracker (once per state). Work
    estimated above richrep's limits (:mod:`richrep.runtime.limits`) is refused unless ``yes``."""
    exp, origin = with_overrides(exp, overrides, origin)
    resolve_device(exp.runtime.device)  # an unavailable device fails before anything else
    resolve_device(exp.runtime.evaluation_device)
    tracker = open_tracker(exp.runtime.track)  # and so does a tracker's missing library
    run = Run.create(exp, Path(out))
    store = run.store
    checked = not store.exists()
    stages = {"train": only in (None, "train"), "evaluate": only in (None, "evaluate"), "yes": yes}
    if checked:  # a new run: nothing is written under out until the experiment passes
        preflight(run)
        check_run(run, **stages)
    with store.lock(wait=wait), recording(store):  # a failure is recorded for `richrep runs`
        store.refuse_links()
        store.sweep_temporaries()
        write_origin(store.root, origin)
        if only is None and is_complete(run, log):
            log(f"{store.root} is complete and up to date; nothing to do")
            if tracker is not None:
                track(run, tracker, log=log)
            return run
        if not checked:  # before config.yaml is replaced by this experiment's
            preflight(run)
            check_run(run, **stages)
        write_atomic(store.config, dump_experiment(exp).encode())
        store.mark_format(__version__)
        env = describe(run.device)
        task = run.source_task
        env["source_task"] = {
            "name": task.name,
            "hash": task.hash,
            "train": len(task.train),
            "val": len(task.val),
            "test": len(task.test),
        }
        write_json(store.env, env)
        if only in (None, "train"):
            train(run, log=log, progress=progress)
        if only in (None, "evaluate"):
            evaluate(run, log=log, progress=progress, allow_missing=allow_missing)
        if only in (None, "report"):
            report(run, log=log)
        if only is None:
            mark_done(run)
        if only in (None, "report"):
            from richrep.index import record as index_record

            index_record(store)
            if tracker is not None:
                track(run, tracker, log=log)
    return run


def evaluate_entries(
    path: Path | str,
    entries: list[SuiteEntry],
    *,
    replace: bool = False,
    drop: list[str] | None = None,
    wait: bool = False,
    log: Log = print,
    progress: Progress | None = None,
    allow_missing: bool = False,
    yes: bool = False,
) -> tuple[Run, list[str]]:
    """Evaluate ``entries`` on the run in folder ``path`` and keep them as its extra entries
    (``extra_entries.yaml``; ``drop`` removes some): they are evaluated, listed and reported
    with the experiment's own suite, and kept when the experiment runs again. Rebuilds
    ``results.jsonl``, the report and the index row; return the run and the new entries' names.
    An entry equal to one of the run's reuses its rows; one that clashes, or whose probe fits
    pass richrep's limits (unless ``yes``), is refused before any work."""
    run = Run.open(path)
    resolve_device(run.exp.runtime.evaluation_device)
    tracker = open_tracker(run.exp.runtime.track)
    new = resolve_entries(run.exp, entries, "entry")
    if not yes:
        alone = run.exp.evaluation.model_copy(update={"suite": new})
        check_evaluation(run.exp.model_copy(update={"evaluation": alone}))
    store = run.store
    with store.lock(wait=wait):
        store.refuse_links()
        store.sweep_temporaries()
        complete = is_complete(run, log=lambda m: None)
        kept = merge_extras(
            run.exp.evaluation.suite, run.extra_entries, new, replace=replace, where=str(store.root)
        )
        unknown = sorted(set(drop or []) - {e.name for e in kept})
        if unknown:
            have = [e.name for e in kept]
            raise ConfigError(f"{store.root} has no extra entry {unknown} to drop; it has {have}")
        kept = [e for e in kept if e.name not in (drop or [])]
        preflight(run, new)
        evaluate(run, log=log, progress=progress, allow_missing=allow_missing, extras=kept)
        if kept != run.extra_entries:
            run.extras.write(kept)
        report(run, log=log)
        if complete:  # still complete: done vouches for the new files
            mark_done(run)
        from richrep.index import record as index_record

        index_record(store)
        if tracker is not None:
            track(run, tracker, log=log)
    return run, [e.name for e in new]
