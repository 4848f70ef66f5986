"""The ``continual`` protocol: a class-incremental stream over the target's classes, classified
by the nearest class mean of frozen features (Janson et al., 2022, "A simple baseline that
questions the use of pretrained models in continual learning": a nearest-mean classifier on a
frozen representation, updated per task without revisiting old data).

The target's classes are shuffled (``orders`` seeded orders) and cut into tasks of
``classes_per_task``; task t adds the running sums of its classes' training features (each
example seen once, never revisited). After each task the classifier labels the test examples
of every class seen so far by the nearest class mean (cosine when ``normalize``, as usual for
NCM on pretrained features; Euclidean otherwise).

Rows (``draw`` = order): ``accuracy`` after each task (``variant`` "after task t/T", ``n`` the
test examples of the seen classes) and ``average_incremental_accuracy``, the mean over tasks of
those accuracies (Rebuffi et al., 2017, iCaRL). With frozen features the final classifier does
not depend on the order; the path to it does. So the orders of one representation agree after
the last task (and after a first task of one class): the views give those cells no interval,
and the report's summary speaks for the last task.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Task
from richrep.data.splits import rng
from richrep.errors import ConfigError
from richrep.evaluation.protocols import Context
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row


def stream_ncm(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    tasks: list[list[int]],
    normalize: bool = True,
) -> list[float]:
    """Accuracy on the seen classes' test examples after each task of a nearest-class-mean
    classifier updated task by task (running sums: no example is revisited)."""
    if normalize:
        train_x = torch.nn.functional.normalize(train_x.float(), dim=1)
        test_x = torch.nn.functional.normalize(test_x.float(), dim=1)
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    out = []
    for task in tasks:
        for c in task:
            m = train_y == c
            sums[c] = train_x[m].double().sum(0)
            counts[c] = int(m.sum())
        seen = sorted(sums)
        means = torch.stack([sums[c] / max(counts[c], 1) for c in seen]).float()
        if normalize:
            means = torch.nn.functional.normalize(means, dim=1)
        keep = torch.isin(test_y, torch.tensor(seen))
        q = test_x[keep].float()
        nearest = (q @ means.t()).argmax(1) if normalize else torch.cdist(q, means).argmin(1)
        truth = torch.searchsorted(torch.tensor(seen), test_y[keep])
        out.append(float((nearest == truth).double().mean()) if len(q) else float("nan"))
    return out


@PROTOCOLS.register(
    "continual",
    metrics=("accuracy", "average_incremental_accuracy"),
    vs_k=False,
    parallel=True,
    description="class-incremental stream, nearest class mean on frozen features",
)
class Continual:
    """Tasks of ``classes_per_task`` classes in ``orders`` seeded orders; a nearest-class-mean
    classifier (cosine when ``normalize``) updated per task; accuracy after each task and the
    average incremental accuracy."""

    def __init__(
        self,
        classes_per_task: Annotated[int, Field(ge=1)] = 2,
        orders: Annotated[int, Field(ge=1)] = 3,
        normalize: bool = True,
    ) -> None:
        self.classes_per_task, self.orders, self.normalize = classes_per_task, orders, normalize

    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None:
        if target.num_classes < 2 * self.classes_per_task:
            raise ConfigError(
                f"suite entry {entry.name!r}: continual needs at least two tasks of "
                f"{self.classes_per_task} classes; the target has {target.num_classes}"
            )

    def tasks(self, target: Task, seed: int, name: str, order: int) -> list[list[int]]:
        perm = rng(seed, "continual", name, order).permutation(target.num_classes).tolist()
        c = self.classes_per_task
        return [perm[i : i + c] for i in range(0, len(perm), c)]

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        self.check(entry, ctx.source, target)
        train = ctx.pool(target)
        feats, test = ctx.featurizer(rep, train), ctx.featurizer(rep, target.test)
        rows = []
        for d in range(self.orders):
            tasks = self.tasks(target, ctx.seed, entry.name, d)
            accs = stream_ncm(feats, train.y, test, target.test.y, tasks, self.normalize)
            seen: list[int] = []
            common = {"size": "all", "draw": d, "train_n": len(train)}
            for t, (task, a) in enumerate(zip(tasks, accs, strict=True)):
                seen += task
                n = int(torch.isin(target.test.y, torch.tensor(seen)).sum())
                label = f"after task {t + 1}/{len(tasks)}"
                extra = {"classes": [target.classes[c] for c in task]}
                rows.append(
                    ctx.row(entry, rep, "accuracy", a, n, variant=label, **common, extra=extra)
                )
            rows.append(
                ctx.row(
                    entry,
                    rep,
                    "average_incremental_accuracy",
                    float(np.mean(accs)),
                    len(target.test),
                    **common,
                    extra={"order": [target.classes[c] for t in tasks for c in t]},
                )
            )
        return rows
