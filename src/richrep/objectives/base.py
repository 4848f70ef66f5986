"""The objective contract: a loss, and what it asks of the training loop, as methods the loop
calls (it special-cases no objective)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from richrep.errors import ConfigError
from richrep.plugins import OBJECTIVES
from richrep.runtime.device import autocast

if TYPE_CHECKING:
    from richrep.data import Split, Task

Batch = dict[str, torch.Tensor]  # "y" (labels) and per-example targets, e.g. "teacher_logits"
Augment = Callable[[torch.Tensor, int], torch.Tensor]  # (batch, view) -> that augmented view


class Objective(nn.Module):
    """Base class: ``forward(logits, batch) -> loss`` for one model; ``predict(logits)``; and
    what the loop asks of it: :meth:`folds`, :meth:`prepare`, :meth:`inputs`, :meth:`score`."""

    def folds(self) -> bool:
        """Whether K models' losses add up, so they may train fused as one module."""
        return True

    def needs(self) -> tuple[str, ...]:
        """Per-example targets beside the labels that a member kind must supply."""
        return ()

    def reads_head_of(self) -> str:
        """The member kind whose own head this loss reads (e.g. ``bct``); "" for any head."""
        return ""

    def prepare(self, data: Split, targets: Batch, *, augmented: bool) -> Batch:
        """Check, before any training, that this loss can train on ``data`` with ``targets``
        (from the member kind) and augmentation (or none); return the per-example tensors each
        batch gathers beside the labels. A :class:`ConfigError` says what is missing."""
        missing = [t for t in self.needs() if t not in targets]
        if missing:
            raise ConfigError(f"objective {type(self).__name__} needs targets {missing}")
        return targets

    def inputs(self, x: torch.Tensor, augment: Augment | None) -> torch.Tensor:
        """The batch the models see from the examples ``x``: ``augment(x, 0)``, or ``x``
        without augmentation (SimSiam concatenates two views)."""
        return x if augment is None else augment(x, 0)

    def make_head(self, feature_dim: int, classes: int) -> nn.Module | None:
        """The head this objective trains through (SimSiam's projector and predictor), in
        place of the member kind's; None: the kind's own."""
        return None

    def score(
        self, model: nn.Module, task: Task, device: torch.device, dtype: torch.dtype
    ) -> tuple[float, str]:
        """(value, metric) of a trained member on the task's validation split: accuracy of
        :meth:`predict` (a self-supervised objective scores its features otherwise)."""
        return accuracy(model, task.val, device, dtype, objective=self), "accuracy"

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class predictions ``(B,)`` from logits ``(B, heads * classes)``."""
        return logits.argmax(-1)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    split: Split,
    device: torch.device,
    dtype: torch.dtype,
    batch: int = 2048,
    objective: Objective | None = None,
) -> float:
    """Accuracy of ``model`` on ``split`` (predictions through ``objective.predict``, default
    the argmax)."""
    predict = objective.predict if objective is not None else (lambda lg: lg.argmax(-1))
    model.eval().to(device)
    correct = 0
    for xb, yb in zip(split.x.split(batch), split.y.split(batch), strict=True):
        with autocast(device, dtype):
            correct += int((predict(model(xb.to(device))).cpu() == yb).sum())
    return correct / max(len(split), 1)


def build_objective(name: str, params: dict[str, Any] | None = None) -> Objective:
    """The registered objective ``name`` with ``params`` (validated against its signature)."""
    return OBJECTIVES.build(name, where="training.objective", **(params or {}))
