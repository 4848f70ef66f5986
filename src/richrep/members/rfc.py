"""Rich Feature Construction (Zhang, Lopez-Paz & Bottou, ICML 2022, "Rich Feature Construction
for the Optimization-Generalization Dilemma") as member kinds.

``{kind: rfc, k: R}`` plans, for each seed, R rounds and one synthesized network:

- round 0 (``rfc_round``, ``round: 0``): the run's objective (ERM);
- round r ≥ 1: Group DRO (``group_dro_sets``) over the sets of training examples that each
  earlier round classified correctly and incorrectly (2r overlapping groups), so the round is
  pushed to the features the earlier rounds did not use;
- synthesis (``rfc``): a network of one seed's size with R heads, head k fitting round k's
  predictions (pseudo-labels) on an agree/disagree balanced mix: examples on which all rounds
  agree and those on which they do not each weigh half (the released recipe's balancing).

The synthesized network's features are the ``rfcR`` representation; rounds are training
scaffolding, not representations of their own. Every member trains with the run's training
settings, which ``phases: {erm: {...}, dro: {...}, synthesis: {...}}`` override per phase
(``epochs``, ``batch_size``, ``optimizer``, ``lr``, ``weight_decay``, ``momentum``,
``schedule``): the released recipe — full-batch Adam, lr 5e-4, ERM 51 steps, DRO 501,
synthesis 501 — is e.g. ``batch_size: <N>`` with ``phases: {erm: {epochs: 51}, dro:
{epochs: 501}, synthesis: {epochs: 501}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import pydantic
import torch
from pydantic import Field

from richrep.config import Baseline, Experiment, TrainingConfig
from richrep.data import Task
from richrep.errors import ConfigError
from richrep.members.base import Member, MemberKind, PlanContext, network_outputs
from richrep.models import Classifier
from richrep.objectives import GroupDROSets, Objective, PseudoLabelHeads
from richrep.plugins import MEMBERS
from richrep.runtime.seeding import seeded


def predictions(
    models: Sequence[Classifier], x: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Each model's predicted class on every input, (N, models)."""
    return network_outputs(models, x, device=device, dtype=dtype, batch=2048).argmax(-1)


