"""The whole job: data → training → representations → evaluation → report, through the store.

Each stage reads what the one before wrote; ``only`` reruns one stage from the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from richrep.config import Experiment, dump_experiment, stable_hash
from richrep.data import Task, apply_shifts, load_task
from richrep.environment import describe
from richrep.errors import StoreError
from richrep.store import RunStore, read_json, write_atomic, write_json
from richrep.training.device import resolve_device
from richrep.training.engine import Progress
from richrep.training.members import plan_members

Stage = Literal["train", "evaluate", "report"]
Log = Callable[[str], None]


def base_task(exp: Experiment) -> Task:
    d = exp.data
    return load_task(
        d.dataset,
        d.params,
        val_fraction=d.val_fraction,
        max_train_per_class=d.max_train_per_class,
        seed=exp.seed,
    )


def source_task(exp: Experiment, base: Task | None = None) -> Task:
    """The task the members train on: the dataset with the ``data.source`` shifts applied."""
    base = base if base is not None else base_task(exp)
    return apply_shifts(base, [s.as_tuple() for s in exp.data.source], where="data.source")


def preflight(exp: Experiment, base: Task) -> None:
    """Apply the source and every suite entry's shifts to a miniature of the data, so a bad
    class list, a shift that does not fit the data or a robustness target with other classes
    fails before any training starts."""
    from richrep.evaluation.protocols import check_target

    mini = base.miniature()
    source = apply_shifts(mini, [s.as_tuple() for s in exp.data.source], where="data.source")
    for i, entry in enumerate(exp.evaluation.suite):
        target = apply_shifts(
            mini, [s.as_tuple() for s in entry.shifts], where=f"evaluation.suite[{i}].shifts"
        )
        check_target(entry, source, target)


def full_hash(exp: Experiment) -> str:
    return stable_hash(
        exp.model_dump(
            mode="json",
            exclude={
                "training": {"device", "threads", "engine", "strategy", "ray"},
                "evaluation": {"device"},
            },
        )
    )


def open_run(exp: Experiment, out: Path) -> RunStore:
    store = RunStore(Path(out) / exp.run_id())
    if store.root.resolve().parent != Path(out).resolve():
        raise StoreError(f"run name {exp.name!r} would leave the output directory {out}")
    return store


def run_experiment(
    exp: Experiment,
    out: Path,
    *,
    only: Stage | None = None,
    wait: bool = False,
    log: Log = print,
    progress: Progress | None = None,
) -> RunStore:
    """Run (or resume) ``exp`` under ``out``; return its store. Finished work is reused."""
    store = open_run(exp, out)
    with store.lock(wait=wait):
        if (
            only is None
            and store.done.exists()
            and store.done.read_text().strip() == full_hash(exp)
        ):
            log(f"{store.root} is complete and up to date; nothing to do")
            return store
        write_atomic(store.root / "config.yaml", dump_experiment(exp).encode())
        device = resolve_device(exp.training.device)
        t0 = time.perf_counter()
        base = base_task(exp)
        preflight(exp, base)
        task = source_task(exp, base)
        env = describe(device)
        env["source_task"] = {
            "name": task.name,
            "hash": task.hash,
            "train": len(task.train),
            "val": len(task.val),
            "test": len(task.test),
        }
        write_json(store.root / "env.json", env)
        members = plan_members(exp, task.input_shape)
        if only in (None, "train"):
            from richrep.training.engine import train_with_engine

            status = train_with_engine(exp, task, members, store, progress)
            failed = [m for m, s in status.items() if "failed" in s]
            log(
                f"trained {len(members) - len(failed)}/{len(members)} members in "
                f"{time.perf_counter() - t0:.1f} s"
                + (f"; failed: {', '.join(failed)}" if failed else "")
            )
        if only in (None, "evaluate"):
            from richrep.evaluation.suite import evaluate_run

            evaluate_run(exp, task, members, store, log=log, base=base)
        if only in (None, "report"):
            from richrep.report.html import write_report

            write_report(store, log=log)
        if only is None:
            write_atomic(store.done, (full_hash(exp) + "\n").encode())
        if only in (None, "report"):
            from richrep.index import record

            record(store)
    return store


def load_run(run_dir: Path) -> tuple[Experiment, RunStore]:
    """The experiment and store of an existing run folder."""
    from richrep.config import load_experiment

    store = RunStore(Path(run_dir))
    if not store.exists():
        raise StoreError(f"{run_dir} is not a richrep run folder (no config.yaml)")
    return load_experiment(store.root / "config.yaml"), store


def read_env(store: RunStore) -> dict:
    return read_json(store.root / "env.json")
