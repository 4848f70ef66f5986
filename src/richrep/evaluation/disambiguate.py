"""The ``disambiguate`` protocol: choose one head of a multi-head member with a few labelled
target examples, as DivDis does (Lee, Yao & Finn, ICLR 2023, "Diversify and Disambiguate":
the heads disagree off the training distribution; a handful of target labels picks the head
whose hypothesis holds there). It applies to every member with several heads on the source
classes — ``diverse`` (its K diversified heads), ``rfc`` (one head per round), ``distill``
(one per teacher) — and to nothing else (no rows).

On a target with environments (e.g. ``colored_fashion_mnist``): the ``m`` labelled examples of
each draw come from the oracle slice of the test environments (the slice the ``ood``
protocol's oracle selects on; rows report on the rest, so the chosen head is never scored on
the examples that chose it). Rows (``variant``): ``pick m labels`` per m and draw; ``best
head`` (the head with the best worst-environment accuracy: the upper bound a perfect choice
reaches) and ``mean head`` (the heads' average: what no choice gives). Metrics as ``ood``:
``accuracy`` per test environment, ``worst_env_accuracy``, ``average_accuracy``.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Task
from richrep.data.splits import rng
from richrep.errors import ConfigError
from richrep.evaluation.finetune_train import predict
from richrep.evaluation.ood import slices
from richrep.evaluation.protocols import Context
from richrep.members import kind_of
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row

Counts = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]


@PROTOCOLS.register(
    "disambiguate",
    metrics=("accuracy", "worst_env_accuracy", "average_accuracy"),
    vs_k=False,
    description="a multi-head member's head chosen with a few labelled target examples",
)
class Disambiguate:
    """Pick the head of a multi-head member (diverse, rfc, distill) that is most accurate on
    ``labels`` labelled target examples (``draws`` draws each), report it per test environment."""

    def __init__(
        self,
        labels: Counts = [4, 16, 64],  # noqa: B006
        draws: Annotated[int, Field(ge=1)] = 10,
        oracle_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    ) -> None:
        self.labels, self.draws, self.oracle_fraction = (
            list(dict.fromkeys(labels)),
            draws,
            oracle_fraction,
        )

    def check(self, entry: SuiteEntry, source: Task, target: Task) -> None:
        if target.test.env is None:
            raise ConfigError(
                f"suite entry {entry.name!r}: disambiguate needs a target with environments "
                f"(e.g. colored_fashion_mnist)"
            )
        if target.classes != source.classes:
            raise ConfigError(
                f"suite entry {entry.name!r}: disambiguate scores the member's own heads, so the "
                f"target must keep the source classes {list(source.classes)}"
            )

    def heads(self, ctx: Context, rep: Representation) -> int:
        """How many heads on the source classes the representation's member has (0: none)."""
        run = ctx.owner
        if run is None or len(rep.parts) != 1 or rep.parts[0] == "input":
            return 0
        if rep.parts[0].startswith("random-"):
            return 0
        member = run.member(rep.parts[0])
        return kind_of(member).outputs(member, run.source_task) // run.source_task.num_classes

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        n_heads = self.heads(ctx, rep)
        if n_heads < 2:
            return []
        self.check(entry, ctx.source, target)
        run = ctx.run_of(entry, "disambiguate scores a member's own heads, so it")
        model = run.classifier(rep.parts[0])
        logits = predict(model, target.test.x, run.device, run.dtype)
        right = logits.view(len(logits), n_heads, -1).argmax(-1) == target.test.y[:, None]
        score, report = slices(target, self.oracle_fraction, ctx.seed, entry.name)
        acc = (right.double().t() @ score.slices.t()) / score.slices.sum(1)  # (heads, slices)
        col = {name: i for i, name in enumerate(score.names)}
        report_cols = [col[f"report:{e}"] for e in report["envs"]]
        per_env = acc[:, report_cols]  # (heads, test environments)
        pool = torch.nonzero(
            torch.stack([score.slices[col[k]] for k in report["oracle"]]).sum(0) > 0
        )
        pool = pool.flatten().numpy()
        rows = []
        for m in self.labels:
            for d in range(self.draws):
                pick = rng(ctx.seed, "disambiguate", entry.name, m, d).choice(
                    pool, size=min(m, len(pool)), replace=False
                )
                head = int(right[torch.as_tensor(pick)].double().mean(0).argmax())
                rows += self.rows(
                    ctx, entry, rep, report, per_env[head], f"pick {m} labels", d, head
                )
        best = int(per_env.min(1).values.argmax())
        rows += self.rows(ctx, entry, rep, report, per_env[best], "best head", 0, best)
        rows += self.rows(ctx, entry, rep, report, per_env.mean(0), "mean head", 0, -1)
        return rows

    def rows(
        self,
        ctx: Context,
        entry: SuiteEntry,
        rep: Representation,
        report: dict[str, Any],
        env_acc: torch.Tensor,
        variant: str,
        draw: int,
        head: int,
    ) -> list[Row]:
        common: dict[str, Any] = {
            "size": "all",
            "draw": draw,
            "variant": variant,
            "extra": {"head": head},
        }
        accs = env_acc.tolist()
        counts = report["counts"]
        out = [
            ctx.row(entry, rep, "accuracy", a, counts[e], environment=e, **common)
            for e, a in zip(report["envs"], accs, strict=True)
        ]
        n = sum(counts.values())
        out.append(ctx.row(entry, rep, "worst_env_accuracy", min(accs), n, **common))
        out.append(ctx.row(entry, rep, "average_accuracy", float(np.mean(accs)), n, **common))
        return out
