"""Group DRO (Sagawa, Koh, Hashimoto & Liang, ICLR 2020): minimize the q-weighted risk of the
groups, q updated by exponentiated gradient ascent, ``q_g ∝ q_g · exp(eta · R_g)``, so the
weight moves to the worst group. Groups are the environments (DomainBed's choice) or, with
``by: groups``, the data's groups (``batch["groups"]``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import torch
from pydantic import Field

from richrep.errors import ConfigError
from richrep.objectives.base import Batch, Objective
from richrep.objectives.environments import env_index, env_risks, with_environments
from richrep.plugins import OBJECTIVES

if TYPE_CHECKING:
    from richrep.data import Split


def dro_update(q: torch.Tensor, risks: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step of the group weights: ``q · exp(eta · risks)``, normalized."""
    q = q * torch.exp(eta * risks.detach())
    return q / q.sum(-1, keepdim=True)


@OBJECTIVES.register("group_dro")
class GroupDRO(Objective):
    """Σ_g q_g R_g with ``q_g ∝ q_g exp(eta R_g)`` updated at every training step."""

    def __init__(
        self, eta: Annotated[float, Field(gt=0)] = 0.01, by: Literal["env", "groups"] = "env"
    ) -> None:
        super().__init__()
        self.eta, self.by = float(eta), by
        self.q: dict[int, torch.Tensor] = {}  # group id -> weight (per head), groups seen so far

    def prepare(self, data: Split, targets: Batch, *, augmented: bool) -> Batch:
        return with_environments(self, data, super().prepare(data, targets, augmented=augmented))

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        key = "env" if self.by == "env" else "groups"
        if key not in batch:
            raise ConfigError(f"group_dro (by {self.by}) needs {key} in the data; it has none")
        groups = batch[key]
        ids = env_index(groups)[0].tolist()
        risks = env_risks(logits, batch["y"], groups)  # (..., G)
        lead = risks.shape[:-1]
        q = torch.stack([self.q.get(g, torch.ones(lead, device=risks.device)) for g in ids], -1)
        q = q / q.sum(-1, keepdim=True)
        if self.training:
            q = dro_update(q, risks, self.eta)
            for j, g in enumerate(ids):
                self.q[g] = q[..., j].detach()
        return (q * risks).sum(-1)


@OBJECTIVES.register("group_dro_sets")
class GroupDROSets(Objective):
    """Group DRO over possibly overlapping example sets given per example in
    ``batch["group_masks"]`` (N, G) — e.g. RFC's robust rounds, whose groups are the examples
    each earlier round got right and those it got wrong. A set absent from a batch keeps its
    weight and adds nothing."""

    def needs(self) -> tuple[str, ...]:
        return ("group_masks",)

    def __init__(self, eta: Annotated[float, Field(gt=0)] = 0.01) -> None:
        super().__init__()
        self.eta = float(eta)
        self.q: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        masks = batch["group_masks"].to(torch.float32)  # (N, G)
        ce = torch.nn.functional.cross_entropy(logits.float(), batch["y"], reduction="none")
        counts = masks.sum(0)
        risks = (ce @ masks) / counts.clamp_min(1)
        if self.q is None or self.q.shape[0] != masks.shape[1]:
            self.q = torch.full((masks.shape[1],), 1.0 / masks.shape[1], device=ce.device)
        q = self.q.to(ce.device)
        if self.training:
            present = counts > 0
            step = torch.where(present, torch.exp(self.eta * risks.detach()), torch.ones_like(q))
            q = q * step
            q = q / q.sum()
            self.q = q.detach()
        return (q * risks).sum()
