"""The one training loop: every strategy, fine-tuning and the ``ood`` protocol's networks
train through :class:`Loop` — a batch source (:mod:`~richrep.training.batches`), a step
(:mod:`~richrep.training.step`: forward, objectives, backward, optimizer at the scheduled
learning rate) and hooks around steps and after each epoch (:mod:`~richrep.training.hooks`:
progress, checkpoints, validation with the best epoch kept, evaluation every N steps).

:func:`train_unit` trains a unit: one model, or several of one architecture folded into a
:class:`~richrep.training.fused.FusedClassifier` (``fused=True``). For each model ``k``: epoch
``e`` visits the data in ``epoch_order(seeds[k], e, n)`` in batches of ``cfg.batch_size`` (last
partial batch kept), the learning rate follows ``lr_at`` per step, its optimizer updates its
parameters with its own gradients only, its objective turns its logits (and the batch: labels
and per-example targets such as a teacher's logits) into its loss, and an epoch checkpoint is
written after every epoch, from which a killed run resumes bit-identically (data order is a
function of seed and epoch). A model whose loss becomes non-finite is reported as failed with
its seed and epoch, and the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split
from richrep.data.augment import build_augment
from richrep.errors import ConfigError, StoreError, TrainingError
from richrep.objectives import Batch, CrossEntropy, Objective
from richrep.objectives.base import Augment, accuracy
from richrep.store import remove
from richrep.training.batches import Batches, EpochOrder, Rows, augment_batches, epoch_order
from richrep.training.checkpoint import load_checkpoint
from richrep.training.hooks import Checkpoints, EpochReport, Hook, Progress, UnitProgress
from richrep.training.step import Step, lr_at, make_optimizer, uses_channels_last

__all__ = [
    "EpochReport",
    "Loop",
    "UnitProgress",
    "accuracy",
    "epoch_order",
    "lr_at",
    "make_optimizer",
    "train_member",
    "train_unit",
    "uses_channels_last",
]

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def nonfinite_message(member: str, seed: int, loss: float, epoch: int) -> str:
    return (
        f"member {member or '?'} (seed {seed}): the training loss became {loss} in epoch "
        f"{epoch + 1}; lower training.lr or check the data"
    )


def resume(model: nn.Module, cfg: TrainingConfig, path: Path | None):  # noqa: ANN201
    """(start epoch, history, optimizer) of ``model`` after loading its epoch checkpoint
    ``path`` if there is one; a corrupt one is dropped (never used) and training restarts."""
    opt = make_optimizer(model, cfg)
    if path is None or not path.exists():
        return 0, [], opt
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        meta = load_checkpoint(path, model, opt)
        return int(meta["epoch"]), list(meta.get("history", [])), opt
    except (StoreError, KeyError, RuntimeError, ValueError):
        remove(path)  # richrep's own resume point, bad: drop it and restart
        model.load_state_dict(initial)
        return 0, [], make_optimizer(model, cfg)


class Loop:
    """Train ``step.models[k]`` from epoch ``starts[k]`` (default 0) to ``epochs`` on the
    batches of ``batches`` (model ``k``'s drawn with ``seeds[k]``): each batch gathers the labels
    ``y`` and model ``k``'s per-example ``targets[k]`` at its rows; ``lr(at, total)`` is the
    learning rate of step ``at``; ``augment`` (if any) augments each model's examples with its
    own generator per (seed, epoch, step, view), the objective choosing the views
    (:meth:`~richrep.objectives.Objective.inputs`). After each epoch, a model with a finite
    mean loss gets a history entry (``histories[k]``) and the hooks' ``end_epoch``; one with a
    non-finite loss is recorded in ``failed[k] = (epoch, loss)`` and trains no further."""

    def __init__(
        self,
        step: Step,
        batches: Batches,
        y: torch.Tensor,
        targets: Sequence[Batch],
        seeds: Sequence[int],
        *,
        epochs: int,
        lr: Callable[[int, int], float],
        hooks: Sequence[Hook] = (),
        augment: Augmentation | None = None,
        starts: Sequence[int] | None = None,
        histories: Sequence[list[dict[str, Any]]] | None = None,
    ) -> None:
        self.step, self.batches, self.y = step, batches, y
        self.targets, self.seeds = list(targets), list(seeds)
        self.epochs, self.lr, self.hooks, self.augment = epochs, lr, list(hooks), augment
        k = len(self.seeds)
        self.starts = list(starts) if starts is not None else [0] * k
        self.histories = [list(h) for h in histories] if histories else [[] for _ in range(k)]
        self.failed: dict[int, tuple[int, float]] = {}
        self.steps: int = batches.steps
        self.total = epochs * self.steps

    def run(self) -> None:
        for h in self.hooks:
            h.begin(self)
        for epoch in range(min(self.starts, default=self.epochs), self.epochs):
            active = [
                j
                for j in range(len(self.seeds))
                if self.starts[j] <= epoch and j not in self.failed
            ]
            if active:
                self.epoch(epoch, active)
        self.step.close()

    def epoch(self, epoch: int, active: list[int]) -> None:
        t0 = time.perf_counter()
        self.step.begin(active)
        seeds = [self.seeds[j] for j in active]
        device = self.step.device
        loss_sum = torch.zeros(len(active), device=device)
        correct = torch.zeros(len(active), device=device, dtype=torch.long)
        seen = 0
        for s, (rows, xs) in enumerate(self.batches.epoch(seeds, epoch)):
            size = xs.shape[1]
            augment = None
            if self.augment is not None:
                augment = partial(_views, self.augment, seeds=seeds, epoch=epoch, step=s)
            losses, right = self.train_step(epoch * self.steps + s, rows, xs, augment)
            loss_sum += losses.float() * size
            correct += right
            seen += size
        self.step.end()
        seconds = time.perf_counter() - t0
        mean_losses, accs = (loss_sum / seen).tolist(), (correct.double() / seen).tolist()
        for a, j in enumerate(active):
            if not math.isfinite(mean_losses[a]):
                self.failed[j] = (epoch, mean_losses[a])
                continue
            record = {
                "epoch": epoch + 1,
                "loss": mean_losses[a],
                "train_acc": accs[a],
                "seconds": seconds,
            }
            self.histories[j].append(record)
            for h in self.hooks:
                h.end_epoch(self, j, record)

    def train_step(
        self, at: int, rows: Rows, xs: torch.Tensor, augment: Augment | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on the examples ``rows`` (per active model) with inputs ``xs``: (losses,
        correct predictions) of the active models."""
        for h in self.hooks:
            h.before_step(self, at)
        active = self.step.active
        ys = [self.y[r] for r in rows]
        batches = [
            {"y": ys[a], **{name: t[rows[a]] for name, t in self.targets[j].items()}}
            for a, j in enumerate(active)
        ]
        losses, logits = self.step(self.step.inputs(xs, augment), batches, self.lr(at, self.total))
        with torch.no_grad():
            right = torch.stack(
                [
                    (self.step.objectives[j].predict(logits[a]) == ys[a]).sum()
                    for a, j in enumerate(active)
                ]
            )
        for h in self.hooks:
            h.after_step(self, at, losses)
        return losses, right


def _views(
    augment: Augmentation, xs: torch.Tensor, view: int, *, seeds: list[int], epoch: int, step: int
) -> torch.Tensor:
    return augment_batches(augment, xs, seeds, epoch, step, view)


def _per_model(
    k: int,
    seeds: Sequence[int],
    objectives: Sequence[Objective] | None,
    targets: Sequence[Batch] | None,
    paths: Sequence[Path | None] | None,
    names: Sequence[str] | None,
) -> tuple[list[Objective], list[Batch], list[Path | None], list[str]]:
    """Each model's objective (default cross-entropy), targets, checkpoint path and name."""
    out = (
        list(objectives) if objectives is not None else [CrossEntropy() for _ in range(k)],
        list(targets) if targets is not None else [{} for _ in range(k)],
        list(paths) if paths is not None else [None] * k,
        list(names) if names is not None else [""] * k,
    )
    if not all(len(x) == k for x in (seeds, *out)):
        raise ConfigError(
            "train_unit: seeds, objectives, targets, paths and names need one per model"
        )
    return out


def _prepared(
    objective: Objective, train: Split, targets: Batch, augmented: bool, name: str
) -> Batch:
    try:
        return objective.prepare(train, targets, augmented=augmented)
    except ConfigError as e:
        raise ConfigError(f"{name or 'model'}: {e}") from None


def train_unit(
    models: Sequence[nn.Module],
    seeds: Sequence[int],
    train: Split,
    cfg: TrainingConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
    fused: bool = False,
    objectives: Sequence[Objective] | None = None,
    targets: Sequence[dict[str, torch.Tensor]] | None = None,
    partial_paths: Sequence[Path | None] | None = None,
    names: Sequence[str] | None = None,
    on_step: UnitProgress | None = None,
    on_epoch: EpochReport | None = None,
) -> list[dict[str, Any]]:
    """Train ``models[k]`` in place with ``seeds[k]``; one result per model:
    ``{"history": [...]}`` plus ``"failed": message`` for a model whose loss became non-finite.

    Without ``fused`` the unit is a single model. ``objectives[k]`` (default cross-entropy)
    gives model ``k``'s loss from its logits and the batch; ``targets[k]`` are its per-example
    training targets beside the labels; ``partial_paths[k]`` its epoch checkpoint (resumed from
    if present); ``names[k]`` its name in messages; ``on_step(k, done, total)`` its progress and
    ``on_epoch(k, epoch, epochs, loss)`` each epoch's mean loss.
    """
    k = len(models)
    if not fused and k != 1:
        raise ConfigError(f"train_unit: {k} models need fused=True")
    objs, tgts, paths, labels = _per_model(k, seeds, objectives, targets, partial_paths, names)
    if fused and not all(o.folds() for o in objs):
        raise ConfigError("train_unit: these objectives cannot train fused models")
    augment = build_augment(cfg.augment) if cfg.augment else None
    tgts = [
        _prepared(o, train, tg, augment is not None, labels[j])
        for j, (o, tg) in enumerate(zip(objs, tgts, strict=True))
    ]
    models = [m.to(device) for m in models]
    resumed = [resume(m, cfg, p) for m, p in zip(models, paths, strict=True)]
    starts, histories, opts = ([r[i] for r in resumed] for i in range(3))
    batches = EpochOrder(train, cfg.batch_size, device)
    step = Step(
        models,
        opts,
        objs,
        device=device,
        dtype=dtype,
        fused=fused,
        channels_last=uses_channels_last(models[0], batches.x),
        cfg=cfg,
    )
    loop = Loop(
        step,
        batches,
        train.y.to(device),
        [{name: t.to(device) for name, t in tg.items()} for tg in tgts],
        seeds,
        epochs=cfg.epochs,
        lr=partial(lr_at, cfg=cfg),
        hooks=[Checkpoints(paths), *([Progress(on_step, on_epoch)] if on_step or on_epoch else [])],
        augment=augment,
        starts=starts,
        histories=histories,
    )
    loop.run()
    out = []
    for j in range(k):
        r: dict[str, Any] = {"history": loop.histories[j]}
        if j in loop.failed:
            r["failed"] = nonfinite_message(
                labels[j], seeds[j], loop.failed[j][1], loop.failed[j][0]
            )
        out.append(r)
    return out


def train_member(
    model: nn.Module,
    train: Split,
    cfg: TrainingConfig,
    seed: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    partial_path: Path | None = None,
    objective: Objective | None = None,
    targets: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    member: str = "",
) -> dict[str, Any]:
    """Train one model (a unit of one); raise :class:`TrainingError` naming the seed and epoch
    if its loss becomes non-finite."""
    (out,) = train_unit(
        [model],
        [seed],
        train,
        cfg,
        device=device,
        dtype=dtype,
        objectives=None if objective is None else [objective],
        targets=None if targets is None else [targets],
        partial_paths=[partial_path],
        names=[member],
        on_step=(lambda _k, d, t: on_step(d, t)) if on_step else None,
    )
    if "failed" in out:
        raise TrainingError(out["failed"])
    return out
