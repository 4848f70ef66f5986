"""The objective contract."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from richrep.plugins import OBJECTIVES

Batch = dict[str, torch.Tensor]  # "y" (labels) and per-example targets, e.g. "teacher_logits"


class Objective(nn.Module):
    """Base class: ``forward(logits, batch) -> loss`` for one model; ``predict(logits)``."""

    folds: ClassVar[bool] = True  # K models' losses add up: they may train fused
    needs: ClassVar[tuple[str, ...]] = ()  # per-example targets beside the labels it reads
    uses_env: ClassVar[bool] = False  # reads batch["env"] (and "groups"): the data's Split.env
    head: ClassVar[str] = ""  # a member kind whose head the loss reads (e.g. bct); "" for any
    views: ClassVar[int] = 1  # augmented views per example the loop feeds (SimSiam: 2)
    labels: ClassVar[bool] = True  # trains on labels (False: self-supervised, no accuracy)

    def make_head(self, feature_dim: int, classes: int) -> nn.Module | None:
        """The head this objective trains through (SimSiam's projector and predictor), in
        place of the member kind's; None: the kind's own."""
        return None

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class predictions ``(B,)`` from logits ``(B, heads * classes)``."""
        return logits.argmax(-1)


def build_objective(name: str, params: dict[str, Any] | None = None) -> Objective:
    """The registered objective ``name`` with ``params`` (validated against its signature)."""
    return OBJECTIVES.build(name, where="training.objective", **(params or {}))
