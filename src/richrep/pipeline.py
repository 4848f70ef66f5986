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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from richrep.config import Experiment, dump_experiment, stable_hash
from richrep.errors import StoreError
from richrep.run import Run
from richrep.runtime.device import resolve_device
from richrep.runtime.environment import describe
from richrep.stages.evaluate import evaluate, preflight
from richrep.stages.report import report
from richrep.stages.train import train
from richrep.store import read_json, sha256_file, sidecar, verify, write_atomic, write_json
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
    files = [run.store.results, run.store.report]
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


def run_experiment(
    exp: Experiment,
    out: Path | str,
    *,
    only: Stage | None = None,
    wait: bool = False,
    log: Log = print,
    progress: Progress | None = None,
    allow_missing: bool = False,
) -> Run:
    """Run (or resume) ``exp`` under ``out``; return its :class:`Run`. Finished work is reused."""
    resolve_device(exp.runtime.device)  # an unavailable device fails before anything else
    resolve_device(exp.runtime.evaluation_device)
    run = Run.create(exp, Path(out))
    store = run.store
    checked = not store.exists()
    if checked:  # a new run: nothing is written under out until the experiment passes
        preflight(run)
    with store.lock(wait=wait), recording(store):  # a failure is recorded for `richrep runs`
        store.refuse_links()
        store.sweep_temporaries()
        if only is None and is_complete(run, log):
            log(f"{store.root} is complete and up to date; nothing to do")
            return run
        if not checked:  # before config.yaml is replaced by this experiment's
            preflight(run)
        write_atomic(store.root / "config.yaml", dump_experiment(exp).encode())
        run.mark_format()
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
