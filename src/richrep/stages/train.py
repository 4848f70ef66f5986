"""The train stage: the engine ``runtime.engine`` names trains every unfinished member, with
the thread budget made here from ``runtime.threads`` (the engine applies it where its work
runs: this process for the local engine, each task for Ray)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from richrep.errors import ConfigError
from richrep.members import Member, kind_of
from richrep.plugins import ENGINES
from richrep.run import Run
from richrep.runtime.progress import Progress, plan
from richrep.runtime.threads import ThreadBudget
from richrep.stages.imports import import_checkpoints
from richrep.store.ledger import State, Status
from richrep.store.weightfiles import Checkpoints
from richrep.training.engines import Engine


def train(
    run: Run, *, log: Callable[[str], None] = print, progress: Progress | None = None
) -> dict[str, Status]:
    """Train (or resume) the run's members; return each member's status. A member whose
    checkpoint no longer matches its sha256 (or lost its sidecar) is retrained, and the log
    says so. The last line counts the members trained, reused (finished before) and imported
    (``from_checkpoints``)."""
    budget = ThreadBudget.resolve(run.exp.runtime.threads)
    spec = run.exp.runtime.engine
    engine = ENGINES.build(spec.name, where="runtime.engine", **spec.params)
    if not isinstance(engine, Engine):
        raise ConfigError(
            f"runtime.engine: engine {spec.name!r} ({type(engine).__name__}) has no "
            f"train(exp, task, members, store, progress) method"
        )
    imported = isinstance(run.exp.training.seeds, Checkpoints)
    for m in run.members:  # a corrupt checkpoint goes to quarantine/ here
        s = run.ledger.status(m.name)
        if s.state is State.CORRUPT:
            again = "importing it again" if imported and m.kind == "single" else "retraining it"
            log(f"{m.name}: {s.error}; {again}")
    t0 = time.perf_counter()
    import_checkpoints(run, log)  # training.seeds: {from_checkpoints: [...]} (no training)
    before = {m.name: run.ledger.status(m.name) for m in run.members}
    for m in run.members:  # the stage's work, known before it starts
        if not before[m.name].ok:
            plan(progress, m.name, steps(run, m), "steps")
    status = engine.train(run.exp, run.source_task, run.members, run.store, progress, budget=budget)
    log(summary(before, status, time.perf_counter() - t0))
    return status


def steps(run: Run, member: Member) -> int:
    """The training steps of ``member``: epochs × batches of its training data."""
    kind = kind_of(member)
    cfg = kind.training(member, run.exp)
    n = len(kind.training_data(member, run.source_task))
    return cfg.epochs * math.ceil(n / cfg.batch_size)


def summary(before: Mapping[str, Status], after: Mapping[str, Status], seconds: float) -> str:
    """The stage's last line, "trained N, reused M, imported I members in T s" (the counts
    that are not 0) and each failed member's reason: what this invocation trained, and what
    was finished before it (found in the run folder, or imported from
    ``training.seeds.from_checkpoints``)."""
    counts = dict.fromkeys(("trained", "reused", "imported", "failed"), 0)
    for name, s in after.items():
        was = before.get(name)
        if not s.ok:
            counts["failed"] += 1
        elif was is None or not was.ok:
            counts["trained"] += 1
        else:
            counts["imported" if s.meta.get("imported_from") else "reused"] += 1
    parts = [f"{k} {v}" for k, v in counts.items() if v] or ["trained 0"]
    failed = "".join(f"\n  {n} failed: {s.error}" for n, s in after.items() if not s.ok)
    plural = "s" if len(after) != 1 else ""
    return f"{', '.join(parts)} member{plural} in {seconds:.1f} s{failed}"
