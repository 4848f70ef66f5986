"""The evaluate stage: every suite entry's protocol on every representation, one results file
per entry (named by a hash of everything its rows depend on, with a sha256 sidecar), gathered
into ``results.jsonl``. A rerun evaluates only what changed; a truncated or modified results
file is moved to quarantine and recomputed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from richrep.config import Experiment, SuiteEntry, stable_hash
from richrep.data import Task, apply_shifts
from richrep.data.checks import value_range_warning
from richrep.errors import StoreError
from richrep.evaluation.protocols import Context, check_entries, protocol_of
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation, build_floors
from richrep.representations.floor_check import check_seeds, warn_below_floor
from richrep.results import ROW_VERSION, Row
from richrep.run import Run
from richrep.runtime.cpu_policy import threads_share_fast_matmul
from richrep.runtime.memory import MemoryBudget
from richrep.runtime.threads import ThreadBudget
from richrep.store import quarantine, read_jsonl, write_jsonl
from richrep.store.ledger import State, Status

Log = Callable[[str], None]
EVAL_PREFIX = "eval "  # progress of a suite entry: "eval <entry>" (representations done / total)
Progress = Callable[[str, int, int], None]


def preflight(run: Run) -> None:
    """Build every target on a miniature of the data (and check each protocol's needs) and
    every floor, so a bad class list, a shift that does not fit, a dataset whose inputs do not
    fit the encoders, a robustness target with other classes or a protocol or floor plug-in
    without its method fails before any training starts."""
    mini = run.base_task.miniature()
    source = apply_shifts(mini, [s.as_tuple() for s in run.exp.data.source], where="data.source")
    targets = [run.target(e, base=mini) for e in run.exp.evaluation.suite]
    check_entries(run.exp.evaluation.suite, source, targets)
    build_floors(run.exp.evaluation.floors)


def entry_hash(
    exp: Experiment, entry: SuiteEntry, reps: Sequence[Representation], status: dict[str, Status]
) -> str:
    return stable_hash(
        {
            "entry": entry.model_dump(mode="json"),
            "probe": exp.evaluation.probe.model_dump(mode="json"),
            "reps": [r.id for r in reps],
            "checkpoints": {
                k: v.meta.get("sha256") if v.ok else v.state.value
                for k, v in sorted(status.items())
            },
            "run": exp.run_id(),
            "rows": ROW_VERSION,
        }
    )


def check_members(run: Run, allow_missing: bool = False) -> dict[str, Status]:
    """Each member's status; a planned member that is missing, partial or corrupt is an error
    unless ``allow_missing`` (failed members are left out with their reason); no trained seed
    at all is an error that says why each failed."""
    status = run.statuses()
    bad = {n: s for n, s in status.items() if s.state not in (State.FINISHED, State.FAILED)}
    if bad and not allow_missing:
        listing = "; ".join(
            f"{n} is {s.state.value}{': ' + s.error if s.error else ''}" for n, s in bad.items()
        )
        raise StoreError(
            f"{run.store.root}: {listing}. Run `richrep run` on the experiment to (re)train "
            f"them, or pass --allow-missing to evaluate without them"
        )
    singles = {m.name: status[m.name] for m in run.members if m.kind == "single"}
    if not any(s.ok for s in singles.values()):
        why = "; ".join(
            f"{n}: {s.state.value}{' — ' + s.error if s.error else ''}" for n, s in singles.items()
        )
        raise StoreError(f"{run.store.root} has no trained seed to evaluate ({why})")
    return status


def evaluate(
    run: Run,
    *,
    log: Log = print,
    progress: Progress | None = None,
    allow_missing: bool = False,
) -> list[Row]:
    """Evaluate every suite entry not yet evaluated; gather all rows into ``results.jsonl``.

    Entries whose protocol works on features alone (registry meta ``parallel``: transfer,
    robustness, continual) are evaluated several at a time in threads (``runtime.eval_workers``),
    each with its share of the thread budget, sharing one feature cache and one context: a
    probe solve's many small operations gain little from a second core, two solves side by side
    gain nearly 2x. The others (fine-tuning, few-shot, …) follow one at a time on every thread.
    The budget (``runtime.threads``) is applied here, this process's edge, for the stage."""
    budget = ThreadBudget.resolve(run.exp.runtime.threads)
    with budget.applied(), MemoryBudget.resolve(run.exp.runtime.memory).applied():
        return _evaluate(run, budget, log, progress, allow_missing)


def _evaluate(
    run: Run, budget: ThreadBudget, log: Log, progress: Progress | None, allow_missing: bool
) -> list[Row]:
    exp, store = run.exp, run.store
    status = check_members(run, allow_missing)
    strays = run.ledger.strays(m.name for m in run.members)
    if strays:
        log(
            f"WARNING: ignored {len(strays)} file(s) in checkpoints/ that belong to no member of "
            f"this experiment: {', '.join(p.name for p in strays[:5])}{' …' if len(strays) > 5 else ''}"
        )
    reps = run.representations()
    cache = run.featurizer.cache
    files, pending = [], []
    for entry in exp.evaluation.suite:
        path = store.results_dir / f"{entry.name}-{entry_hash(exp, entry, reps, status)}.jsonl"
        files.append(path)
        if path.exists():
            try:
                read_jsonl(path)
                log(f"{entry.name}: reused {path.name}")
                continue
            except StoreError as e:
                log(f"{entry.name}: {e}; moved to {quarantine(path, str(e))}, evaluating again")
        pending.append((entry, path))
    if pending:
        ctx = run.context(reps)

        def one(item: tuple[SuiteEntry, Path]) -> None:
            evaluate_entry(run, ctx, reps, *item, log=log, progress=progress)

        together = [p for p in pending if PROTOCOLS.meta(p[0].protocol.name, "parallel", False)]
        workers = eval_workers(exp.runtime.eval_workers, budget, len(together), run.device)
        if workers > 1:
            share = budget.split(workers)[0].threads
            log(f"evaluating {len(together)} entries {workers} at a time, {share} thread(s) each")
            with threads_share_fast_matmul(run.device):
                in_threads(together, one, workers, budget)
            pending = [p for p in pending if p not in together]
        for item in pending:
            one(item)
    all_rows = [Row.from_dict(d) for f in files for d in read_jsonl(f)]
    sources = {"sources": [f.name for f in files]}  # what a finished run's done vouches for
    write_jsonl(store.results, [r.to_dict() for r in all_rows], sources)
    if any(f.name == "random" for f in exp.evaluation.floors):  # each seed vs untrained
        singles = [t for t in run.trained() if t.kind == "single"]
        checks = check_seeds(run.featurizer, singles, run.source_task.train, exp.seed)
        sources = {t.name: status[t.name].meta.get("imported_from") for t in singles}
        warn_below_floor(checks, log, sources)
    log(
        f"features: extracted {cache.misses}, read {cache.disk_hits} from the run folder's cache"
        if exp.evaluation.cache_features
        else f"features: extracted {cache.misses}"
    )
    return all_rows


def evaluate_entry(
    run: Run,
    ctx: Context,
    reps: Sequence[Representation],
    entry: SuiteEntry,
    path: Path,
    *,
    log: Log = print,
    progress: Progress | None = None,
) -> None:
    """One suite entry's rows on every representation, written to ``path`` (atomically)."""
    t0 = time.perf_counter()
    target = run.target(entry)
    info = target_facts(run, target, log, entry.name)
    protocol = protocol_of(entry)
    rows: list[Row] = []
    task = f"{EVAL_PREFIX}{entry.name}"
    if progress:
        progress(task, 0, len(reps))
    for i, rep in enumerate(reps):
        rows += protocol.evaluate(replace(ctx, info=info), rep, target, entry)
        if progress:
            progress(task, i + 1, len(reps))
    write_jsonl(path, [r.to_dict() for r in rows])
    log(f"{entry.name}: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")


def eval_workers(asked: int, budget: ThreadBudget, entries: int, device: torch.device) -> int:
    """How many suite entries to evaluate at once: ``asked``, or (0) one per thread of the
    ``budget`` on a CPU and one on an accelerator; never more than there are entries."""
    n = asked or (budget.threads if device.type == "cpu" else 1)
    return max(1, min(n, entries))


def in_threads(
    items: Sequence[Any], fn: Callable[[Any], None], workers: int, budget: ThreadBudget
) -> None:
    """``fn(item)`` for every item, ``workers`` at a time in threads that each apply their
    share of ``budget`` at their start (``torch.set_num_threads`` is the calling thread's
    budget: :mod:`richrep.runtime.threads`). The first error stops the items not yet started
    and is raised once the running ones finish (their results are written: no work is lost)."""
    share, memory = budget.split(workers)[0], MemoryBudget.here().split(workers)

    def start() -> None:
        share.apply()
        memory.apply()  # each worker's probes hold at most its share of runtime.memory

    pool = ThreadPoolExecutor(workers, "richrep-eval", initializer=start)
    try:
        futures = [pool.submit(fn, item) for item in items]
        for f in futures:
            f.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        budget.apply()  # the workers moved the default that threads started later begin with


def target_facts(run: Run, target: Task, log: Log, name: str) -> dict[str, Any]:
    """What every row of a target records about it (how its test split was made), and a
    warning when its inputs' range differs grossly from the source's."""
    facts: dict[str, Any] = {}
    info = target.recipe.get("info") or {}
    for key in ("test_split", "scaled"):
        if key in info:
            facts[key] = info[key]
    warn = value_range_warning(run.source_stats, target.test.x, name)
    if warn:
        log(f"WARNING: {warn}")
        facts["warning"] = warn
    return facts


def read_results(run: Run) -> list[Row]:
    """The run's result rows (checked against their sha256)."""
    if not run.store.results.exists():
        raise StoreError(
            f"{run.store.root} has no results.jsonl yet; run `richrep run` (or --only evaluate) first"
        )
    return [Row.from_dict(d) for d in read_jsonl(run.store.results)]
