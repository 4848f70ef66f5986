"""Cross-entropy on the labels: empirical risk minimization."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from richrep.objectives.base import Batch, Objective
from richrep.objectives.environments import example_losses
from richrep.plugins import OBJECTIVES


@OBJECTIVES.register("cross_entropy")
class CrossEntropy(Objective):
    """Cross-entropy of the labels (ERM), optionally with label smoothing."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if logits.ndim == 2:
            return F.cross_entropy(logits, batch["y"], label_smoothing=self.label_smoothing)
        # (..., N, C): several heads at once, one loss each
        return example_losses(logits, batch["y"], self.label_smoothing).mean(-1)
