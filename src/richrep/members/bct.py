"""Backward-compatible upgrades as member kinds: a new network whose features can be compared
with an *old* member's, so a gallery indexed by the old model need not be re-encoded.

- ``bct`` (Shen et al., CVPR 2020, "Towards Backward-Compatible Representation Learning"):
  a network of the old member's architecture and feature dimension, new seed, trained with
  its own head and, through the *influence loss*, with the old member's classifier, frozen, on
  its features (objective ``bct``).
- ``bt2`` (after Zhou et al., ICCV 2023, "BT²: Backward-compatible Training with Basis
  Transformation"): the same with K·d features instead of d, passed through a learned
  orthonormal basis transformation; the influence loss reads the first d transformed features
  (the ones compared with the old gallery), the new head all K·d. The extra dimensions hold
  what compatibility would cost, and the orthonormal transformation loses nothing of the
  backbone's features. Simplified: BT²'s own recipe also distils an independently trained new
  model and stacks two transformations; this keeps its core, the added dimensions behind a
  basis transformation, at the feature dimension of cat K.

``old`` names the old member (default: the run's first seed); it must be planned before
(a seed, or an earlier baseline's member, so upgrades chain: ``{kind: bct, k: 1, old:
bct-s1}`` trains ``bct-s2-from-bct-s1``). The new members take the run's seeds that follow
the old member's, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from richrep.config import Baseline, Experiment
from richrep.data import Task
from richrep.errors import ConfigError
from richrep.members.base import Member, MemberKind, PlanContext
from richrep.models import Classifier
from richrep.objectives import BackwardCompatible, Objective
from richrep.plugins import MEMBERS


def upgrade_tag(old: str) -> str:
    """What tells a chained upgrade's column apart: "" when the old member is a seed, else
    ``from-<old member>`` (its own chain left out: ``bct-s2-from-bct-s1`` gives ``from-bct-s2``)."""
    return "" if old.startswith("single-") else f"from-{old.split('-from-')[0]}"


class CompatibleHead(nn.Module):
    """The new model's linear head on all its features, then the old model's classifier (frozen
    buffers, set by :meth:`BCT.prepare`) on the first ``old_dim``: logits ``(B, 2C)``."""

    def __init__(self, feature_dim: int, classes: int, old_dim: int) -> None:
        super().__init__()
        self.old_dim = int(old_dim)
        self.new = nn.Linear(feature_dim, classes)
        self.register_buffer("old_weight", torch.zeros(classes, self.old_dim))
        self.register_buffer("old_bias", torch.zeros(classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        old = F.linear(z[:, : self.old_dim], self.old_weight, self.old_bias)
        new = self.new(z)
        return torch.cat([new, old.to(new.dtype)], dim=1)


class BasisTransform(nn.Module):
    """An encoder followed by a learned orthonormal transformation of its features (BT²'s basis
    transformation; ``torch.nn.utils.parametrizations.orthogonal``)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_dim = encoder.feature_dim
        self.input_shape = encoder.input_shape
        self.basis = orthogonal(nn.Linear(self.feature_dim, self.feature_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basis(self.encoder(x))

    def set_input_stats(self, x: torch.Tensor) -> None:
        self.encoder.set_input_stats(x)


@MEMBERS.register(
    "bct",
    label="bct",
    order=80,
    marker="X",
    color="tab:cyan",
    k_range=(1, 1),
    description="a new seed trained compatible with an old member's classifier (BCT)",
)
class BCT(MemberKind):
    """A new seed of the old member's feature dimension, trained with its own head plus
    ``weight`` × the influence loss through the old member's frozen classifier."""

    kind_name = "bct"

    def __init__(self, old: str | None = None, weight: Annotated[float, Field(ge=0)] = 1.0) -> None:
        self.old, self.weight = old, float(weight)

    def old_member(self, ctx: PlanContext) -> Member:
        return ctx.planned_member(self.old or ctx.singles[0].name, f"{self.kind_name}: old")

    def feature_dim(self, spec: Baseline, old_dim: int) -> int:
        return old_dim

    def plan(self, spec: Baseline, ctx: PlanContext) -> list[Member]:
        old = self.old_member(ctx)
        order = [m.seed for m in ctx.singles]
        at = order.index(old.seed) if old.seed in order else -1
        seeds = [s for s in order[at + 1 :] + order[: at + 1] if s != old.seed][: spec.seeds]
        if not seeds:
            raise ConfigError(
                f"training.baselines: {self.kind_name} needs a seed other than its old member "
                f"{old.name}'s; train at least two seeds"
            )
        dim = self.feature_dim(spec, ctx.feature_dim_of(old))
        tag = upgrade_tag(old.name)
        label = MEMBERS.meta(self.kind_name, "label").format(k=spec.k)
        return [
            Member(
                f"{label}-s{seed}" + (f"-{tag}" if tag else ""),
                self.kind_name,
                spec.k,
                seed,
                width=ctx.exp.model.width,
                feature_dim=None if dim == ctx.feature_dim() else dim,
                params={**spec.params, "old": old.name},
                requires=(old.name,),
            )
            for seed in seeds
        ]

    def tag(self, member: Member) -> str:
        return upgrade_tag(str(member.params.get("old", "")))

    def old_dim(self, member: Member, feature_dim: int) -> int:
        return feature_dim

    def head(self, member: Member, task: Task, feature_dim: int) -> CompatibleHead:
        return CompatibleHead(feature_dim, task.num_classes, self.old_dim(member, feature_dim))

    def outputs(self, member: Member, task: Task) -> int:
        return 2 * task.num_classes

    def objective(self, member: Member, exp: Experiment) -> Objective:
        return BackwardCompatible(self.weight)

    def prepare(self, member: Member, model: Classifier, teachers: Sequence[Classifier]) -> None:
        """Copy the old member's classifier into the frozen half of ``model``'s head."""
        (old,) = teachers
        head: CompatibleHead = model.head  # type: ignore[assignment]
        wb = linear_classifier(old.head)
        if wb is None or wb[0].shape != head.old_weight.shape:
            got = tuple(wb[0].shape) if wb is not None else type(old.head).__name__
            raise ConfigError(
                f"member {member.name}: the old member {member.params.get('old')}'s classifier "
                f"is {got}; {self.kind_name} needs one linear classifier of shape "
                f"{tuple(head.old_weight.shape)} (classes × the old feature dimension)"
            )
        with torch.no_grad():
            head.old_weight.copy_(wb[0])
            head.old_bias.copy_(wb[1])


def linear_classifier(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, bias) of a model's linear classifier: a linear head, an earlier upgrade's own
    new head, or a fixed one without bias (zeros); None for other heads."""
    if isinstance(head, CompatibleHead):
        head = head.new
    w, b = getattr(head, "weight", None), getattr(head, "bias", None)
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        return None
    bias = b.detach().float() if isinstance(b, torch.Tensor) else torch.zeros(w.shape[0])
    return w.detach().float(), bias


@MEMBERS.register(
    "bt2",
    label="bt2_{k}",
    order=85,
    marker="*",
    color="tab:pink",
    k_range=(2, None),
    description="BCT with K·d features behind an orthonormal basis transformation (BT²)",
)
class BT2(BCT):
    """BCT with ``k`` × the old feature dimension behind a learned orthonormal basis
    transformation; the influence loss reads the first d transformed features."""

    kind_name = "bt2"

    def feature_dim(self, spec: Baseline, old_dim: int) -> int:
        return spec.k * old_dim

    def old_dim(self, member: Member, feature_dim: int) -> int:
        return feature_dim // member.k

    def encoder(self, member: Member, exp: Experiment, task: Task) -> nn.Module:
        return BasisTransform(super().encoder(member, exp, task))
