"""The whole job: data → training → representations → evaluation → report, through the run
folder. Each stage reads what the one before wrote; ``only`` reruns one stage.

A finished run's ``done`` marker records what it vouches for (the results' and report's sizes
and hashes, the checkpoints' sidecars); rerunning a "complete" run checks them cheaply and
redoes whatever is missing or changed instead of reporting that there is nothing to do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from richrep.config import Experiment, dump_experiment, stable_hash
from richrep.environment import describe
from richrep.run import Run
from richrep.stages.budget import check_run
from richrep.stages.evaluate import evaluate, preflight
from richrep.stages.report import report
from richrep.stages.train import train
from richrep.store import read_json, sha256_file, verify, write_atomic, write_json
from richrep.training.device import resolve_device

Stage = Literal["train", "evaluate", "report"]
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def results_hash(exp: Experiment) -> str:
    """What the results depend on: the experiment without its runtime section."""
    return stable_hash(exp.results_identity())


def vouched(run: Run) -> dict[str, Any]:
    """What ``done`` vouches for: the results' and report's sizes and sha256, the checkpoints'
    sizes."""
    out: dict[str, Any] = {}
    for p in (run.store.results, run.store.report):
        if p.exists():
            out[p.name] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    for m in run.members:
        p = run.ledger.final(m.name)
        if p.exists():
            out[f"checkpoints/{p.name}"] = {"bytes": p.stat().st_size}
    return out


def is_complete(run: Run, log: Log = print) -> bool:
    """Whether ``done`` exists for this experiment and everything it vouches for is intact."""
    done = run.store.done
    if not done.exists():
        return False
    try:
        record = read_json(done)
    except Exception:  # noqa: BLE001 - an unreadable marker vouches for nothing
        return False
    if not isinstance(record, dict) or record.get("results_hash") != results_hash(run.exp):
        return False
    for rel, want in record.get("files", {}).items():
        p = run.store.root / rel
        if not p.exists() or p.stat().st_size != want.get("bytes"):
            log(f"{rel} is missing or changed since the run finished; redoing what it needs")
            return False
        if "sha256" in want and sha256_file(p) != want["sha256"]:
            log(f"{rel} changed since the run finished; redoing what it needs")
            return False
    if not verify(run.store.results):
        log("results.jsonl does not match its sidecar; redoing the evaluation")
        return False
    return True


def run_experiment(
    exp: Experiment,
    out: Path | str,
    *,
    only: Stage | None = None,
    wait: bool = False,
    log: Log = print,
    progress: Progress | None = None,
    allow_missing: bool = False,
    yes: bool = False,
) -> Run:
    """Run (or resume) ``exp`` under ``out``; return its :class:`Run`. Finished work is reused.
    Work estimated above richrep's limits (:mod:`richrep.limits`) is refused unless ``yes``."""
    resolve_device(exp.runtime.device)  # an unavailable device fails before anything else
    resolve_device(exp.runtime.evaluation_device)
    run = Run.create(exp, Path(out))
    store = run.store
    fresh = not store.root.exists()  # refused before its folder is made; else once it is locked
    stages = {"train": only in (None, "train"), "evaluate": only in (None, "evaluate"), "yes": yes}
    if fresh:
        check_run(run, **stages)
    with store.lock(wait=wait):
        store.sweep_temporaries()
        if only is None and is_complete(run, log):
            log(f"{store.root} is complete and up to date; nothing to do")
            return run
        if not fresh:
            check_run(run, **stages)
        write_atomic(store.root / "config.yaml", dump_experiment(exp).encode())
        run.mark_format()
        preflight(run)
        env = describe(run.device)
        task = run.source_task
        env["source_task"] = {
            "name": task.name,
            "hash": task.hash,
            "train": len(task.train),
            "val": len(task.val),
            "test": len(task.test),
        }
        write_json(store.root / "env.json", env)
        if only in (None, "train"):
            train(run, log=log, progress=progress)
        if only in (None, "evaluate"):
            evaluate(run, log=log, progress=progress, allow_missing=allow_missing)
        if only in (None, "report"):
            report(run, log=log)
        if only is None:
            record = {"results_hash": results_hash(exp), "files": vouched(run)}
            write_atomic(store.done, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        if only in (None, "report"):
            from richrep.index import record as index_record

            index_record(store)
    return run


def load_run(run_dir: Path | str) -> tuple[Experiment, Run]:
    """The experiment and :class:`Run` of an existing run folder."""
    run = Run.open(run_dir)
    return run.exp, run
