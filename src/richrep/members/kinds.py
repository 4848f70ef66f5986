"""The built-in member kinds: ``single`` (one per seed, the parts of catK) and the baselines
of Zhang & Bottou (ICML 2023): ``wide`` (encoder parameters equal to catK's), ``wide_dim``
(feature dimension equal to catK's), ``joint`` (K towers trained together with one head) and
``distill`` (one network of a single seed's size distilled from K seeds). Each stands for catK
(registry meta ``k_seeds``): a K above the run's seed count is refused when the experiment
resolves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from richrep.config import Baseline, Experiment
from richrep.data import Task
from richrep.errors import ConfigError
from richrep.members.base import Member, MemberKind, PlanContext, network_outputs
from richrep.models import Classifier, JointEncoder, build_encoder
from richrep.objectives import MultiHeadDistillation, Objective
from richrep.plugins import MEMBERS


@MEMBERS.register(
    "single",
    label="single",
    order=20,
    marker="o",
    color="tab:blue",
    line=True,
    description="one seed's penultimate features",
)
class Single(MemberKind):
    """One network per seed; catK concatenates K of them."""


@MEMBERS.register(
    "wide",
    label="wide{k}",
    order=40,
    marker="s",
    color="tab:red",
    k_seeds=True,  # K at most the run's seeds: it stands for catK
    description="one network whose width gives its encoder catK's parameter count",
)
class Wide(MemberKind):
    """One network whose width multiplier makes its encoder as large as catK's (equal
    parameters)."""

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        w = ctx.match_width(spec.k * ctx.encoder_params(ctx.exp.model.width))
        return Member(f"wide{spec.k}-s{seed}", "wide", spec.k, seed, width=w)


@MEMBERS.register(
    "wide_dim",
    label="wide_dim{k}",
    order=50,
    marker="D",
    color="tab:purple",
    k_seeds=True,  # K at most the run's seeds: it stands for catK
    description="one network with catK's feature dimension",
)
class WideDim(MemberKind):
    """One network whose feature layer has catK's dimension, K·d (equal feature dimension)."""

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        return Member(
            f"wide_dim{spec.k}-s{seed}",
            "wide_dim",
            spec.k,
            seed,
            width=ctx.exp.model.width,
            feature_dim=spec.k * ctx.feature_dim(),
        )


@MEMBERS.register(
    "joint",
    label="joint{k}",
    order=60,
    marker="^",
    color="tab:green",
    k_seeds=True,  # K at most the run's seeds: it stands for catK
    description="K towers (catK's architecture) trained together with one head",
)
class Joint(MemberKind):
    """catK's architecture, K towers, trained as one network with one head."""

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        return Member(f"joint{spec.k}-s{seed}", "joint", spec.k, seed, width=ctx.exp.model.width)

    def encoder(self, member: Member, exp: Experiment, task: Task) -> nn.Module:
        return JointEncoder(
            [
                build_encoder(exp.model.encoder, task.input_shape, member.width, **exp.model.params)
                for _ in range(member.k)
            ]
        )


@MEMBERS.register(
    "distill",
    label="distill{k}",
    order=70,
    marker="v",
    color="tab:orange",
    k_seeds=True,  # K at most the run's seeds: it stands for catK
    description="one network of a single seed's size distilled from K seeds (K heads)",
)
class Distill(MemberKind):
    """A student of one seed's size, trained after its K teachers (the run's first K seeds) to
    reproduce catK: K linear heads on its features, head k matching teacher k's logits (KL at
    ``temperature``), plus the label cross-entropy weighted by ``label_weight`` (Zhang & Bottou
    2023, distillation; Hinton et al. 2015)."""

    def __init__(
        self,
        temperature: Annotated[float, Field(gt=0)] = 4.0,
        label_weight: Annotated[float, Field(ge=0, le=1)] = 0.5,
    ) -> None:
        self.temperature = float(temperature)
        self.label_weight = float(label_weight)

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        if spec.k > len(ctx.singles):
            raise ConfigError(
                f"training.baselines: distill{spec.k} needs {spec.k} teachers but the run trains "
                f"{len(ctx.singles)} seeds"
            )
        teachers = tuple(m.name for m in ctx.singles[: spec.k])
        return Member(
            f"distill{spec.k}-s{seed}",
            "distill",
            spec.k,
            seed,
            width=ctx.exp.model.width,
            params=dict(spec.params),
            requires=teachers,
        )

    def outputs(self, member: Member, task: Task) -> int:
        return member.k * task.num_classes

    def objective(self, member: Member, exp: Experiment) -> Objective:
        return MultiHeadDistillation(member.k, self.temperature, self.label_weight)

    @torch.no_grad()
    def targets(
        self,
        member: Member,
        task: Task,
        teachers: Sequence[Classifier],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, torch.Tensor]:
        """The teachers' logits on every training example, ``(N, K, classes)``, computed once."""
        logits = network_outputs(teachers, task.train.x, device=device, dtype=dtype)
        return {"teacher_logits": logits}
