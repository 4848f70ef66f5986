"""The one epoch loop: every strategy trains its models through :func:`train_unit`.

A unit is one model, or several of one architecture folded into a
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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split, Task
from richrep.data.augment import build_augment
from richrep.data.images import is_lazy, stream
from richrep.errors import ConfigError, StoreError, TrainingError
from richrep.objectives import CrossEntropy, Objective
from richrep.objectives.simsiam import knn_accuracy
from richrep.runtime.device import autocast
from richrep.runtime.seeding import generator
from richrep.store import remove
from richrep.training.checkpoint import load_checkpoint, save_checkpoint
from richrep.training.fused import FusedClassifier, fuse_optimizer_state, unfuse_optimizer_state

UnitProgress = Callable[[int, int, int], None]  # (model index, steps done, steps total)


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
) -> list[dict[str, Any]]:
    """Train ``models[k]`` in place with ``seeds[k]``; one result per model:
    ``{"history": [...]}`` plus ``"failed": message`` for a model whose loss became non-finite.

    Without ``fused`` the unit is a single model. ``objectives[k]`` (default cross-entropy)
    gives model ``k``'s loss from its logits and the batch; ``targets[k]`` are its per-example
    training targets beside the labels; ``partial_paths[k]`` its epoch checkpoint (resumed from
    if present); ``names[k]`` its name in messages; ``on_step(k, done, total)`` its progress.
    """
    k = len(models)
    if not fused and k != 1:
        raise ConfigError(f"train_unit: {k} models need fused=True")
    objs = list(objectives) if objectives is not None else [CrossEntropy() for _ in models]
    tgts = list(targets) if targets is not None else [{} for _ in models]
    paths = list(partial_paths) if partial_paths is not None else [None] * k
    labels = list(names) if names is not None else [""] * k
    if not (len(seeds) == len(objs) == len(tgts) == len(paths) == len(labels) == k):
        raise ConfigError(
            "train_unit: seeds, objectives, targets, paths and names need one per model"
        )
    if fused and not all(o.folds for o in objs):
        raise ConfigError("train_unit: these objectives cannot train fused models")
    for j, o in enumerate(objs):
        missing = [t for t in o.needs if t not in tgts[j]]
        if missing:
            raise ConfigError(f"train_unit: {labels[j] or 'model'} needs targets {missing}")
    tgts = [
        data_targets(o, train, tg, labels[j])
        for j, (o, tg) in enumerate(zip(objs, tgts, strict=True))
    ]
    models = [m.to(device) for m in models]
    starts, histories, opts = [0] * k, [[] for _ in range(k)], []
    for j, m in enumerate(models):
        starts[j], histories[j], opt_j = resume(m, cfg, paths[j])
        opts.append(opt_j)
    failed: dict[int, str] = {}
    lazy = is_lazy(train.x)  # streamed images: decoded by worker processes, batch by batch
    x_all, y_all = train.x if lazy else train.x.to(device), train.y.to(device)
    tgts = [{name: t.to(device) for name, t in tg.items()} for tg in tgts]
    n, bs = len(train), cfg.batch_size
    steps = math.ceil(n / bs)
    total = cfg.epochs * steps
    if on_step:
        for j in range(k):
            on_step(j, starts[j] * steps, total)
    channels_last = uses_channels_last(models[0], x_all)
    augment = build_augment(cfg.augment) if cfg.augment else None
    views = max(o.views for o in objs)
    if views > 1 and augment is None:
        raise ConfigError(
            f"{labels[0] or 'model'}: objective {type(objs[0]).__name__} compares {views} "
            "augmented views of each image; set training.augment (e.g. "
            "[random_resized_crop, horizontal_flip])"
        )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last and not fused:
        models[0].to(memory_format=torch.channels_last)
    # fp16 autocast (GPUs without bf16) needs loss scaling; bf16 and fp32 do not (a no-op)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    for epoch in range(min(starts), cfg.epochs):
        active = [j for j in range(k) if starts[j] <= epoch and j not in failed]
        if not active:
            continue
        t0 = time.perf_counter()
        if fused:
            module: nn.Module = FusedClassifier([models[j] for j in active]).to(device)
            if channels_last:
                module.to(memory_format=torch.channels_last)
            opt = make_optimizer(module.parameters(), cfg)
            fuse_optimizer_state(module, opt, [opts[j] for j in active])
        else:
            module, opt = models[0], opts[0]
        module.train()
        orders = torch.stack([epoch_order(seeds[j], epoch, n) for j in active]).to(device)
        seeds_active = [seeds[j] for j in active]
        if lazy:
            xs_stream = stream(
                x_all, list(orders.cpu().split(bs, dim=1)), pin_memory=device.type == "cuda"
            )
        loss_sum = torch.zeros(len(active), device=device)
        correct = torch.zeros(len(active), device=device, dtype=torch.long)
        for s in range(steps):
            batch = orders[:, s * bs : (s + 1) * bs]
            yb = y_all[batch]
            xs = next(xs_stream).to(device, non_blocking=True) if lazy else x_all[batch]
            if views > 1:  # e.g. SimSiam: the views of one example, one after the other
                xs = torch.cat(
                    [augment_batches(augment, xs, seeds_active, epoch, s, v) for v in range(views)],
                    dim=1,
                )
            elif augment is not None:
                xs = augment_batches(augment, xs, seeds_active, epoch, s)
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + s, total, cfg)
            with autocast(device, dtype):
                if fused:
                    logits = module.body(module.fold(module.standardize(xs), fmt))
                else:
                    xb = xs[0]
                    if channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    logits = module(xb).unsqueeze(0)
                losses = torch.stack(
                    [
                        objs[j](logits[a], _batch(yb[a], tgts[j], batch[a]))
                        for a, j in enumerate(active)
                    ]
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses.sum()).backward()  # fp16: scaled against underflow
            scaler.step(opt)
            scaler.update()
            loss_sum += losses.detach().float() * batch.shape[1]
            with torch.no_grad():
                correct += torch.stack(
                    [
                        (objs[j].predict(logits[a].detach()) == yb[a]).sum()
                        for a, j in enumerate(active)
                    ]
                )
            if on_step:
                for j in active:
                    on_step(j, epoch * steps + s + 1, total)
        if fused:
            module.unfuse([models[j] for j in active])
            unfuse_optimizer_state(module, opt, [opts[j] for j in active])
        seconds = time.perf_counter() - t0
        mean_losses, accs = (loss_sum / n).tolist(), (correct.double() / n).tolist()
        for a, j in enumerate(active):
            if not math.isfinite(mean_losses[a]):
                failed[j] = nonfinite_message(labels[j], seeds[j], mean_losses[a], epoch)
                continue
            histories[j].append(
                {
                    "epoch": epoch + 1,
                    "loss": mean_losses[a],
                    "train_acc": accs[a],
                    "seconds": seconds,
                }
            )
            if paths[j] is not None:
                save_checkpoint(paths[j], models[j], opts[j], epoch=epoch + 1, history=histories[j])
    if channels_last and not fused:
        models[0].to(memory_format=torch.contiguous_format)
    out = []
    for j in range(k):
        r: dict[str, Any] = {"history": histories[j]}
        if j in failed:
            r["failed"] = failed[j]
        out.append(r)
    return out


def augment_batches(
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    xs: torch.Tensor,
    seeds: Sequence[int],
    epoch: int,
    step: int,
    view: int = 0,
) -> torch.Tensor:
    """Each model's batch ``xs[a]`` augmented with its own generator, seeded from (its seed,
    epoch, step, and the view after the first): the same augmentation whether the model trains
    alone or fused."""
    salt = (epoch, step) if view == 0 else (epoch, step, "view", view)
    return torch.stack(
        [augment(xs[a], generator(seed, "augment", *salt)) for a, seed in enumerate(seeds)]
    )


def data_targets(
    objective: Objective, train: Split, targets: dict[str, torch.Tensor], name: str
) -> dict[str, torch.Tensor]:
    """``targets`` plus the data's environments and groups for an objective that reads them."""
    if not objective.uses_env:
        return targets
    if train.env is None:
        raise ConfigError(
            f"{name or 'model'}: objective {type(objective).__name__} needs environments, and "
            f"the training data has none (use a dataset with environments, e.g. colored_*)"
        )
    out = {**targets, "env": train.env}
    if train.groups is not None:
        out["groups"] = train.groups
    return out


