"""Multi-head distillation of K teachers into one student (Hinton et al. 2015; the distillK
baseline of Zhang & Bottou, ICML 2023).

The student has K linear heads on its features; head k matches teacher k's logits through the
KL divergence of their temperature-softened distributions (scaled by T² so its gradients keep
their size as T changes), and every head also fits the labels with cross-entropy, weighted by
``label_weight``. Predictions average the heads' probabilities.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.errors import ConfigError
from richrep.objectives.base import Batch, Objective
from richrep.plugins import OBJECTIVES


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the batch;
    ``student`` and ``teacher`` are ``(B, heads, classes)``, the KL is summed over classes
    and averaged over heads."""
    t = float(temperature)
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.mean() * t * t


@OBJECTIVES.register("distillation")
class MultiHeadDistillation(Objective):
    """K heads, head k distilled from teacher k's logits (KL at temperature T) plus the label
    cross-entropy of every head weighted by ``label_weight``."""

    def __init__(
        self,
        heads: Annotated[int, Field(ge=1)] = 1,
        temperature: Annotated[float, Field(gt=0)] = 4.0,
        label_weight: Annotated[float, Field(ge=0, le=1)] = 0.5,
    ) -> None:
        super().__init__()
        self.heads = int(heads)
        self.temperature = float(temperature)
        self.label_weight = float(label_weight)

    def _split(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(logits.shape[0], self.heads, -1)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        student = self._split(logits)
        loss = torch.zeros((), device=logits.device)
        if self.label_weight < 1.0:
            teacher = batch["teacher_logits"]
            if teacher.shape != student.shape:
                raise ConfigError(
                    f"distillation: teacher logits {tuple(teacher.shape)} do not match the "
                    f"student's heads {tuple(student.shape)}"
                )
            loss = (1.0 - self.label_weight) * distillation_loss(student, teacher, self.temperature)
        if self.label_weight > 0.0:
            y = batch["y"].repeat_interleave(self.heads)
            ce = F.cross_entropy(student.reshape(-1, student.shape[-1]).float(), y)
            loss = loss + self.label_weight * ce
        return loss

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self._split(logits).float().softmax(-1).mean(1).argmax(-1)
