"""Matryoshka representation learning (Kusupati et al., NeurIPS 2022): the sum, weighted, of
the cross-entropy losses of heads on nested prefixes of the feature vector, so the first m
features are a usable representation on their own for every m of the nest. The logits are
those of :class:`~richrep.models.heads.NestedHeads`; predictions are the full-width head's."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.errors import ConfigError
from richrep.objectives.base import Batch, Objective
from richrep.plugins import OBJECTIVES


@OBJECTIVES.register("matryoshka")
class Matryoshka(Objective):
    """Σ_i weights[i] · CE(head on the first dims[i] features); ``heads`` nested heads."""

    def __init__(
        self,
        heads: Annotated[int, Field(ge=1)] = 1,
        weights: list[Annotated[float, Field(ge=0)]] | None = None,
    ) -> None:
        super().__init__()
        w = [1.0] * heads if weights is None else [float(v) for v in weights]
        if len(w) != heads:
            raise ConfigError(f"matryoshka: weights must be {heads} numbers, one a head, got {w}")
        self.heads = int(heads)
        self.register_buffer("weights", torch.tensor(w), persistent=False)

    def _split(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(logits.shape[0], self.heads, -1).float()

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        heads = self._split(logits)
        y = batch["y"].repeat_interleave(self.heads)
        ce = F.cross_entropy(heads.flatten(0, 1), y, reduction="none").view(-1, self.heads)
        return (ce.mean(0) * self.weights.to(ce.device)).sum()

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self._split(logits)[:, -1].argmax(-1)
