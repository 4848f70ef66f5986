"""Backward-compatible training (Shen et al., CVPR 2020, "Towards Backward-Compatible
Representation Learning"): the new model's cross-entropy plus the *influence loss*, the
cross-entropy of the new features through the old model's classifier, kept frozen, weighted
by ``weight``. The logits are those of :class:`~richrep.members.bct.CompatibleHead`: the new
head's ``C`` logits, then the old classifier's ``C``; predictions are the new head's."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.objectives.base import Batch, Objective
from richrep.plugins import OBJECTIVES


@OBJECTIVES.register("bct")
class BackwardCompatible(Objective):
    """CE(new head) + ``weight`` · CE(old frozen classifier on the new features)."""

    def reads_head_of(self) -> str:
        return "bct"

    def __init__(self, weight: Annotated[float, Field(ge=0)] = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    @staticmethod
    def _halves(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new, old = logits.float().chunk(2, dim=-1)
        return new, old

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        new, old = self._halves(logits)
        y = batch["y"]
        return F.cross_entropy(new, y) + self.weight * F.cross_entropy(old, y)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self._halves(logits)[0].argmax(-1)
