"""Multi-head fitting of pseudo-labels: head k fits the labels ``batch["pseudo"][:, k]`` (e.g.
the predictions of RFC's k-th round, Zhang, Lopez-Paz & Bottou, ICML 2022, synthesis step),
each example weighted by ``batch["weight"]`` when given. Predictions average the heads'
probabilities."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.errors import ConfigError
from richrep.objectives.base import Batch, Objective
from richrep.plugins import OBJECTIVES


@OBJECTIVES.register("pseudo_labels")
class PseudoLabelHeads(Objective):
    """Σ_k weighted cross-entropy of head k against pseudo-label column k."""

    def needs(self) -> tuple[str, ...]:
        return ("pseudo",)

    def __init__(self, heads: Annotated[int, Field(ge=1)] = 1) -> None:
        super().__init__()
        self.heads = int(heads)

    def _split(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(logits.shape[0], self.heads, -1)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        heads = self._split(logits).float()
        pseudo = batch["pseudo"]
        if pseudo.shape != heads.shape[:2]:
            raise ConfigError(
                f"pseudo_labels: pseudo-labels {tuple(pseudo.shape)} do not match the heads "
                f"{tuple(heads.shape[:2])}"
            )
        ce = F.cross_entropy(heads.flatten(0, 1), pseudo.flatten(), reduction="none")
        ce = ce.view_as(pseudo).sum(1)
        w = batch.get("weight")
        if w is None:
            return ce.mean()
        return (w * ce).sum() / w.sum().clamp_min(1e-12)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self._split(logits).float().softmax(-1).mean(1).argmax(-1)
