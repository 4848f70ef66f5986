"""``matryoshka`` member kind (Kusupati et al., NeurIPS 2022): one network per seed whose
feature layer has catK's dimension, K·d (as ``wide_dim``), trained with the Matryoshka
objective on nested prefixes — by default the powers of two from 8 and, as catK's own natural
prefixes, every multiple of d (the first k seed blocks) — so that both are compared under
truncation at equal feature dimension. ``shared: true`` is MRL-E (one head, sliced)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from richrep.config import Baseline, Experiment
from richrep.data import Task
from richrep.errors import ConfigError
from richrep.members.base import Member, MemberKind, PlanContext
from richrep.models.heads import NestedHeads
from richrep.objectives import Objective
from richrep.objectives.matryoshka import Matryoshka
from richrep.plugins import MEMBERS


def nest(total: int, block: int, start: int = 8) -> list[int]:
    """Nested dimensions up to ``total``: powers of two from ``start`` and the multiples of
    ``block``, sorted, ``total`` last."""
    dims = {total}
    m = start
    while m < total:
        dims.add(m)
        m *= 2
    dims.update(range(block, total, block))
    return sorted(dims)


@MEMBERS.register(
    "matryoshka",
    label="mrl{k}",
    order=55,
    marker="h",
    color="tab:olive",
    description="one network with catK's feature dimension trained on nested prefixes (Matryoshka)",
)
class MatryoshkaKind(MemberKind):
    """Feature dimension K·d, nested heads on ``dims`` (default :func:`nest`), loss weights
    ``weights`` (default equal), ``shared`` heads (MRL-E)."""

    def __init__(
        self,
        dims: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] | None = None,
        weights: list[Annotated[float, Field(ge=0)]] | None = None,
        shared: bool = False,
    ) -> None:
        self.dims, self.weights, self.shared = dims, weights, shared

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        return Member(
            f"mrl{spec.k}{'-e' if self.shared else ''}-s{seed}",
            "matryoshka",
            spec.k,
            seed,
            width=ctx.exp.model.width,
            feature_dim=spec.k * ctx.feature_dim(),
            params=dict(spec.params),
        )

    def tag(self, member: Member) -> str:
        return "e" if self.shared else ""  # MRL-E gets its own column, mrlK-e

    def nested(self, member: Member) -> list[int]:
        total = int(member.feature_dim or 0)
        dims = self.dims or nest(total, total // member.k)
        bad = [m for m in dims if m > total]
        if bad or dims != sorted(set(dims)):
            raise ConfigError(
                f"matryoshka: dims must increase and stay within the feature dimension {total}; "
                f"got {dims}"
            )
        return dims if dims[-1] == total else [*dims, total]

    def head(self, member: Member, task: Task, feature_dim: int) -> NestedHeads:
        return NestedHeads(feature_dim, task.num_classes, self.nested(member), self.shared)

    def outputs(self, member: Member, task: Task) -> int:
        return len(self.nested(member)) * task.num_classes

    def objective(self, member: Member, exp: Experiment) -> Objective:
        n = len(self.nested(member))
        if self.weights is not None and len(self.weights) != n:
            raise ConfigError(f"matryoshka: {n} nested dims {self.nested(member)} need {n} weights")
        return Matryoshka(n, self.weights)
