"""Members: the networks a run trains. A member kind (registered in ``MEMBERS``) says which
members a spec plans, how each is built, which members it depends on (a student's teachers)
and which objective trains it.

A member's seed drives its initialization and its data order; its name says what it is
(``single-s3``, ``wide5-s0``, ``distill5-s0``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from richrep.config import Baseline, Experiment, TrainingConfig
from richrep.data import Split, Task
from richrep.errors import ConfigError
from richrep.models import Classifier, build_encoder, count_params
from richrep.objectives import Objective, build_objective
from richrep.plugins import MEMBERS
from richrep.runtime.device import autocast
from richrep.runtime.seeding import seeded


@dataclass(frozen=True)
class Member:
    name: str  # e.g. single-s3, wide5-s0, joint5-s0, distill5-s0
    kind: str  # a MEMBERS entry
    k: int  # the catK this member stands for (1 for single)
    seed: int
    width: float = 1.0
    feature_dim: int | None = None  # overrides the family's feature_dim (wide_dim)
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    requires: tuple[str, ...] = ()  # members that must be trained first (teachers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["requires"] = list(self.requires)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Member:
        d = dict(d)
        d["requires"] = tuple(d.get("requires", ()))
        d["params"] = dict(d.get("params") or {})
        return cls(**d)


@dataclass
class PlanContext:
    """What a member kind needs to plan its members."""

    exp: Experiment
    input_shape: tuple[int, ...]
    singles: list[Member]
    planned: list[Member] = field(default_factory=list)  # every member planned so far

    def planned_member(self, name: str, where: str) -> Member:
        """A member planned before this one (a seed, or an earlier baseline's), by name."""
        for m in self.planned or self.singles:
            if m.name == name:
                return m
        have = [m.name for m in (self.planned or self.singles)]
        raise ConfigError(
            f"{where}: no member {name!r} is planned before it; the run plans {have} "
            f"(list the baseline it depends on earlier in training.baselines)"
        )

    def feature_dim_of(self, member: Member) -> int:
        """A planned member's feature dimension."""
        if member.feature_dim is not None:
            return int(member.feature_dim)
        with torch.device("meta"):
            return build_encoder(
                self.exp.model.encoder, self.input_shape, member.width, **self.exp.model.params
            ).feature_dim

    def encoder_params(self, width: float, **override: Any) -> int:
        with torch.device("meta"):
            enc = build_encoder(
                self.exp.model.encoder,
                self.input_shape,
                width,
                **{**self.exp.model.params, **override},
            )
        return count_params(enc)

    def feature_dim(self) -> int:
        """A seed's feature dimension."""
        return self.feature_dim_of(Member("", "single", 1, 0, width=self.exp.model.width))

    def match_width(self, target: int) -> float:
        """The width multiplier (to 3 decimals) whose encoder parameter count is closest to
        ``target``."""
        lo = hi = self.exp.model.width
        while self.encoder_params(hi) < target:
            hi *= 2
        for _ in range(40):
            mid = (lo + hi) / 2
            if self.encoder_params(mid) < target:
                lo = mid
            else:
                hi = mid
        cands = {round(w, 3) for w in (lo, hi)}
        return min(cands, key=lambda w: abs(self.encoder_params(w) - target))


Loader = Callable[[str], Classifier]  # member name -> its trained classifier (eval mode)


class MemberKind:
    """Base of the member kinds: one member per seed of the spec, built like a seed of the
    run's encoder, trained with the run's objective."""

    def plan(self, spec: Baseline, ctx: PlanContext) -> list[Member]:
        seeds = [m.seed for m in ctx.singles][: spec.seeds]
        return [self.member(spec, s, ctx) for s in seeds]

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        return Member(
            f"{spec.kind}{spec.k}-s{seed}",
            spec.kind,
            spec.k,
            seed,
            width=ctx.exp.model.width,
            params=dict(spec.params),
        )

    def encoder(self, member: Member, exp: Experiment, task: Task) -> nn.Module:
        params = dict(exp.model.params)
        if member.feature_dim is not None:
            params["feature_dim"] = member.feature_dim
        return build_encoder(exp.model.encoder, task.input_shape, member.width, **params)

    def training(self, member: Member, exp: Experiment) -> TrainingConfig:
        """The member's training settings: the run's, unless the kind overrides some (RFC's
        phases)."""
        return exp.training

    def tag(self, member: Member) -> str:
        """What tells this member's column apart from others of its kind and K (e.g. the
        unlabeled data a ``diverse`` member saw); empty for most kinds."""
        return ""

    def training_data(self, member: Member, task: Task) -> Split:
        """The examples the member trains on (the task's training split; a kind that also
        learns from unlabeled inputs appends them, labelled -1)."""
        return task.train

    def outputs(self, member: Member, task: Task) -> int:
        """Width of the head: the task's classes (times the heads of a multi-head student)."""
        return task.num_classes

    def head(self, member: Member, task: Task, feature_dim: int) -> nn.Module | None:
        """The member's head when it is not one linear layer of :meth:`outputs` logits (nested
        heads, a frozen old classifier beside a new one, a fixed simplex); None by default."""
        return None

    def build(self, member: Member, exp: Experiment, task: Task) -> Classifier:
        """The member's network, initialized deterministically from its seed (and nothing else).
        A kind with its own :meth:`head` gets it in place of a linear head over the classes."""
        own = type(self).head is not MemberKind.head
        objective = self.objective(member, exp)
        with seeded(member.seed, "init", member.kind, member.k):
            enc = self.encoder(member, exp, task)
            model = Classifier(enc, task.num_classes if own else self.outputs(member, task))
            if own:
                model.head = self.head(member, task, enc.feature_dim)
            head = objective.make_head(enc.feature_dim, task.num_classes)
        if head is not None:
            if own:
                raise ConfigError(
                    f"member {member.name}: kind {member.kind!r} has its own head, and objective "
                    f"{type(objective).__name__} trains through another; train this kind with a "
                    "supervised objective"
                )
            model.head = head
        model.encoder.set_input_stats(task.train.x)
        if exp.model.pretrained is not None:
            load_pretrained(member, model.encoder, exp)
        return model

    def objective(self, member: Member, exp: Experiment) -> Objective:
        return build_objective(exp.training.objective.name, exp.training.objective.params)

    def targets(
        self,
        member: Member,
        task: Task,
        teachers: Sequence[Classifier],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, torch.Tensor]:
        """Per-example training targets beside the labels (e.g. teachers' logits)."""
        return {}

    def prepare(self, member: Member, model: Classifier, teachers: Sequence[Classifier]) -> None:
        """Give a freshly built ``model`` what it takes from the members it requires, before
        training (e.g. BCT's frozen copy of the old model's classifier); nothing by default.
        What it sets must live in the model's state (parameters or buffers), so a resumed or
        reloaded member has it from its checkpoint."""


def load_pretrained(member: Member, encoder: nn.Module, exp: Experiment) -> None:
    """``model.pretrained``'s weights into ``encoder`` (each tower of a joint one), in place:
    the seed then sets only the head and the data order."""
    from richrep.models.weights import load_encoder_weights, read_weights

    pre = exp.model.pretrained
    assert pre is not None
    if member.width != exp.model.width or member.feature_dim is not None:
        raise ConfigError(
            f"member {member.name}: model.pretrained holds weights of the configured encoder "
            f"(width {exp.model.width}), not of {member.kind}'s (width {member.width}, feature "
            f"dim {member.feature_dim}); leave {member.kind} baselines out of a pretrained run"
        )
    wf = read_weights(pre.path, pre.sha256)
    towers = getattr(encoder, "towers", None)
    for enc in towers if towers is not None else [encoder]:
        load_encoder_weights(enc, wf)


@torch.no_grad()
def network_outputs(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    batch: int = 1024,
) -> torch.Tensor:
    """Each model's outputs on every input, ``(N, models, outputs)``, float32 on the CPU (the
    teachers' logits a student learns from)."""
    out = []
    for m in models:
        m.eval().to(device)
        parts = []
        for xb in x.split(batch):
            with autocast(device, dtype):
                parts.append(m(xb.to(device)).float().cpu())
        out.append(torch.cat(parts))
    return torch.stack(out, dim=1)


def kind_of(member: Member | str, params: dict[str, Any] | None = None) -> MemberKind:
    """The member kind object of ``member`` (with the arguments it was planned with)."""
    if isinstance(member, Member):
        return MEMBERS.build(member.kind, where=f"member {member.name}", **member.params)
    return MEMBERS.build(member, **(params or {}))


def build_model(member: Member, exp: Experiment, task: Task) -> Classifier:
    """``member``'s network, initialized from its seed (its kind's :meth:`MemberKind.build`)."""
    return kind_of(member).build(member, exp, task)


def plan_members(exp: Experiment, input_shape: tuple[int, ...]) -> list[Member]:
    """Every member the experiment trains: one single per seed, then each baseline's; a member
    comes after the members it requires."""
    singles = [
        Member(f"single-s{s}", "single", 1, s, width=exp.model.width)
        for s in exp.training.seed_list
    ]
    out = list(singles)
    ctx = PlanContext(exp, tuple(input_shape), singles, out)
    for b in exp.training.baselines:
        out += kind_of(b.kind, b.params).plan(b, ctx)
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"training.baselines: members {dup} are planned twice")
    for m in out:
        missing = [r for r in m.requires if r not in names]
        if missing:
            raise ConfigError(f"member {m.name} requires {missing}, which the run does not train")
    return order_by_dependencies(out)


def order_by_dependencies(members: Sequence[Member]) -> list[Member]:
    """Members in waves: each after the members it requires (stable within a wave)."""
    return [m for wave in waves(members) for m in wave]


def waves(members: Sequence[Member]) -> list[list[Member]]:
    """Members grouped so that a wave's members require only members of earlier waves
    (requirements outside ``members`` are taken as already trained)."""
    by_name = {m.name: m for m in members}
    level: dict[str, int] = {}

    def depth(m: Member, seen: tuple[str, ...] = ()) -> int:
        if m.name in level:
            return level[m.name]
        if m.name in seen:
            raise ConfigError(f"member {m.name} depends on itself through {list(seen)}")
        d = 0
        for r in m.requires:
            if r in by_name:
                d = max(d, depth(by_name[r], (*seen, m.name)) + 1)
        level[m.name] = d
        return d

    for m in members:
        depth(m)
    out: list[list[Member]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for m in members:
        out[level[m.name]].append(m)
    return out
