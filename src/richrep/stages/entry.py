"""One suite entry evaluated on every representation of a run: its rows written to its own
file, its progress counted in the protocol's units of work. The evaluate stage runs entries
here, in threads, or as tasks of an engine that can run them (:mod:`.remote`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from richrep.config import SuiteEntry
from richrep.data import Task
from richrep.evaluation import stored
from richrep.evaluation.protocols import Context, EstimatesWork, protocol_of
from richrep.representations import Representation
from richrep.results import Row
from richrep.run import Run
from richrep.runtime.progress import Progress

Log = Callable[[str], None]
EVAL_PREFIX = "eval "  # progress of a suite entry: "eval <entry>" (its work done / total)
Work = tuple[list[int], str]  # an entry's units of work per representation, and the unit


def evaluate_entry(
    run: Run,
    ctx: Context,
    reps: Sequence[Representation],
    entry: SuiteEntry,
    path: Path,
    *,
    log: Log = print,
    progress: Progress | None = None,
    work: Work | None = None,
) -> None:
    """One suite entry's rows on every representation, written to ``path`` (atomically).
    ``progress`` counts the protocol's units of work (``work``: per representation, and the
    unit; default :func:`entry_work`)."""
    t0 = time.perf_counter()
    target = run.target(entry)
    info = entry_facts(run, target, log, entry.name)
    protocol = protocol_of(entry)
    weights, _ = work or entry_work(run, ctx, reps, entry, protocol, target)
    rows: list[Row] = []
    counter = Counter(progress, f"{EVAL_PREFIX}{entry.name}", sum(weights))
    for rep, units in zip(reps, weights, strict=True):
        counter.expect(units)
        rows += protocol.evaluate(replace(ctx, info=info, advance=counter), rep, target, entry)
        counter.settle()
    stored.write_entry(path, entry, rows)
    log(f"{entry.name}: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")


def entry_work(
    run: Run,
    ctx: Context,
    reps: Sequence[Representation],
    entry: SuiteEntry,
    protocol: Any = None,
    target: Task | None = None,
) -> Work:
    """The units of work of ``entry`` on each representation and their name: the protocol's
    own estimate (:class:`~richrep.evaluation.protocols.EstimatesWork`: probe fits,
    episodes, steps), or one per representation."""
    protocol = protocol or protocol_of(entry)
    if not isinstance(protocol, EstimatesWork):
        return [1] * len(reps), "representations"
    target = target or run.target(entry)
    return [max(0, int(protocol.work(ctx, r, target, entry))) for r in reps], protocol.unit


class Counter:
    """An entry's progress in units of work: the protocol advances it as it works
    (``Context.advance``); each representation's units are capped at its estimate and made
    up after it, so the count never passes the total, whatever a protocol reports."""

    def __init__(self, progress: Progress | None, task: str, total: int) -> None:
        self.progress, self.task, self.total = progress, task, total
        self.done = self.cap = 0
        self.lock = threading.Lock()
        self.report()

    def report(self) -> None:
        if self.progress:
            self.progress(self.task, self.done, self.total)

    def expect(self, units: int) -> None:
        self.cap = self.done + units

    def __call__(self, n: int = 1) -> None:
        with self.lock:
            done = min(self.done + n, self.cap)
            if done == self.done:
                return
            self.done = done
        self.report()

    def settle(self) -> None:
        if self.done != self.cap:
            self.done = self.cap
            self.report()


def entry_facts(run: Run, target: Task, log: Log, name: str) -> dict[str, Any]:
    """What every row of a target records about it (how its test split was made), and a
    warning when its inputs' range differs grossly from the source's."""
    facts = stored.target_facts(run.source_stats, target, name)
    if "warning" in facts:
        log(f"WARNING: {facts['warning']}")
    return facts
