"""``simplex`` member kind: one network per seed whose classifier is fixed to a regular simplex
and never trained (Pernici et al., 2021, "Regular Polytope Networks"; Biondi et al., CVPR 2024,
"Stationary Representations: Optimally Approximating Compatibility and Implications for
Improved Model Replacements"). Every seed's features are trained towards the same class
directions, so models trained apart share one feature space: a new seed is compatible with an
old one without any term that looks at the old model.

The C vertices are the centred basis vectors ``sqrt(C/(C-1)) (e_c - 1/C)``: unit norm, pairwise
cosine −1/(C−1), a regular simplex in the (C−1)-dimensional subspace orthogonal to the all-ones
vector of the first C coordinates (placed there so that non-negative ReLU features can reach
every vertex); the other feature dimensions get zero weight and nothing aligns them across
seeds, so ``feature_dim: C`` (the number of classes) makes every feature a simplex coordinate,
as in the papers (d = C − 1 plus the all-ones direction ReLU features need). Needs a feature
dimension of at least C.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from richrep.config import Baseline
from richrep.data import Task
from richrep.errors import ConfigError
from richrep.members.base import Member, MemberKind, PlanContext
from richrep.plugins import MEMBERS


def simplex_vertices(classes: int, dim: int) -> torch.Tensor:
    """(classes, dim): the regular simplex's unit vertices in the first ``classes`` coordinates."""
    if classes < 2 or dim < classes:
        raise ConfigError(
            f"simplex: {classes} classes need a feature dimension of at least {classes}, got {dim}"
        )
    c = torch.eye(classes, dtype=torch.float64) - 1.0 / classes
    w = torch.zeros(classes, dim, dtype=torch.float64)
    w[:, :classes] = c * (classes / (classes - 1)) ** 0.5
    return w.float()


class FixedSimplex(nn.Module):
    """A linear classifier without bias whose weights are the simplex's vertices (a buffer, so
    never trained), times ``scale``."""

    def __init__(self, feature_dim: int, classes: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weight", simplex_vertices(classes, feature_dim) * scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.t().to(z.dtype)


@MEMBERS.register(
    "simplex",
    label="simplex",
    order=90,
    marker="d",
    color="tab:gray",
    k_range=(1, 1),
    description="one seed trained against a fixed regular-simplex classifier (stationary)",
)
class Simplex(MemberKind):
    """One network per seed (``seeds`` of them, the run's seeds in order) with the classifier
    fixed to a regular simplex (``scale`` multiplies the unit vertices); ``feature_dim``
    overrides the encoder's (default: the run's)."""

    def __init__(
        self,
        scale: Annotated[float, Field(gt=0)] = 1.0,
        feature_dim: Annotated[int, Field(ge=2)] | None = None,
    ) -> None:
        self.scale, self.feature_dim = float(scale), feature_dim

    def member(self, spec: Baseline, seed: int, ctx: PlanContext) -> Member:
        return Member(
            f"simplex-s{seed}",
            "simplex",
            1,
            seed,
            width=ctx.exp.model.width,
            feature_dim=self.feature_dim,
            params=dict(spec.params),
        )

    def head(self, member: Member, task: Task, feature_dim: int) -> FixedSimplex:
        return FixedSimplex(feature_dim, task.num_classes, self.scale)
