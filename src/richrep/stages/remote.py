"""Suite entries evaluated as tasks of the run's engine (``runtime.engine: ray``), the way
training runs there: one task per entry, on as many threads (and the same share of
``runtime.memory``) as the local evaluate stage would give it, so its rows are the local
rows. A task opens the run folder (shared storage: the workers read the checkpoints and share
the feature cache there) and writes its entry's file itself, atomically; the engine retries a
task whose worker died, and the entries written before are kept."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from richrep.config import Experiment, SuiteEntry
from richrep.errors import RichrepError
from richrep.plugins import ENGINES, load_plugins
from richrep.run import Run
from richrep.runtime.cpu_policy import threads_share_fast_matmul
from richrep.runtime.memory import MemoryBudget
from richrep.runtime.progress import Progress
from richrep.runtime.threads import ThreadBudget
from richrep.stages.entry import EVAL_PREFIX, Log, Work, evaluate_entry
from richrep.store import RunStore

Pending = tuple[SuiteEntry, Path]


def remote_engine(run: Run, log: Log) -> Any | None:
    """The run's engine if it runs suite entries as tasks (it has ``map``) and the workers
    see the run folder; None (with a note) when the entries must stay on this machine."""
    spec = run.exp.runtime.engine
    engine = ENGINES.build(spec.name, **spec.params)
    if not hasattr(engine, "map"):
        return None
    if not getattr(engine, "shared_storage", True):
        log(
            f"NOTE: runtime.engine {spec.name} has shared_storage: false, so its workers cannot "
            f"read the run's checkpoints and feature cache; evaluating on this machine"
        )
        return None
    return engine


def evaluate_remotely(
    run: Run,
    engine: Any,
    pending: Sequence[Pending],
    shares: Sequence[tuple[int, int, bool]],
    work: dict[str, Work],
    log: Log,
    progress: Progress | None,
) -> None:
    """Each of ``pending`` as a task of ``engine`` with its ``(threads, memory share,
    shared fast matmul)`` of ``shares``; raises if a task was lost after all retries (the
    others' files are written)."""
    exp_json = run.exp.model_dump(mode="json")
    root = str(run.store.root.resolve())
    calls = [
        (exp_json, root, e.model_dump(mode="json"), str(path), work[e.name], *share)
        for (e, path), share in zip(pending, shares, strict=True)
    ]
    log(f"evaluating {len(calls)} entries as tasks of runtime.engine {run.exp.runtime.engine.name}")

    def done(i: int, lines: list[str]) -> None:
        name = pending[i][0].name
        for line in lines:
            log(line)
        if progress:
            total = sum(work[name][0])
            progress(f"{EVAL_PREFIX}{name}", total, total)

    results = engine.map(entry_task, calls, [s[0] for s in shares], done)
    lost = {pending[i][0].name: why for i, (_, why) in enumerate(results) if why}
    if lost:
        listing = "; ".join(f"{k} ({v})" for k, v in lost.items())
        raise RichrepError(
            f"{len(lost)} suite entr{'y' if len(lost) == 1 else 'ies'} lost after the engine's "
            f"retries: {listing}. The other entries are written; rerun to evaluate these."
        )


def entry_task(
    exp_json: dict[str, Any],
    root: str,
    entry_json: dict[str, Any],
    path: str,
    work: Work,
    threads: int,
    memory_share: int,
    shared_fast: bool,
) -> list[str]:
    """Runs in a worker: one entry on every representation of the run at ``root``, written to
    ``path``, on ``threads`` threads and ``1/memory_share`` of ``runtime.memory``, its units of
    work as the driver estimated them (``work``); returns its log lines."""
    load_plugins()  # a fresh worker process has imported none of the registries' entries
    exp = Experiment.model_validate(exp_json)
    run = Run(exp, RunStore(Path(root)))
    entry = SuiteEntry.model_validate(entry_json)
    lines: list[str] = []
    memory = MemoryBudget.resolve(exp.runtime.memory).split(memory_share)
    with ThreadBudget(threads).applied(), memory.applied():
        reps = run.representations()
        ctx = run.context(reps)
        # as the local stage runs entries side by side in threads, or one at a time
        policy = threads_share_fast_matmul(run.device) if shared_fast else nullcontext()
        with policy:
            evaluate_entry(run, ctx, reps, entry, Path(path), log=lines.append, work=work)
    return lines