def _batch(
    y: torch.Tensor, targets: dict[str, torch.Tensor], idx: torch.Tensor
) -> dict[str, torch.Tensor]:
    return {"y": y, **{name: t[idx] for name, t in targets.items()}}


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


@torch.no_grad()
def accuracy(
    model: nn.Module,
    split: Split,
    device: torch.device,
    dtype: torch.dtype,
    batch: int = 2048,
    objective: Objective | None = None,
) -> float:
    """Accuracy of ``model`` on ``split`` (predictions through ``objective.predict``)."""
    objective = objective or CrossEntropy()
    model.eval().to(device)
    correct = 0
    for xb, yb in zip(split.x.split(batch), split.y.split(batch), strict=True):
        with autocast(device, dtype):
            correct += int((objective.predict(model(xb.to(device))).cpu() == yb).sum())
    return correct / max(len(split), 1)


@torch.no_grad()
def encode(
    model: nn.Module, split: Split, device: torch.device, dtype: torch.dtype, batch: int = 1024
) -> torch.Tensor:
    """Features of ``model.encoder`` on ``split`` (eval mode, float32 on the CPU)."""
    model.eval().to(device)
    out = [torch.zeros(0, 0)]
    for xb in split.x.split(batch):
        with autocast(device, dtype):
            out.append(model.encoder(xb.to(device)).float().cpu())
    return torch.cat(out[1:]) if len(out) > 1 else out[0]


def knn_validation(
    model: nn.Module, task: Task, device: torch.device, dtype: torch.dtype, bank: int = 10_000
) -> float:
    """k-NN accuracy (k = 20, Wu et al. 2018) of the encoder's features on the validation split,
    the bank a seeded sample of at most ``bank`` training examples: how a self-supervised
    member is monitored (it has no classifier to score)."""
    n = len(task.train)
    idx = torch.randperm(n, generator=generator(0, "knn-bank"))[:bank].sort().values
    train = task.train.subset(idx)
    return knn_accuracy(
        encode(model, train, device, dtype),
        train.y,
        encode(model, task.val, device, dtype),
        task.val.y,
    )
