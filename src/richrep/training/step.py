"""The step of the training loop (:mod:`richrep.training.loop`): the forward pass of a unit's
active models (one model, or several folded into a
:class:`~richrep.training.fused.FusedClassifier`), each model's objective on its batch, the
backward pass and each model's optimizer at the step's learning rate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from richrep.config import TrainingConfig
from richrep.errors import ConfigError
from richrep.objectives import Batch, Objective
from richrep.objectives.base import Augment
from richrep.runtime.device import autocast
from richrep.training.fused import FusedClassifier, fuse_optimizer_state, unfuse_optimizer_state


def make_optimizer(
    model: nn.Module | Iterable[nn.Parameter], cfg: TrainingConfig
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` asks for over a model's parameters (or an iterable of them)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total: int, cfg: TrainingConfig) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / max(total, 1)))


def uses_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    return x.ndim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


class Step:
    """One optimizer step of the active models of a unit. ``optimizers[k]`` is model ``k``'s
    (a fused module gets one over its stacked parameters for the epoch, its state folded in
    from theirs and back, :mod:`~richrep.training.fused`, built from ``cfg``). Convolutional
    networks on images train in channels_last; fp16 autocast scales the loss against
    underflow (bf16 and fp32 need not: a no-op). Subclasses change :meth:`compute`."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        objectives: Sequence[Objective],
        *,
        device: torch.device,
        dtype: torch.dtype,
        fused: bool = False,
        channels_last: bool = False,
        cfg: TrainingConfig | None = None,
    ) -> None:
        if fused and cfg is None:
            raise ConfigError("Step: a fused unit needs the training config of its optimizer")
        self.models, self.optimizers = list(models), list(optimizers)
        self.objectives, self.device, self.dtype = list(objectives), device, dtype
        self.fused, self.channels_last, self.cfg = fused, channels_last, cfg
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last and not fused:
            self.models[0].to(memory_format=torch.channels_last)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.active: list[int] = []
        self.module: nn.Module = self.models[0]
        self.opt = self.optimizers[0]

    def begin(self, active: list[int]) -> None:
        """Start an epoch of the models ``active`` (folded into one module when fused)."""
        self.active = active
        if self.fused and self.cfg is not None:
            module = FusedClassifier([self.models[j] for j in active]).to(self.device)
            if self.channels_last:
                module.to(memory_format=torch.channels_last)
            self.module, self.opt = module, make_optimizer(module.parameters(), self.cfg)
            fuse_optimizer_state(module, self.opt, [self.optimizers[j] for j in active])
        else:
            self.module, self.opt = self.models[0], self.optimizers[0]
        self.module.train()

    def set_optimizer(self, opt: torch.optim.Optimizer) -> None:
        """Replace the optimizer of a unit of one model (a reset of its state)."""
        self.optimizers[0] = self.opt = opt

    def inputs(self, xs: torch.Tensor, augment: Augment | None) -> torch.Tensor:
        """What the models see of the examples ``xs`` (the first active objective decides:
        one unit's models share their inputs)."""
        return self.objectives[self.active[0]].inputs(xs, augment)

    def compute(self, xs: torch.Tensor, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses ``(A,)``, logits ``(A, B, ...)``): forward and objectives under autocast."""
        with autocast(self.device, self.dtype):
            if self.fused:
                m = self.module
                logits = m.body(m.fold(m.standardize(xs), self.fmt))  # type: ignore[operator]
            else:
                xb = xs[0]
                if self.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                logits = self.module(xb).unsqueeze(0)
            losses = torch.stack(
                [self.objectives[j](logits[a], batches[a]) for a, j in enumerate(self.active)]
            )
        return losses, logits

    def __call__(
        self, xs: torch.Tensor, batches: list[Batch], lr: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch at learning rate ``lr``; return the losses and logits
        (detached)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        losses, logits = self.compute(xs, batches)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(losses.sum()).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return losses.detach(), logits.detach()

    def end(self) -> None:
        """End the epoch: a fused module's weights and optimizer state go back to the models."""
        if self.fused:
            models = [self.models[j] for j in self.active]
            self.module.unfuse(models)  # type: ignore[operator]
            unfuse_optimizer_state(self.module, self.opt, [self.optimizers[j] for j in self.active])

    def close(self) -> None:
        """After training: the model back in the contiguous memory format."""
        if self.channels_last and not self.fused:
            self.models[0].to(memory_format=torch.contiguous_format)
