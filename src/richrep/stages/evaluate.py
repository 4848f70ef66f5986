"""The evaluate stage: every suite entry's protocol on every representation, one results file
per entry (named by a hash of everything its rows depend on, with a sha256 sidecar), gathered
into ``results.jsonl``. A rerun evaluates only what changed; a truncated or modified results
file is moved to quarantine and recomputed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from richrep.config import SuiteEntry
from richrep.config.entries import merge_suite
from richrep.data import apply_shifts
from richrep.errors import StoreError
from richrep.evaluation import stored
from richrep.evaluation.protocols import check_entries
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation, build_floors
from richrep.representations.floor_check import check_seeds, warn_below_floor
from richrep.results import Row
from richrep.run import Run
from richrep.runtime.cpu_policy import threads_share_fast_matmul
from richrep.runtime.memory import MemoryBudget
from richrep.runtime.progress import Progress, plan
from richrep.runtime.threads import ThreadBudget
from richrep.stages.entry import EVAL_PREFIX, Log, entry_work, evaluate_entry
from richrep.stages.remote import evaluate_remotely, remote_engine
from richrep.store import quarantine, read_jsonl, write_jsonl
from richrep.store.ledger import State, Status


def preflight(run: Run, entries: Sequence[SuiteEntry] | None = None) -> None:
    """Build every target (default: of the run's entries) on a miniature of the data (and check
    each protocol's needs) and every floor, so a bad class list, a shift that does not fit, a
    dataset whose inputs do not fit the encoders, a robustness target with other classes or a
    protocol or floor plug-in without its method fails before any training starts."""
    entries = run.suite if entries is None else entries
    mini = run.base_task.miniature()
    source = apply_shifts(mini, [s.as_tuple() for s in run.exp.data.source], where="data.source")
    targets = [run.target(e, base=mini) for e in entries]
    check_entries(entries, source, targets)
    build_floors(run.exp.evaluation.floors)


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
    extras: Sequence[SuiteEntry] | None = None,
) -> list[Row]:
    """Evaluate every entry of the run (the experiment's suite, then its extra entries, or
    ``extras`` in their place) not yet evaluated; gather all rows into ``results.jsonl``.

    Entries whose protocol works on features alone (registry meta ``parallel``: transfer,
    robustness, continual) are evaluated several at a time in threads (``runtime.eval_workers``),
    each with its share of the thread budget, sharing one feature cache and one context: a
    probe solve's many small operations gain little from a second core, two solves side by side
    gain nearly twice as much. The others (fine-tuning, few-shot, …) follow one at a time on every thread.
    The budget (``runtime.threads``) is applied here, this process's edge, for the stage."""
    budget = ThreadBudget.resolve(run.exp.runtime.threads)
    with budget.applied(), MemoryBudget.resolve(run.exp.runtime.memory).applied():
        return _evaluate(run, budget, log, progress, allow_missing, extras)


def _evaluate(
    run: Run,
    budget: ThreadBudget,
    log: Log,
    progress: Progress | None,
    allow_missing: bool,
    extras: Sequence[SuiteEntry] | None,
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
    entries, shadowed = merge_suite(
        exp.evaluation.suite, run.extra_entries if extras is None else extras
    )
    for e in shadowed:
        log(
            f"NOTE: the experiment's suite entry {e.name} differs from the run's extra entry of "
            f"that name ({store.extra_entries}): the experiment's counts, the extra's rows are "
            f"left out (add it again under another name: richrep evaluate {store.root} --entry …)"
        )
    files, pending = [], []
    for entry in entries:
        path = stored.entry_file(store.results_dir, exp, entry, reps, status)
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
        _evaluate_pending(run, reps, pending, budget, log, progress)
    all_rows = [Row.from_dict(d) for f in files for d in read_jsonl(f)]
    sources = {"sources": [f.name for f in files]}  # what a finished run's done vouches for
    write_jsonl(store.results, [r.to_dict() for r in all_rows], sources)
    left = stored.left_out(store.results_dir, {e.name for e in entries})
    if left:
        log(f"NOTE: {stored.left_out_message(left, store.root)}")
    if any(f.name == "random" for f in exp.evaluation.floors):  # each seed vs untrained
        singles = [t for t in run.trained() if t.kind == "single"]
        checks = check_seeds(run.featurizer, singles, run.source_task.train, exp.seed)
        sources = {t.name: status[t.name].meta.get("imported_from") for t in singles}
        warn_below_floor(checks, sources)
    log(
        f"features: extracted {cache.misses}, read {cache.disk_hits} from the run folder's cache"
        if exp.evaluation.cache_features
        else f"features: extracted {cache.misses}"
    )
    return all_rows


def _evaluate_pending(
    run: Run,
    reps: Sequence[Representation],
    pending: list[tuple[SuiteEntry, Path]],
    budget: ThreadBudget,
    log: Log,
    progress: Progress | None,
) -> None:
    """Evaluate the ``pending`` entries into their files: as tasks of an engine that runs
    them (:mod:`.remote`), else the parallel ones side by side in threads, then the others."""
    ctx = run.context(reps)
    work = {e.name: entry_work(run, ctx, reps, e) for e, _ in pending}
    for e, _ in pending:  # the whole stage's work, known before it starts
        plan(progress, f"{EVAL_PREFIX}{e.name}", sum(work[e.name][0]), work[e.name][1])

    def one(item: tuple[SuiteEntry, Path]) -> None:
        w = work[item[0].name]
        evaluate_entry(run, ctx, reps, *item, log=log, progress=progress, work=w)

    together = [p for p in pending if PROTOCOLS.meta(p[0].protocol.name, "parallel", False)]
    workers = eval_workers(run.exp.runtime.eval_workers, budget, len(together), run.device)
    engine = remote_engine(run, log)
    if engine is not None:  # each entry a task, with the share it would have here
        alone = (budget.threads, 1, False)
        side_by_side = (budget.split(workers)[0].threads, workers, True)
        shares = [side_by_side if workers > 1 and p in together else alone for p in pending]
        evaluate_remotely(run, engine, pending, shares, work, log, progress)
        return
    if workers > 1:
        share = budget.split(workers)[0].threads
        log(f"evaluating {len(together)} entries {workers} at a time, {share} thread(s) each")
        with threads_share_fast_matmul(run.device):
            in_threads(together, one, workers, budget)
        pending = [p for p in pending if p not in together]
    for item in pending:
        one(item)


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


def read_results(run: Run) -> list[Row]:
    """The run's result rows (checked against their sha256)."""
    if not run.store.results.exists():
        raise StoreError(
            f"{run.store.root} has no results.jsonl yet; run `richrep run` (or --only evaluate) first"
        )
    return [Row.from_dict(d) for d in read_jsonl(run.store.results)]
