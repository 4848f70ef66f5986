"""Hooks of the training loop (:mod:`richrep.training.loop`): what runs around its steps and
after each epoch of each model, beside the training itself.

:class:`Progress` reports steps done (and each epoch's loss); :class:`EachStep` calls a
function after every step; :class:`Checkpoints` writes each model's epoch
checkpoint (the resume point); :class:`BestEpoch` scores the model on a validation split after
every epoch and keeps the best epoch's weights (fine-tuning); :class:`EveryNSteps` records an
evaluation every N steps and after the last (the ``ood`` protocol's networks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from richrep.training.checkpoint import save_checkpoint
from richrep.training.step import Step

UnitProgress = Callable[[int, int, int], None]  # (model index, steps done, steps total)
EpochReport = Callable[[int, int, int, float], None]  # (model index, epoch, epochs, mean loss)


class Loop(Protocol):
    """What hooks see of :class:`richrep.training.loop.Loop`."""

    step: Step
    starts: list[int]  # the first epoch each model trains (after its checkpoint)
    histories: list[list[dict[str, Any]]]
    steps: int  # per epoch
    epochs: int
    total: int  # steps of the whole training


class Hook:
    """Does nothing; a hook overrides what it needs. ``at`` counts steps from 0 across
    epochs; ``record`` is the epoch's entry of a model's history (epoch, loss, train_acc,
    seconds)."""

    def begin(self, loop: Loop) -> None:
        """Before the first epoch."""

    def before_step(self, loop: Loop, at: int) -> None:
        """Before step ``at``."""

    def after_step(self, loop: Loop, at: int, losses: torch.Tensor) -> None:
        """After step ``at``: ``losses`` of the active models (``loop.step.active``)."""

    def end_epoch(self, loop: Loop, j: int, record: dict[str, Any]) -> None:
        """After an epoch that model ``j`` finished with a finite loss."""


class Progress(Hook):
    """``on_step(k, done, total)`` for every model at the start, then after each step;
    ``on_epoch(k, epoch, epochs, loss)`` after each epoch a model finished. The last step is
    reported after the last epoch's record (and checkpoint): a model is done once its
    training is recorded, and a model whose loss failed never reports it."""

    def __init__(self, on_step: UnitProgress | None, on_epoch: EpochReport | None = None) -> None:
        self.on_step, self.on_epoch = on_step, on_epoch

    def begin(self, loop: Loop) -> None:
        if self.on_step is not None:
            for j, start in enumerate(loop.starts):
                self.on_step(j, start * loop.steps, loop.total)

    def after_step(self, loop: Loop, at: int, losses: torch.Tensor) -> None:
        if self.on_step is not None and at + 1 < loop.total:
            for j in loop.step.active:
                self.on_step(j, at + 1, loop.total)

    def end_epoch(self, loop: Loop, j: int, record: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(j, record["epoch"], loop.epochs, record["loss"])
        if self.on_step is not None and record["epoch"] == loop.epochs:
            self.on_step(j, loop.total, loop.total)


class EachStep(Hook):
    """``fn()`` after every step (a protocol counting its work)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def after_step(self, loop: Loop, at: int, losses: torch.Tensor) -> None:
        self.fn()


class Checkpoints(Hook):
    """Model ``k``'s epoch checkpoint at ``paths[k]`` (None: none) after each of its epochs,
    with its optimizer state and history."""

    def __init__(self, paths: Sequence[Path | None]) -> None:
        self.paths = list(paths)

    def end_epoch(self, loop: Loop, j: int, record: dict[str, Any]) -> None:
        path = self.paths[j]
        if path is not None:
            model, opt = loop.step.models[j], loop.step.optimizers[j]
            save_checkpoint(path, model, opt, epoch=record["epoch"], history=loop.histories[j])


class BestEpoch(Hook):
    """After each epoch, ``evaluate(model) -> (accuracy, loss)`` on a validation split; keeps
    the state of the best epoch (higher accuracy, ties to the lower loss, then the earlier
    epoch) or, without ``select``, of the last. One model."""

    def __init__(self, evaluate: Callable[[nn.Module], tuple[float, float]], select: bool) -> None:
        self.evaluate, self.select = evaluate, select
        self.state: dict[str, torch.Tensor] | None = None
        self.epoch, self.acc, self.loss = 0, float("-inf"), float("inf")
        self.history: list[dict[str, float]] = []

    def end_epoch(self, loop: Loop, j: int, record: dict[str, Any]) -> None:
        model = loop.step.models[j]
        acc, loss = self.evaluate(model)
        epoch = record["epoch"]
        self.history.append(
            {"epoch": epoch, "loss": record["loss"], "val_acc": acc, "val_loss": loss}
        )
        better = (acc, -loss) > (self.acc, -self.loss) if self.select else True
        if better or self.state is None:
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.epoch, self.acc, self.loss = epoch, acc, loss


class EveryNSteps(Hook):
    """``evaluate(model) -> dict`` every ``every`` steps and after the last, recorded with the
    step's number (counted from 1). One model."""

    def __init__(self, every: int, evaluate: Callable[[nn.Module], dict[str, Any]]) -> None:
        self.every, self.evaluate = every, evaluate
        self.records: list[dict[str, Any]] = []

    def after_step(self, loop: Loop, at: int, losses: torch.Tensor) -> None:
        step = at + 1
        if step % self.every == 0 or step == loop.total:
            self.records.append({"step": step, **self.evaluate(loop.step.models[0])})