def round_groups(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, 2r) masks: for each earlier round, the examples it got right, then those it got wrong."""
    right = pred == y[:, None]
    return torch.stack([m for k in range(pred.shape[1]) for m in (right[:, k], ~right[:, k])], 1)


def balance_weights(pred: torch.Tensor) -> torch.Tensor:
    """Per-example weights (mean 1) giving the examples on which all rounds agree and those on
    which they disagree half of the total weight each (uniform when either set is empty)."""
    agree = (pred == pred[:, :1]).all(1)
    n, a = len(agree), int(agree.sum())
    if a in (0, n):
        return torch.ones(n)
    return torch.where(agree, 0.5 * n / a, 0.5 * n / (n - a)).float()


PHASES = ("erm", "dro", "synthesis")
SETTINGS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule")


def phase_config(exp: Experiment, overrides: dict[str, Any] | None, where: str) -> TrainingConfig:
    """The run's training settings with a phase's ``overrides`` (checked)."""
    if not overrides:
        return exp.training
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ConfigError(
            f"{where}: {unknown} cannot be set per phase; choose from {list(SETTINGS)}"
        )
    try:
        return TrainingConfig.model_validate({**exp.training.model_dump(), **overrides})
    except pydantic.ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"{where}: {msg}") from None


@MEMBERS.register(
    "rfc_round",
    label="rfc_round{k}",
    order=95,
    representation=False,
    description="one round of RFC (ERM, then DRO over earlier rounds' right/wrong sets)",
)
class RFCRound(MemberKind):
    """Round ``round`` of RFC: ERM for round 0, Group DRO (step size ``eta``) over the right
    and wrong sets of every earlier round otherwise."""

    def __init__(
        self,
        round: Annotated[int, Field(ge=0)] = 0,  # noqa: A002
        eta: Annotated[float, Field(gt=0)] = 0.01,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.round, self.eta, self.overrides = int(round), float(eta), overrides or {}

    def training(self, member: Member, exp: Experiment) -> TrainingConfig:
        phase = "erm" if self.round == 0 else "dro"
        return phase_config(exp, self.overrides, f"rfc phases.{phase}")

    def build(self, member: Member, exp: Experiment, task: Task) -> Classifier:
        with seeded(member.seed, "init", member.kind, member.k, self.round):
            model = Classifier(self.encoder(member, exp, task), self.outputs(member, task))
        model.encoder.set_input_stats(task.train.x)
        return model

    def objective(self, member: Member, exp: Experiment) -> Objective:
        if self.round == 0:
            return super().objective(member, exp)
        return GroupDROSets(self.eta)

    def targets(
        self,
        member: Member,
        task: Task,
        teachers: Sequence[Classifier],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, torch.Tensor]:
        if not teachers:
            return {}
        pred = predictions(teachers, task.train.x, device, dtype)
        return {"group_masks": round_groups(pred, task.train.y)}


@MEMBERS.register(
    "rfc",
    label="rfc{k}",
    order=75,
    marker="P",
    color="tab:brown",
    description="RFC: K rounds (ERM, then DRO on earlier rounds' errors) synthesized into one network",
)
class RFC(MemberKind):
    """The synthesized RFC network of R = ``k`` rounds (see the module docstring)."""

    def __init__(
        self,
        eta: Annotated[float, Field(gt=0)] = 0.01,
        balance: bool = True,
        phases: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.eta, self.balance = float(eta), bool(balance)
        self.phases = dict(phases or {})
        unknown = sorted(set(self.phases) - set(PHASES))
        if unknown:
            raise ConfigError(f"rfc: phases {unknown} unknown; choose from {list(PHASES)}")
        for name, overrides in self.phases.items():
            unknown = sorted(set(overrides) - set(SETTINGS))
            if unknown:
                raise ConfigError(
                    f"rfc phases.{name}: {unknown} cannot be set per phase; choose from "
                    f"{list(SETTINGS)}"
                )

    def training(self, member: Member, exp: Experiment) -> TrainingConfig:
        return phase_config(exp, self.phases.get("synthesis"), "rfc phases.synthesis")

    def plan(self, spec: Baseline, ctx: PlanContext) -> list[Member]:
        out = []
        for seed in [m.seed for m in ctx.singles][: spec.seeds]:
            rounds = []
            for r in range(spec.k):
                rounds.append(
                    Member(
                        f"rfc{spec.k}-r{r}-s{seed}",
                        "rfc_round",
                        spec.k,
                        seed,
                        width=ctx.exp.model.width,
                        params={
                            "round": r,
                            "eta": self.eta,
                            "overrides": self.phases.get("erm" if r == 0 else "dro") or {},
                        },
                        requires=tuple(m.name for m in rounds),
                    )
                )
            student = Member(
                f"rfc{spec.k}-s{seed}",
                "rfc",
                spec.k,
                seed,
                width=ctx.exp.model.width,
                params=dict(spec.params),
                requires=tuple(m.name for m in rounds),
            )
            out += [*rounds, student]
        return out

    def outputs(self, member: Member, task: Task) -> int:
        return member.k * task.num_classes

    def objective(self, member: Member, exp: Experiment) -> Objective:
        return PseudoLabelHeads(member.k)

    def targets(
        self,
        member: Member,
        task: Task,
        teachers: Sequence[Classifier],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, torch.Tensor]:
        """The rounds' predictions on every training example (N, R) and the balancing weights."""
        pred = predictions(teachers, task.train.x, device, dtype)
        weight = balance_weights(pred) if self.balance else torch.ones(len(pred))
        return {"pseudo": pred, "weight": weight}
