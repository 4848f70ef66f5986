"""Evaluation protocols. Each fits a probe on frozen features and reports test accuracy; every
row says which protocol made it.

- ``transfer``: the target re-fits the head on its own training data (at several sizes per
  class, since learned representations matter most when target labels are few).
- ``robustness``: the head is fit on the source task and tested on the shifted test set.

Regularization is always chosen on validation data carved from the training data the probe
is given (the paper tuned on test; we do not): test data reaches a probe only through
``score``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from sklearn.exceptions import ConvergenceWarning

from richrep.config import ProbeConfig, SuiteEntry
from richrep.data import Split, Task
from richrep.data.splits import per_class_sample
from richrep.errors import ConfigError
from richrep.registry import Registry
from richrep.representations import Featurizer, Representation

Row = dict[str, Any]


@dataclass
class Context:
    """What a protocol needs besides the representation and the target."""

    featurizer: Featurizer
    source: Task
    probe: ProbeConfig
    seed: int
    device: str = "cpu"
    fitted: dict[str, Any] = field(default_factory=dict)  # source probes, by representation id
    _pools: dict[str, Split] = field(default_factory=dict)
    _sets: dict[str, tuple[Split, list[tuple[Any, int, torch.Tensor]]]] = field(
        default_factory=dict
    )

    def pool(self, task: Task) -> Split:
        """All labelled training data of ``task`` (train and validation together), made once."""
        if task.hash not in self._pools:
            self._pools[task.hash] = pool(task)
        return self._pools[task.hash]

    def probe_sets(
        self, target: Task, entry: SuiteEntry
    ) -> tuple[Split, list[tuple[Any, int, torch.Tensor]]]:
        """The data a transfer entry's probes train on and the (size, draw, indices) sets into it.
        Without an ``all`` size the data is only the examples some draw uses, so features of
        the rest of the pool are never extracted. Made once per entry, shared by every
        representation."""
        key = f"{target.hash}|{entry.name}"
        if key not in self._sets:
            train = self.pool(target)
            sets = draws(train.y, entry, self.seed)
            if "all" not in entry.sizes:
                used = torch.unique(torch.cat([idx for _, _, idx in sets]))
                position = torch.full((len(train),), -1, dtype=torch.long)
                position[used] = torch.arange(len(used))
                train = train.subset(used)
                sets = [(size, d, position[idx]) for size, d, idx in sets]
            self._sets[key] = (train, sets)
        return self._sets[key]


PROTOCOLS: Registry[Callable[..., list[Row]]] = Registry("protocol", skip=4)


def draws(
    labels: torch.Tensor, entry: SuiteEntry, seed: int
) -> list[tuple[Any, int, torch.Tensor]]:
    """(size, draw, indices) of every probe training set of a transfer entry: ``entry.draws``
    random draws of n examples per class for each size n, and all examples for ``all``. The
    same draws serve every representation, so they are compared on identical data."""
    out = []
    for size in entry.sizes:
        if size == "all":
            out.append((size, 0, torch.arange(len(labels))))
            continue
        for d in range(entry.draws):
            idx = per_class_sample(labels, int(size), seed, entry.name, size, d)
            out.append((size, d, torch.as_tensor(idx)))
    return out


def make_probe(kind: str, cfg: ProbeConfig, seed: int, device: str) -> Any:
    from richrep.evaluation.probes import LinearProbe, NearestMeanProbe

    if kind == "nearest_mean":
        return NearestMeanProbe()
    return LinearProbe(Cs=tuple(cfg.Cs), max_iter=cfg.max_iter, random_state=seed, device=device)


def pool(task: Task) -> Split:
    """All labelled target training data: the task's train and validation splits together."""
    g = None
    if task.train.groups is not None and task.val.groups is not None:
        g = torch.cat([task.train.groups, task.val.groups])
    return Split(torch.cat([task.train.x, task.val.x]), torch.cat([task.train.y, task.val.y]), g)


def _row(rep: Representation, probe: Any, value: float, n: int, **extra: Any) -> Row:
    return {
        "representation": rep.kind,
        "k": rep.k,
        "seeds": list(rep.seeds),
        "dim": rep.dim,
        "params": rep.params,
        "metric": "accuracy",
        "value": float(value),
        "n": n,
        "C": float(getattr(probe, "C_", float("nan"))),
        "converged": bool(getattr(probe, "solver_stats_", {}).get("converged", True)),
        **extra,
    }


def fit(probe: Any, X: torch.Tensor, y: torch.Tensor) -> Any:
    """Fit ``probe`` on training data only; a solver that stops at ``max_iter`` is recorded in
    the row (``converged``) rather than warned about once per probe."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return probe.fit(X, y)


@PROTOCOLS.register("transfer")
def transfer(ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> list[Row]:
    """Fit the probe on the target's training data (per-class sizes, several draws), test on its test set."""
    data, sets = ctx.probe_sets(target, entry)
    feats = ctx.featurizer(rep, data)
    x_test = ctx.featurizer(rep, target.test)
    rows = []
    for size, d, idx in sets:
        probe = make_probe(entry.probe, ctx.probe, ctx.seed + d, ctx.device)
        fit(probe, feats[idx], data.y[idx])
        acc = probe.score(x_test, target.test.y)
        rows.append(
            _row(
                rep,
                probe,
                acc,
                len(target.test),
                protocol="transfer",
                size=size,
                draw=d,
                train_n=len(idx),
            )
        )
    return rows


def check_target(entry: SuiteEntry, source: Task, target: Task) -> None:
    """A robustness target must hold the source's classes, in the source's order."""
    if entry.protocol == "robustness" and target.classes != source.classes:
        raise ConfigError(
            f"suite entry {entry.name!r}: robustness tests the source head, so the target must keep "
            f"the source classes {list(source.classes)}; it has {list(target.classes)} "
            f"(add the source's `classes` shift to its shifts)"
        )


@PROTOCOLS.register("robustness")
def robustness(ctx: Context, rep: Representation, target: Task, entry: SuiteEntry) -> list[Row]:
    """Fit the probe on the source task's training data, test on the shifted test set."""
    check_target(entry, ctx.source, target)
    key = f"{rep.id}|{entry.probe}"
    if key not in ctx.fitted:
        train = ctx.pool(ctx.source)
        probe = make_probe(entry.probe, ctx.probe, ctx.seed, ctx.device)
        fit(probe, ctx.featurizer(rep, train), train.y)
        ctx.fitted[key] = (probe, len(train))
    probe, n_train = ctx.fitted[key]
    acc = probe.score(ctx.featurizer(rep, target.test), target.test.y)
    return [
        _row(
            rep,
            probe,
            acc,
            len(target.test),
            protocol="robustness",
            size="all",
            draw=0,
            train_n=n_train,
        )
    ]
