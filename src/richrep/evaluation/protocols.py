"""Evaluation protocols (``PROTOCOLS``). A protocol evaluates one representation on one target
and returns typed rows (:class:`~richrep.results.Row`) naming the protocol and the metric.

- ``transfer``: the target re-fits the probe on its own training data, at several sizes per
  class (learned representations matter most when target labels are few), several draws each.
- ``robustness``: the probe is fit on the source task and tested on the shifted test set.

A protocol may say how much work a representation costs it (``work``, in its ``unit``: probe
fits, episodes, steps) and advance the entry's progress as it goes (``Context.advance``);
without ``work`` a representation counts as one unit.

Regularization is always chosen on validation data carved from the training data the probe is
given (the paper tuned on test; we do not): test data reaches a probe only through ``score``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from sklearn.exceptions import ConvergenceWarning

from richrep.config import Spec, SuiteEntry
from richrep.data import Split, Task
from richrep.data.images import concat
from richrep.data.splits import per_class_sample
from richrep.errors import ConfigError
from richrep.evaluation.inputs import device_for
from richrep.evaluation.probes import make_probe, probe_seed
from richrep.evaluation.run_view import RunView
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation
from richrep.representations.features import Featurizer
from richrep.results import Row
from richrep.runtime.cpu_policy import probe_compute_policy


@dataclass
class Context:
    """What a protocol needs besides the representation and the target."""

    featurizer: Featurizer
    source: Task
    probe: Spec  # the default probe (evaluation.probe)
    seed: int
    run: str = ""
    device: str = "cpu"
    owner: RunView | None = None  # the run evaluated (protocols that need its networks)
    info: dict[str, Any] = field(default_factory=dict)  # target facts every row records
    fitted: dict[str, Any] = field(default_factory=dict)  # source probes, by representation id
    representations: list[Representation] = field(default_factory=list)  # all of the run's
    advance: Callable[[int], None] = field(default=lambda n: None)  # n units of work done
    _pools: dict[str, Split] = field(default_factory=dict)
    _sets: dict[str, tuple[Split, list[tuple[Any, int, torch.Tensor]]]] = field(
        default_factory=dict
    )
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def once(self, store: dict[str, Any], key: str, make: Callable[[], Any]) -> Any:
        """``store[key]``, made by ``make()`` the first time: suite entries evaluated in
        parallel threads share one context, and what one of them makes (a source probe, a
        target's pool) the others wait for instead of making it again."""
        if key in store:
            return store[key]
        with self._lock:
            lock = self._locks.setdefault(f"{id(store)}|{key}", threading.Lock())
        with lock:
            if key not in store:
                store[key] = make()
            return store[key]

    def run_of(self, entry: SuiteEntry, what: str) -> RunView:
        """The run being evaluated, for a protocol that trains or loads its networks (``what``
        says which and why); a clear error when the protocol runs on features alone."""
        if self.owner is None:
            raise ConfigError(
                f"suite entry {entry.name!r}: {what} needs the run (Context.owner); evaluate "
                f"through the run (Run.evaluate or the evaluate stage)"
            )
        return self.owner

    def pool(self, task: Task) -> Split:
        """All labelled training data of ``task`` (train and validation together), made once."""
        return self.once(self._pools, task.hash, lambda: pool(task))

    def make_probe(self, entry: SuiteEntry, draw: int = 0) -> Any:
        """A fresh probe of ``entry`` (or the evaluation's) for draw ``draw``: unless its spec
        sets them, its validation split is seeded by the experiment's seed and the draw
        (:func:`probe_seed`) and it runs on the run's evaluation device."""
        spec = entry.probe or self.probe
        seed = probe_seed(self.seed, draw)
        return make_probe(spec.name, dict(spec.params), seed=seed, device=self.device)

    def row(
        self, entry: SuiteEntry, rep: Representation, metric: str, value: float, n: int, **kw: Any
    ) -> Row:
        """A result row of ``rep`` on ``entry``, the fields every row shares filled in."""
        extra = {**self.info, **kw.pop("extra", {})}
        return Row(
            run=self.run,
            entry=entry.name,
            protocol=entry.protocol.name,
            representation=rep.kind,
            column=rep.column,
            k=rep.k,
            seeds=tuple(rep.seeds),
            dim=rep.dim,
            params=rep.params,
            metric=metric,
            value=float(value),
            n=int(n),
            shift="|".join(s.label() for s in entry.shifts) or "none",
            extra=extra,
            **kw,
        )

    def probe_sets(
        self, target: Task, entry: SuiteEntry
    ) -> tuple[Split, list[tuple[Any, int, torch.Tensor]]]:
        """The data a transfer entry's probes train on and the (size, draw, indices) sets into
        it (:func:`draws`). Without an ``all`` set the data is only the examples some draw uses,
        so features of the rest of the pool are never extracted. Made once per entry, shared by
        every representation (so all are compared on identical data)."""

        def make() -> tuple[Split, list[tuple[Any, int, torch.Tensor]]]:
            train = self.pool(target)
            sets = draws(train.y, entry, self.seed)
            if all(size != "all" for size, _, _ in sets):
                used = torch.unique(torch.cat([idx for _, _, idx in sets]))
                position = torch.full((len(train),), -1, dtype=torch.long)
                position[used] = torch.arange(len(used))
                train = train.subset(used)
                sets = [(size, d, position[idx]) for size, d, idx in sets]
            return train, sets

        return self.once(self._sets, f"{target.hash}|{entry.name}", make)


def draws(
    labels: torch.Tensor, entry: SuiteEntry, seed: int
) -> list[tuple[Any, int, torch.Tensor]]:
    """(size, draw, indices) of every probe training set of a transfer entry: ``entry.draws``
    random draws of n examples per class for each size n, and all examples for ``all``.

    A size n at least as large as the largest class takes every example in every draw: its
    draws would be copies of one (a falsely narrow interval) under a label the data cannot
    give, so it is evaluated once, as ``all``, with a warning; sizes that come to the same set
    of examples give it once."""
    largest = int(torch.bincount(labels).max()) if len(labels) else 0
    out: list[tuple[Any, int, torch.Tensor]] = []
    capped = [s for s in entry.sizes if s != "all" and int(s) >= largest]
    for size in dict.fromkeys("all" if s in capped else s for s in entry.sizes):
        if size == "all":
            out.append((size, 0, torch.arange(len(labels))))
            continue
        for d in range(entry.draws):
            idx = per_class_sample(labels, int(size), seed, entry.name, size, d)
            out.append((size, d, torch.as_tensor(idx)))
    if capped:
        warnings.warn(
            f"suite entry {entry.name!r}: size(s) {capped} per class are at least the "
            f"{largest} examples of the target's largest class, so every draw would take all "
            f"{len(labels)} examples; evaluated once, as size 'all'",
            UserWarning,
            stacklevel=2,
        )
    return out


def pool(task: Task) -> Split:
    """All labelled target training data: the task's train and validation splits together."""
    a, b = task.train, task.val
    g = None if a.groups is None or b.groups is None else torch.cat([a.groups, b.groups])
    e = None if a.env is None or b.env is None else torch.cat([a.env, b.env])
    rows = None if a.rows is None else a.rows.cat(b.rows)
    return Split(concat(a.x, b.x), torch.cat([a.y, b.y]), g, e, rows)


def fit_probe(probe: Any, X: torch.Tensor, y: torch.Tensor) -> Any:
    """Fit ``probe`` on training data only, under the probe compute policy
    (:mod:`richrep.runtime.cpu_policy`); a solver that stops at ``max_iter`` is recorded in the row
    (``converged``) rather than warned about once per probe."""
    device = device_for(getattr(probe, "device", "cpu"), X)
    with (
        warnings.catch_warnings(),
        probe_compute_policy(
            X.shape[0] * max(X.shape[1], 1), device, getattr(probe, "dtype", "float32")
        ),
    ):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return probe.fit(X, y)


def probe_facts(probe: Any) -> dict[str, Any]:
    """What a row records about a fitted probe: its chosen C, whether it converged and the seed
    of its validation split (``probe_seed``, for a probe that draws one)."""
    facts = {
        "C": float(getattr(probe, "C_", float("nan"))),
        "converged": bool(getattr(probe, "solver_stats_", {}).get("converged", True)),
    }
    seed = getattr(probe, "random_state", None)
    if isinstance(seed, int):
        facts["probe_seed"] = seed
    return facts


@PROTOCOLS.register(
    "transfer",
    metrics=("accuracy",),
    description="probe refit on the target's own training data",
    parallel=True,
)
class Transfer:
    """Fit the probe on the target's training data (n examples per class, several draws, and
    all), test on its test set."""

    unit = "probe fits"

    def work(self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> int:
        return len(ctx.probe_sets(target, entry)[1])

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        data, sets = ctx.probe_sets(target, entry)
        # features beyond runtime.memory stay on disk, streamed by the linear probe
        feats = ctx.featurizer(rep, data, lazy=True)
        x_test = ctx.featurizer(rep, target.test, lazy=True)
        rows = []
        for size, d, idx in sets:
            probe = fit_probe(ctx.make_probe(entry, d), feats[idx], data.y[idx])
            acc = probe.score(x_test, target.test.y)
            ctx.advance(1)
            counts = torch.bincount(data.y[idx])
            per_class = int(counts[counts > 0].min()) if len(idx) else 0  # the real n per class
            rows.append(
                ctx.row(
                    entry,
                    rep,
                    "accuracy",
                    acc,
                    len(target.test),
                    size=size,
                    draw=d,
                    train_n=len(idx),
                    extra={**probe_facts(probe), "per_class": per_class},
                )
            )
        return rows


def check_target(entry: SuiteEntry, source: Task, target: Task) -> None:
    """A robustness target must hold the source's classes, in the source's order."""
    if entry.protocol.name == "robustness" and target.classes != source.classes:
        raise ConfigError(
            f"suite entry {entry.name!r}: robustness tests the source head, so the target must "
            f"keep the source classes {list(source.classes)}; it has {list(target.classes)} "
            f"(add the source's `classes` shift to its shifts)"
        )


@PROTOCOLS.register(
    "robustness",
    metrics=("accuracy",),
    description="probe fit on the source, tested shifted",
    parallel=True,
)
class Robustness:
    """Fit the probe on the source task's training data, test on the shifted test set."""

    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None:
        check_target(entry, source, target)

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        check_target(entry, ctx.source, target)
        spec = entry.probe or ctx.probe

        def make() -> tuple[Any, int]:
            train = ctx.pool(ctx.source)
            return fit_probe(ctx.make_probe(entry), ctx.featurizer(rep, train), train.y), len(train)

        probe, n_train = ctx.once(ctx.fitted, f"{rep.id}|{spec.label()}", make)
        acc = probe.score(ctx.featurizer(rep, target.test), target.test.y)
        return [
            ctx.row(
                entry,
                rep,
                "accuracy",
                acc,
                len(target.test),
                size="all",
                draw=0,
                train_n=n_train,
                extra=probe_facts(probe),
            )
        ]


@runtime_checkable
class EvaluationProtocol(Protocol):
    """What a protocol (``PROTOCOLS``) is: ``evaluate`` returns the rows of one representation
    on one target. Structural: a plug-in implements it without subclassing."""

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]: ...


@runtime_checkable
class EstimatesWork(Protocol):
    """A protocol that says, before it starts, how many units of work (its ``unit``: probe
    fits, episodes, steps) it will do on a representation, and reports them as it does them
    (``ctx.advance(n)``), so progress is weighted by work. Optional: without it a
    representation counts as one unit."""

    unit: str

    def work(self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> int: ...


@runtime_checkable
class ChecksTarget(Protocol):
    """A protocol that refuses a target it cannot evaluate, at pre-flight (before training):
    robustness and disambiguate need the source's classes, finetune two examples per class."""

    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None: ...


def protocol_of(entry: SuiteEntry) -> EvaluationProtocol:
    """The protocol object of a suite entry (its arguments validated)."""
    name = entry.protocol.name
    proto = PROTOCOLS.build(name, where=f"suite entry {entry.name}", **entry.protocol.params)
    if not isinstance(proto, EvaluationProtocol):
        raise ConfigError(
            f"suite entry {entry.name!r}: protocol {name!r} ({type(proto).__name__}) has no "
            f"evaluate(ctx, representation, target, entry) method"
        )
    return proto


def check_entries(entries: Sequence[SuiteEntry], source: Task, targets: Sequence[Task]) -> None:
    """Each protocol's own check of its target (e.g. robustness needs the source classes)."""
    for entry, target in zip(entries, targets, strict=True):
        proto = protocol_of(entry)
        if isinstance(proto, ChecksTarget):
            proto.check(entry, source, target)
