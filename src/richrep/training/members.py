"""Members: the networks a run trains. ``single`` members (one per seed) make catK; the
baselines are ``wide`` (width chosen so the encoder's parameter count matches catK), ``wide_dim``
(feature dimension equal to catK's, K·d) and ``joint`` (K towers and one head trained together),
as in Zhang & Bottou (ICML 2023)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from richrep.config import Experiment
from richrep.data import Task
from richrep.models import Classifier, JointEncoder, build_encoder, count_params
from richrep.training.seeding import seeded


@dataclass(frozen=True)
class Member:
    name: str  # e.g. single-s3, wide5-s0, joint5-s0
    kind: str  # single | wide | wide_dim | joint
    k: int  # the catK this member stands for (1 for single)
    seed: int
    width: float = 1.0
    feature_dim: int | None = None  # overrides the family's feature_dim (wide_dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_members(exp: Experiment, input_shape: tuple[int, ...]) -> list[Member]:
    """Every member the experiment trains: one single per seed, then the baselines."""
    seeds = exp.training.seed_list
    out = [Member(f"single-s{s}", "single", 1, s) for s in seeds]
    base_params = encoder_params(exp, input_shape, exp.model.width)
    for b in exp.training.baselines:
        for s in seeds[: b.seeds]:
            if b.kind == "wide":
                w = match_width(exp, input_shape, b.k * base_params)
                out.append(Member(f"wide{b.k}-s{s}", "wide", b.k, s, width=w))
            elif b.kind == "wide_dim":
                d = b.k * _feature_dim(exp, input_shape)
                out.append(Member(f"wide_dim{b.k}-s{s}", "wide_dim", b.k, s, feature_dim=d))
            else:
                out.append(Member(f"joint{b.k}-s{s}", "joint", b.k, s))
    return out


def _feature_dim(exp: Experiment, input_shape: tuple[int, ...]) -> int:
    with torch.device("meta"):
        return build_encoder(
            exp.model.encoder, input_shape, exp.model.width, **exp.model.params
        ).feature_dim


def encoder_params(
    exp: Experiment, input_shape: tuple[int, ...], width: float, **override: Any
) -> int:
    with torch.device("meta"):
        enc = build_encoder(
            exp.model.encoder, input_shape, width, **{**exp.model.params, **override}
        )
    return count_params(enc)


def match_width(exp: Experiment, input_shape: tuple[int, ...], target: int) -> float:
    """The width multiplier (to 3 decimals) whose encoder parameter count is closest to ``target``."""
    lo, hi = exp.model.width, exp.model.width
    while encoder_params(exp, input_shape, hi) < target:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        if encoder_params(exp, input_shape, mid) < target:
            lo = mid
        else:
            hi = mid
    cands = {round(w, 3) for w in (lo, hi)}
    return min(cands, key=lambda w: abs(encoder_params(exp, input_shape, w) - target))


def build_model(member: Member, exp: Experiment, task: Task) -> Classifier:
    """The member's network, initialized deterministically from its seed (and nothing else)."""
    params = dict(exp.model.params)
    with seeded(member.seed, "init", member.kind, member.k):
        if member.kind == "joint":
            towers = [
                build_encoder(exp.model.encoder, task.input_shape, exp.model.width, **params)
                for _ in range(member.k)
            ]
            encoder: Any = JointEncoder(towers)
        else:
            if member.feature_dim is not None:
                params["feature_dim"] = member.feature_dim
            width = member.width if member.kind == "wide" else exp.model.width
            encoder = build_encoder(exp.model.encoder, task.input_shape, width, **params)
        model = Classifier(encoder, task.num_classes)
    model.encoder.set_input_stats(task.train.x)
    return model


def build_random_encoder(member: Member, exp: Experiment, task: Task) -> torch.nn.Module:
    """The untrained encoder of ``member`` (the "random" floor): same seed, no training."""
    return build_model(member, exp, task).encoder
