"""The ERM training loop for one member, checkpointing every epoch.

Data order for epoch ``e`` is a permutation drawn from ``(seed, "order", e)``, so a run resumed
from an epoch checkpoint sees exactly the batches an uninterrupted run would, and its weights
are bit-identical on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split
from richrep.errors import StoreError, TrainingError
from richrep.store import remove
from richrep.training.checkpoint import load_checkpoint, save_checkpoint
from richrep.training.device import autocast
from richrep.training.seeding import generator


@dataclass
class Objective:
    """Cross-entropy ERM; plug-in objectives subclass and override :meth:`loss`."""

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of a batch."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits


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


def nonfinite_message(member: str, seed: int, loss: float, epoch: int) -> str:
    return (
        f"member {member or '?'} (seed {seed}): the training loss became {loss} in epoch "
        f"{epoch + 1}; lower training.lr or check the data"
    )


def lr_at(step: int, total: int, cfg: TrainingConfig) -> float:
    if cfg.schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / max(total, 1)))


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, "order", epoch))


def uses_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    return x.ndim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


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
    on_step: Callable[[int, int], None] | None = None,
    member: str = "",
) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.epochs`` epochs; return per-epoch metrics.

    With ``partial_path`` an epoch checkpoint is written after every epoch and training resumes
    from it if present (a corrupt one is discarded and training restarts). ``on_step(done,
    total)`` reports progress. A non-finite loss raises :class:`TrainingError` naming the seed
    and epoch.
    """
    objective = objective or Objective()
    model.to(device)
    channels_last = uses_channels_last(model, train.x)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    history: list[dict[str, float]] = []
    start = 0
    if partial_path is not None and partial_path.exists():
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            meta = load_checkpoint(partial_path, model, opt)
            start, history = int(meta["epoch"]), list(meta.get("history", []))
        except (StoreError, KeyError, RuntimeError, ValueError):
            remove(partial_path)  # a bad resume point is dropped, never used
            model.load_state_dict(initial)
            opt = make_optimizer(model, cfg)
    x_all, y_all = train.x.to(device), train.y.to(device)
    n, bs = len(train), cfg.batch_size
    steps = math.ceil(n / bs)
    total = cfg.epochs * steps
    if on_step:
        on_step(start * steps, total)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = epoch_order(seed, epoch, n).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for i in range(steps):
            idx = order[i * bs : (i + 1) * bs]
            xb, yb = x_all[idx], y_all[idx]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + i, total, cfg)
            with autocast(device, dtype):
                loss, logits = objective.loss(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().float() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
            if on_step:
                on_step(epoch * steps + i + 1, total)
        mean_loss = float(loss_sum) / n
        if not math.isfinite(mean_loss):
            raise TrainingError(nonfinite_message(member, seed, mean_loss, epoch))
        history.append(
            {
                "epoch": epoch + 1,
                "loss": mean_loss,
                "train_acc": float(correct) / n,
                "seconds": time.perf_counter() - t0,
            }
        )
        if partial_path is not None:
            save_checkpoint(partial_path, model, opt, epoch=epoch + 1, history=history)
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return {"history": history}


@torch.no_grad()
def accuracy(
    model: nn.Module, split: Split, device: torch.device, dtype: torch.dtype, batch: int = 2048
) -> float:
    model.eval().to(device)
    correct = 0
    for xb, yb in zip(split.x.split(batch), split.y.split(batch), strict=True):
        with autocast(device, dtype):
            correct += int((model(xb.to(device)).argmax(1).cpu() == yb).sum())
    return correct / max(len(split), 1)
