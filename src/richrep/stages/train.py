"""The train stage: the engine ``runtime.engine`` names trains every unfinished member, with
the thread budget made here from ``runtime.threads`` (the engine applies it where its work
runs: this process for the local engine, each task for Ray)."""

from __future__ import annotations

import time
from collections.abc import Callable

from richrep.errors import ConfigError
from richrep.plugins import ENGINES
from richrep.run import Run
from richrep.runtime.threads import ThreadBudget
from richrep.stages.imports import import_checkpoints
from richrep.store.ledger import State, Status
from richrep.store.weightfiles import Checkpoints
from richrep.training.engines import Engine

Progress = Callable[[str, int, int], None]  # (task, done, total)


def train(
    run: Run, *, log: Callable[[str], None] = print, progress: Progress | None = None
) -> dict[str, Status]:
    """Train (or resume) the run's members; return each member's status. A member whose
    checkpoint no longer matches its sha256 (or lost its sidecar) is retrained, and the log
    says so."""
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
    import_checkpoints(run, log)  # training.seeds: {from_checkpoints: [...]} (no training)
    t0 = time.perf_counter()
    status = engine.train(run.exp, run.source_task, run.members, run.store, progress, budget=budget)
    failed = {n: s for n, s in status.items() if not s.ok}
    log(
        f"trained {len(status) - len(failed)}/{len(status)} members in "
        f"{time.perf_counter() - t0:.1f} s"
        + "".join(f"\n  {n} failed: {s.error}" for n, s in failed.items())
    )
    return status
