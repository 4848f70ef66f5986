"""Diversification as a member kind, ``diverse`` (DivDis, Lee, Yao & Finn, ICLR 2023; in the
family of D-BAT, Pagliardini et al., ICLR 2023): one network of a single seed's size with K
heads trained to fit the source labels while disagreeing on unlabelled inputs (objective
``divdis``); its penultimate features are the ``diverse`` representation, on which the
evaluation's probes and OOD heads then choose (disambiguate) with labels.

Which unlabelled inputs it sees is a field, ``unlabeled`` — "Unraveling the key components of
OOD generalization via diversification" (Benoit et al., 2023) finds these methods very
sensitive to it: ``test`` (the target's test inputs: the test environments, transductively —
the member has seen the inputs it is later scored on, never their labels), ``train`` (the
training inputs again: no new information) or ``mix`` (half of each). The choice names the
column (``diverse2-test``), so several sources compare side by side against catK, which needs
no unlabelled data at all."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from richrep.config import Baseline, Experiment
from richrep.data import Split, Task
from richrep.data.images import require_in_memory
from richrep.data.splits import rng
from richrep.members.base import Member, MemberKind, PlanContext
from richrep.objectives import Objective
from richrep.objectives.divdis import DivDis
from richrep.plugins import MEMBERS

Source = Literal["test", "train", "mix"]


@MEMBERS.register(
    "diverse",
    label="diverse{k}",
    order=78,
    marker="X",
    color="tab:pink",
    description="DivDis: K heads fit the labels and disagree on unlabelled inputs",
)
class Diverse(MemberKind):
    """K heads (K = the spec's ``k``) diversified on the ``unlabeled`` inputs (``test``,
    ``train`` or ``mix``; at most ``max_unlabeled`` of them) with mutual-information weight
    ``mi_weight`` and uniform-marginal weight ``reg_weight``."""

    def __init__(
        self,
        unlabeled: Source = "test",
        mi_weight: Annotated[float, Field(ge=0)] = 1.0,
        reg_weight: Annotated[float, Field(ge=0)] = 1.0,
        max_unlabeled: Annotated[int, Field(ge=2)] | None = None,
    ) -> None:
        self.unlabeled, self.mi_weight, self.reg_weight = unlabeled, mi_weight, reg_weight
        self.max_unlabeled = max_unlabeled

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        return Member(
            f"diverse{spec.k}-{self.unlabeled}-s{seed}",
            "diverse",
            spec.k,
            seed,
            width=ctx.exp.model.width,
            params=dict(spec.params),
        )

    def tag(self, member: Member) -> str:
        return self.unlabeled

    def outputs(self, member: Member, task: Task) -> int:
        return member.k * task.num_classes

    def objective(self, member: Member, exp: Experiment) -> Objective:
        return DivDis(member.k, self.mi_weight, self.reg_weight)

    def training_data(self, member: Member, task: Task) -> Split:
        """The training split followed by the unlabelled inputs, labelled -1 (drawn from the
        member's seed when ``mix`` or ``max_unlabeled`` samples)."""
        g = rng(member.seed, "diverse-unlabeled", self.unlabeled)
        test = require_in_memory(task.test.x, "member kind 'diverse' (unlabelled inputs)")
        train = require_in_memory(task.train.x, "member kind 'diverse' (unlabelled inputs)")
        if self.unlabeled == "test":
            pool = test
        elif self.unlabeled == "train":
            pool = train
        else:
            n = min(len(test), len(train))
            a = torch.as_tensor(g.permutation(len(test))[: n // 2])
            b = torch.as_tensor(g.permutation(len(train))[: n - n // 2])
            pool = torch.cat([test[a], train[b]])
        if self.max_unlabeled is not None and len(pool) > self.max_unlabeled:
            pool = pool[torch.as_tensor(g.permutation(len(pool))[: self.max_unlabeled])]
        y = torch.cat([task.train.y, torch.full((len(pool),), -1, dtype=torch.long)])
        return Split(torch.cat([train, pool]), y)
