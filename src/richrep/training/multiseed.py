"""K seeds of one architecture trained together, each seed's result equivalent to
:func:`~richrep.training.loop.train_member` on its own.

Every strategy keeps the per-seed semantics of the plain loop: the model passed in is the
initialization, epoch ``e`` visits the data in ``epoch_order(seed, e, n)`` in batches of
``cfg.batch_size`` (last partial batch kept), the learning rate follows ``lr_at`` per step, the
optimizer (SGD with momentum / AdamW, weight decay) updates each seed's parameters with its own
gradients only, an epoch checkpoint in :func:`train_member`'s format is written per model after
every epoch (so a run killed under one strategy resumes under any other), and a seed whose loss
becomes non-finite is reported as failed for that seed while the others go on.

Strategies (``strategy=``):

``sequential``
    :func:`train_member` on each model in turn: the reference, bit-identical to it.
``threads``
    (CPU) the models are handed out to ``P`` Python threads of this process, each running
    :func:`train_member` with its own OpenMP/MKL budget of ``threads // P`` cores
    (``torch.set_num_threads`` is per calling thread); the GIL is released inside every kernel
    and the backward pass. Seeds left over after the full rounds (K mod P) then share all
    cores. Nothing is copied or pickled.
``processes``
    (CPU) the same split over spawned worker processes, the training tensors handed over once
    through shared memory. About 8 % faster per step than ``threads`` (no GIL), but each worker
    costs a process start and ``import torch`` (2-4 s), so it only pays for runs of minutes;
    as any spawn, it needs the caller's script to be import-safe (``if __name__ == "__main__"``).
``fused``
    the K models folded into one module: convolutions become one grouped convolution
    (``groups=K`` over ``(B, K·C, H, W)``, seed ``k``'s batch in channel group ``k``), linear
    layers one batched matmul over ``(K, B, D)``, one optimizer over the stacked parameters
    (elementwise updates, so weight decay and momentum stay per seed). Fewer, larger kernels.
    Supports ``Classifier`` s whose encoder is a standardization followed by a ``Sequential`` of
    Conv1d/Conv2d (groups 1), Linear, ReLU, MaxPool and Flatten (the ``mlp`` and ``cnn``
    families), with the default cross-entropy objective.
``fused-threads``
    (CPU) the seeds split into ``P`` groups, each group folded (``fused``) and trained in its own
    thread as in ``threads``.

Which models train together, folded or not, and on how many threads is fixed in advance by
:func:`plan_units` from (K, strategy, thread budget) alone, never by timing: a seed's arithmetic
depends only on its unit, so reruns, and the Ray engine, which runs the same units as tasks,
give bit-identical weights.

``auto`` picks with :func:`choose_strategy` (see there for the measurements behind it). On a
CPU every strategy first calls :func:`tune_cpu_allocator` (``tune_allocator=False`` to skip).

What does the work on a CPU is :func:`train_member`'s bf16 autocast and channels_last; on an
idle 2-core machine the strategies above only decide how the cores are shared (within ~10 %
of each other for the CNN), and one-thread workers keep that sharing cheap when other
processes compete for the cores. See ``benchmarks/train_seeds.py``.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split
from richrep.errors import ConfigError, StoreError, TrainingError
from richrep.store import remove
from richrep.training.checkpoint import load_checkpoint, save_checkpoint
from richrep.training.device import autocast
from richrep.training.loop import (
    Objective,
    epoch_order,
    lr_at,
    make_optimizer,
    nonfinite_message,
    train_member,
)

Strategy = Literal["auto", "sequential", "threads", "processes", "fused", "fused-threads"]
STRATEGIES: tuple[str, ...] = ("sequential", "threads", "processes", "fused", "fused-threads")
GroupProgress = Callable[[int, int, int], None]  # (model index, steps done, steps total)


@dataclass
class _Run:
    """What every model of a group shares."""

    train: Split
    cfg: TrainingConfig
    device: torch.device
    dtype: torch.dtype
    objective: Objective | None
    models: Sequence[nn.Module]
    seeds: Sequence[int]
    paths: list[Path | None]
    names: list[str]


def train_group(
    models: Sequence[nn.Module],
    train: Split,
    cfg: TrainingConfig,
    seeds: Sequence[int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    partial_paths: Sequence[Path | None] | None = None,
    on_step: GroupProgress | None = None,
    members: Sequence[str] | None = None,
    strategy: Strategy = "auto",
    objective: Objective | None = None,
    workers: int | None = None,
    tune_allocator: bool = True,
) -> list[dict[str, Any]]:
    """Train ``models[k]`` in place with ``seeds[k]``; return one result per model.

    A result is ``{"history": [...], "strategy": name}``, the history as :func:`train_member`
    returns it, plus ``"failed": message`` for a seed whose loss became non-finite (its weights
    are left as they were when that was found, and no checkpoint is written for that epoch).
    ``partial_paths[k]`` is model ``k``'s epoch checkpoint (resumed from if present),
    ``members[k]`` its name in messages, ``on_step(k, done, total)`` reports its progress (from
    a worker thread under ``threads``, serialized by a lock). ``workers`` sets the worker count
    of the ``threads``/``processes`` strategies (default: one per intra-op thread, at most one
    per model); under ``processes`` progress arrives at most every 0.25 s per model. Other
    exceptions (including one raised by ``on_step``) stop every worker and propagate; the epoch
    checkpoints written so far stay.
    """
    k = len(models)
    if len(seeds) != k:
        raise ConfigError(f"train_group: {k} models but {len(seeds)} seeds")
    paths = list(partial_paths) if partial_paths is not None else [None] * k
    names = list(members) if members is not None else [""] * k
    if len(paths) != k or len(names) != k:
        raise ConfigError("train_group: partial_paths and members need one entry per model")
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ConfigError(
            f"train_group: unknown strategy {strategy!r} (one of auto, {', '.join(STRATEGIES)})"
        )
    if k == 0:
        return []
    if device.type == "cpu" and tune_allocator:
        tune_cpu_allocator()
    if strategy == "auto":
        strategy = choose_strategy(models, device, objective=objective)  # type: ignore[assignment]
    plain_objective = objective is None or type(objective) is Objective
    if strategy.startswith("fused") and not (plain_objective and fusable(models)):
        raise ConfigError(
            "train_group: the fused strategies need foldable models (mlp/cnn "
            "families) and the default cross-entropy objective"
        )
    if strategy in ("threads", "processes", "fused-threads") and device.type != "cpu":
        raise ConfigError(f"train_group: the {strategy} strategy is for CPUs")
    run = _Run(train, cfg, device, dtype, objective, models, seeds, paths, names)
    idx = list(range(k))
    if strategy == "sequential":
        out = [_train_one(run, i, _member_hook(on_step, i)) for i in idx]
    elif strategy == "fused":
        out = _train_fused(run, idx, on_step)
    elif strategy == "processes":
        out = _train_processes(run, on_step, workers)
    else:
        budget = torch.get_num_threads()
        out = _train_threads(run, plan_units(k, strategy, budget, workers), budget, on_step)
    for r in out:
        r["strategy"] = strategy
    return out


def choose_strategy(
    models: Sequence[nn.Module],
    device: torch.device,
    *,
    objective: Objective | None = None,
    threads: int | None = None,
) -> str:
    """The strategy ``auto`` uses, by device and model family (no timed probe: on a shared
    machine a few seconds of probing measure the neighbours as much as the strategies).

    CPU, two or more models and two or more intra-op threads: ``threads`` for convolutional
    networks, ``fused-threads`` for the others (MLPs); else ``sequential``. Measured on 2 cores
    (AMD EPYC with AVX512-BF16, no AMX), bf16 autocast, 5 seeds, batch 256, Fashion-MNIST, on
    an idle machine; seconds for the same work, best of 2 interleaved rounds:

    * 225k-parameter CNN, 60 steps per seed: ``sequential`` (channels_last + bf16, 2 threads)
      7.9, ``threads`` 7.3, ``processes`` 11.3 (3-4 s of it process start-up), ``fused`` 15.8:
      oneDNN's grouped convolutions are much slower per FLOP than K plain ones, so folding the
      seeds loses on a CPU. A full epoch of 54,000 images: ``sequential`` 25.5, ``threads``
      25.7, ``processes`` 26.7. With a neighbour process busy on the same cores, two-thread
      kernels stall at every OpenMP barrier while one-thread workers only slow down in
      proportion (one such run: ``sequential`` 59 s, ``threads`` 14 s), hence ``threads``.
    * 784-512-512-128 MLP, 120 steps per seed: ``sequential`` 3.3, ``threads`` 3.1, ``fused``
      3.0, ``fused-threads`` 3.2 (a batched matmul per layer keeps the bf16 kernels busier).

    GPU: ``fused`` when the models can be folded (a small network leaves the device idle; one
    K-times wider kernel fills it), else ``sequential``.
    """
    foldable = (objective is None or type(objective) is Objective) and fusable(models)
    if device.type == "cpu":
        if len(models) < 2 or (threads or torch.get_num_threads()) < 2:
            return "sequential"
        convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in models[0].modules())
        return "fused-threads" if foldable and not convolutional else "threads"
    return "fused" if len(models) >= 2 and foldable else "sequential"


@dataclass(frozen=True)
class Unit:
    """Models trained together by one worker: ``indices`` into the group, folded into one
    module if ``fused``, on ``threads`` intra-op threads."""

    indices: tuple[int, ...]
    fused: bool
    threads: int


def plan_units(k: int, strategy: str, budget: int, workers: int | None = None) -> list[Unit]:
    """The work units of ``k`` models under ``strategy`` with ``budget`` threads: ``sequential``
    one model at a time on all threads; ``fused`` all folded together; ``threads`` (and
    ``processes``) ``P = min(k, workers or budget)`` one-model workers on ``budget // P``
    threads, then the ``k mod P`` left over on ``budget // (k mod P)`` each; ``fused-threads``
    the models split into ``P`` folded groups of ``budget // P`` threads."""
    if strategy == "sequential":
        return [Unit((i,), False, budget) for i in range(k)]
    if strategy == "fused":
        return [Unit(tuple(range(k)), True, budget)]
    n = max(1, min(k, workers or budget))
    if strategy == "fused-threads":
        return [Unit(tuple(g), True, max(1, budget // n)) for g in _split(list(range(k)), n)]
    full = k - k % n
    tail = k - full
    return [Unit((i,), False, max(1, budget // n)) for i in range(full)] + [
        Unit((i,), False, max(1, budget // tail)) for i in range(full, k)
    ]


def _split(idx: list[int], n: int) -> list[list[int]]:
    """``idx`` in ``n`` contiguous groups whose sizes differ by at most one."""
    q, r = divmod(len(idx), n)
    out, start = [], 0
    for j in range(n):
        size = q + (j < r)
        out.append(idx[start : start + size])
        start += size
    return [g for g in out if g]


def _member_hook(on_step: GroupProgress | None, i: int) -> Callable[[int, int], None] | None:
    return (lambda d, t: on_step(i, d, t)) if on_step else None


def _train_one(run: _Run, i: int, hook: Callable[[int, int], None] | None) -> dict[str, Any]:
    model = run.models[i]
    try:
        return train_member(
            model,
            run.train,
            run.cfg,
            run.seeds[i],
            device=run.device,
            dtype=run.dtype,
            partial_path=run.paths[i],
            objective=run.objective,
            on_step=hook,
            member=run.names[i],
        )
    except TrainingError as e:
        model.to(memory_format=torch.contiguous_format)  # train_member stopped before this
        return {"history": [], "failed": str(e)}


# --------------------------------------------------------------------------------------------
# fused: K models folded into one module

_POINTWISE = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Identity)


def _layers(model: nn.Module) -> list[nn.Module] | None:
    enc = getattr(model, "encoder", None)
    body = getattr(enc, "body", None)
    head = getattr(model, "head", None)
    if not isinstance(body, nn.Sequential) or not isinstance(head, nn.Linear):
        return None
    if not hasattr(enc, "standardize"):
        return None
    return [*body, head]


def _fusable_layer(m: nn.Module) -> bool:
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    return isinstance(m, (nn.Linear, nn.Flatten, *_POINTWISE))


def fusable(models: Sequence[nn.Module]) -> bool:
    """Whether the models have one foldable architecture (see the module docstring)."""
    ref = _layers(models[0])
    if ref is None or not all(_fusable_layer(m) for m in ref):
        return False
    if not isinstance(ref[0], (nn.Flatten, nn.Conv1d, nn.Conv2d)):
        return False
    seen_linear = False
    for m in ref:
        seen_linear |= isinstance(m, (nn.Linear, nn.Flatten))
        if seen_linear and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d)):
            return False
    shapes = [tuple(p.shape) for p in models[0].parameters()]
    for other in models[1:]:
        lay = _layers(other)
        if lay is None or [type(m) for m in lay] != [type(m) for m in ref]:
            return False
        if [tuple(p.shape) for p in other.parameters()] != shapes:
            return False
    return True


class FusedClassifier(nn.Module):
    """K same-architecture classifiers as one module over stacked parameters.

    ``forward(x)`` takes the K batches as ``(K, B, ...)`` (raw inputs) and returns logits
    ``(K, B, classes)``. Parameter ``j`` of the fused module is parameter ``j`` of every model
    stacked on a leading K axis (concatenated along output channels for convolutions), so
    :meth:`unfuse` and the optimizer state move between the two by reshaping.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not fusable(models):
            raise ConfigError("these models cannot be fused (see richrep.training.multiseed)")
        self.k = len(models)
        per_model = [_layers(m) for m in models]
        self.shapes = [tuple(p.shape) for p in models[0].parameters()]
        self.ops: list[tuple[str, Any]] = []
        self.weights = nn.ParameterList()
        for j, layer in enumerate(per_model[0]):  # type: ignore[index]
            same = [lay[j] for lay in per_model]  # type: ignore[index]
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                w = torch.cat([m.weight.detach() for m in same], 0)
                b = None if layer.bias is None else torch.cat([m.bias.detach() for m in same])
                self.ops.append(("conv", (layer, self._add(w), self._add(b))))
            elif isinstance(layer, nn.Linear):
                w = torch.stack([m.weight.detach() for m in same], 0)
                b = None if layer.bias is None else torch.stack([m.bias.detach() for m in same])
                self.ops.append(("linear", (self._add(w), self._add(b))))
            elif isinstance(layer, nn.Flatten):
                self.ops.append(("flatten", None))
            else:
                self.ops.append(("pointwise", layer))
        self.conv_first = self.ops[0][0] == "conv"
        enc = [m.encoder.standardize for m in models]  # type: ignore[union-attr]
        self.register_buffer("mean", torch.stack([s.mean.detach().float() for s in enc]))
        self.register_buffer("std", torch.stack([s.std.detach().float() for s in enc]))

    def _add(self, t: torch.Tensor | None) -> int | None:
        if t is None:
            return None
        self.weights.append(nn.Parameter(t.clone()))
        return len(self.weights) - 1

    def _p(self, i: int | None) -> torch.Tensor | None:
        return None if i is None else self.weights[i]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Each seed's input standardization, on ``(K, B, ...)``."""
        shape = (self.k,) + (1,) * (x.ndim - 1)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def fold(self, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        """Standardized ``(K, B, C, ...)`` to the first layer's layout: ``(B, K·C, ...)`` in
        ``memory_format`` for convolutions, ``(K, B, ...)`` for linear layers."""
        if not self.conv_first:
            return x
        k, b = x.shape[:2]
        y = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        return y.contiguous(memory_format=memory_format) if y.ndim == 4 else y.contiguous()

    def body(self, x: torch.Tensor) -> torch.Tensor:
        k, chan = self.k, self.conv_first  # chan: (B, K·C, ...), else (K, B, ...)
        for kind, op in self.ops:
            if kind == "conv":
                layer, wi, bi = op
                conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
                w, b = self.weights[wi], self._p(bi)
                x = conv(x, w, b, layer.stride, layer.padding, layer.dilation, k)
            elif kind == "linear":
                wi, bi = op
                w = self.weights[wi].transpose(1, 2)
                b = self._p(bi)
                x = torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
            elif kind == "flatten":
                x = x.reshape(x.shape[0], k, -1).transpose(0, 1) if chan else x.flatten(2)
                chan = False
            else:
                x = op(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.fold(self.standardize(x), torch.contiguous_format))

    @torch.no_grad()
    def unfuse(self, models: Sequence[nn.Module]) -> None:
        """Copy the stacked parameters back into ``models`` (in place)."""
        for j, (p, shape) in enumerate(zip(self.weights, self.shapes, strict=True)):
            parts = p.detach().reshape(self.k, *shape)
            for m, part in zip(models, parts, strict=True):
                list(m.parameters())[j].copy_(part)


def fuse_optimizer_state(
    fused: FusedClassifier, opt: torch.optim.Optimizer, opts: Sequence[torch.optim.Optimizer]
) -> None:
    """Load the per-model optimizer states ``opts`` into ``opt`` (over ``fused``'s parameters)."""
    per = [[o.state.get(p, {}) for p in o.param_groups[0]["params"]] for o in opts]
    for j, p in enumerate(fused.weights):
        states = [s[j] for s in per]
        if not states[0]:
            continue
        new: dict[str, Any] = {}
        for name, v in states[0].items():
            if torch.is_tensor(v) and v.shape == fused.shapes[j]:
                stacked = torch.stack([s[name].to(p.device) for s in states]).reshape(p.shape)
                new[name] = torch.empty_like(p).copy_(stacked)
            else:
                new[name] = v.clone() if torch.is_tensor(v) else v
        opt.state[p] = new


def unfuse_optimizer_state(
    fused: FusedClassifier, opt: torch.optim.Optimizer, opts: Sequence[torch.optim.Optimizer]
) -> None:
    for j, p in enumerate(fused.weights):
        state = opt.state.get(p)
        if not state:
            continue
        for k, o in enumerate(opts):
            target = o.param_groups[0]["params"][j]
            new: dict[str, Any] = {}
            for name, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.ndim:
                    part = v.detach().reshape(fused.k, *fused.shapes[j])[k]
                    new[name] = part.contiguous().clone()
                else:
                    new[name] = v.clone() if torch.is_tensor(v) else v
            o.state[target] = new
    for o in opts:
        for g in o.param_groups:
            g["lr"] = opt.param_groups[0]["lr"]


def _resume(model: nn.Module, cfg: TrainingConfig, path: Path | None):  # noqa: ANN202
    """(start epoch, history, optimizer) after loading ``path`` as train_member does."""
    opt = make_optimizer(model, cfg)
    if path is None or not path.exists():
        return 0, [], opt
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        meta = load_checkpoint(path, model, opt)
        return int(meta["epoch"]), list(meta.get("history", [])), opt
    except (StoreError, KeyError, RuntimeError, ValueError):
        remove(path)  # a bad resume point is dropped, never used
        model.load_state_dict(initial)
        return 0, [], make_optimizer(model, cfg)


def _train_fused(run: _Run, idx: list[int], on_step: GroupProgress | None) -> list[dict[str, Any]]:
    """Train ``run.models[i]`` for ``i`` in ``idx`` folded together, epoch by epoch: each epoch
    folds the models that are due (a model resumed from a later epoch waits for the others to
    catch up; a failed one drops out), and unfolds them again for their checkpoints."""
    cfg, device, dtype = run.cfg, run.device, run.dtype
    models = [run.models[i].to(device) for i in idx]
    k = len(models)
    starts, histories, opts = [0] * k, [[] for _ in range(k)], []
    for j, m in enumerate(models):
        starts[j], histories[j], opt_j = _resume(m, cfg, run.paths[idx[j]])
        opts.append(opt_j)
    failed: dict[int, str] = {}
    x_all, y_all = run.train.x.to(device), run.train.y.to(device)
    n, bs = len(run.train), cfg.batch_size
    steps = math.ceil(n / bs)
    total = cfg.epochs * steps
    if on_step:
        for j in range(k):
            on_step(idx[j], starts[j] * steps, total)
    conv2d = x_all.ndim == 4 and any(isinstance(m, nn.Conv2d) for m in models[0].modules())
    fmt = torch.channels_last if conv2d else torch.contiguous_format
    for epoch in range(min(starts), cfg.epochs):
        active = [j for j in range(k) if starts[j] <= epoch and j not in failed]
        if not active:
            continue
        t0 = time.perf_counter()
        fused = FusedClassifier([models[j] for j in active]).to(device)
        if conv2d:
            fused.to(memory_format=torch.channels_last)
        opt = make_optimizer(fused.parameters(), cfg)
        fuse_optimizer_state(fused, opt, [opts[j] for j in active])
        orders = torch.stack([epoch_order(run.seeds[idx[j]], epoch, n) for j in active]).to(device)
        loss_sum = torch.zeros(len(active), device=device)
        correct = torch.zeros(len(active), device=device, dtype=torch.long)
        for s in range(steps):
            batch = orders[:, s * bs : (s + 1) * bs]
            yb = y_all[batch]
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps + s, total, cfg)
            with autocast(device, dtype):
                logits = fused.body(fused.fold(fused.standardize(x_all[batch]), fmt))
                per_seed = zip(logits, yb, strict=True)
                losses = torch.stack([F.cross_entropy(lg, y) for lg, y in per_seed])
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            loss_sum += losses.detach().float() * batch.shape[1]
            correct += (logits.detach().argmax(-1) == yb).sum(1)
            if on_step:
                for j in active:
                    on_step(idx[j], epoch * steps + s + 1, total)
        fused.unfuse([models[j] for j in active])
        unfuse_optimizer_state(fused, opt, [opts[j] for j in active])
        seconds = time.perf_counter() - t0
        mean_losses, accs = (loss_sum / n).tolist(), (correct.double() / n).tolist()
        for a, j in enumerate(active):
            i = idx[j]
            if not math.isfinite(mean_losses[a]):
                failed[j] = nonfinite_message(run.names[i], run.seeds[i], mean_losses[a], epoch)
                continue
            histories[j].append(
                {
                    "epoch": epoch + 1,
                    "loss": mean_losses[a],
                    "train_acc": accs[a],
                    "seconds": seconds,
                }
            )
            if run.paths[i] is not None:
                save_checkpoint(
                    run.paths[i], models[j], opts[j], epoch=epoch + 1, history=histories[j]
                )
    out = []
    for j in range(k):
        r: dict[str, Any] = {"history": histories[j]}
        if j in failed:
            r["failed"] = failed[j]
        out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# threads: models (or fused groups) handed out to Python threads, each with its own cores


class _Stop(Exception):
    """Raised in a worker's progress hook once another worker has failed."""


def _train_threads(
    run: _Run, units: list[Unit], budget: int, on_step: GroupProgress | None
) -> list[dict[str, Any]]:
    """Run ``units`` in waves of equal thread counts, each wave on ``budget // threads``
    Python threads that each keep their own OpenMP/MKL budget."""
    lock = threading.Lock()
    out: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def hook(i: int, done: int, total: int) -> None:
        if stop.is_set():
            raise _Stop
        if on_step:
            with lock:
                on_step(i, done, total)

    def work(todo: list[Unit], threads: int) -> None:
        torch.set_num_threads(threads)  # this thread's OpenMP and MKL budget only
        while not stop.is_set():
            with lock:
                if not todo:
                    return
                unit = todo.pop(0)
            group = list(unit.indices)
            try:
                if unit.fused:
                    results = _train_fused(run, group, hook)
                else:
                    results = [_train_one(run, group[0], lambda d, t, i=group[0]: hook(i, d, t))]
            except _Stop:
                return
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(e)
                stop.set()
                return
            with lock:
                out.update(zip(group, results, strict=True))

    waves: list[list[Unit]] = []
    for u in units:
        if waves and waves[-1][0].threads == u.threads:
            waves[-1].append(u)
        else:
            waves.append([u])
    pool: list[threading.Thread] = []
    try:
        for wave in waves:
            n = max(1, min(len(wave), budget // wave[0].threads))
            pool = [
                threading.Thread(
                    target=work,
                    args=(wave, wave[0].threads),
                    name=f"richrep-seeds-{j}",
                    daemon=True,
                )
                for j in range(n)
            ]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            if errors or stop.is_set():
                break
    finally:
        stop.set()
        for t in pool:  # on an interrupt: let the running workers stop at their next step
            t.join()
        torch.set_num_threads(budget)  # the workers moved the default new threads start with
    if errors:
        raise errors[0]
    return [out[i] for i in range(len(run.models))]


# --------------------------------------------------------------------------------------------
# processes: models handed out to spawned CPU workers


def _worker(
    x: torch.Tensor,
    y: torch.Tensor,
    tasks: Any,
    results: Any,
    remaining: Any,
    budget: int,
    nproc: int,
) -> None:
    tune_cpu_allocator()
    split = Split(x, y)
    threads = max(1, budget // nproc)
    torch.set_num_threads(threads)
    while True:
        task = tasks.get()
        if task is None:
            return
        i, model, cfg, seed, dtype, path, member, objective = task
        last = [0.0]

        def progress(done: int, total: int, i: int = i, last: list[float] = last) -> None:
            nonlocal threads
            want = max(1, budget // max(1, min(nproc, remaining.value)))
            if want != threads:
                threads = want
                torch.set_num_threads(want)
            now = time.perf_counter()
            if done in (0, total) or now - last[0] > 0.25:
                last[0] = now
                results.put(("progress", i, done, total))

        run = _Run(
            split, cfg, torch.device("cpu"), dtype, objective, [model], [seed], [path], [member]
        )
        try:
            res = _train_one(run, 0, progress)
        except BaseException:  # noqa: BLE001 - reported to the parent
            results.put(("error", i, traceback.format_exc(), None))
            return
        with remaining.get_lock():
            remaining.value -= 1
        # Plain arrays, copied through the pipe: a tensor would travel as a shared-memory file
        # descriptor that dies with this process, which may exit before the parent reads it.
        state = {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items()}
        results.put(("done", i, res, state))


def _train_processes(
    run: _Run, on_step: GroupProgress | None, workers: int | None
) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    budget = torch.get_num_threads()
    k = len(run.models)
    nproc = max(1, min(k, workers or budget))
    ctx = mp.get_context("spawn")
    x, y = run.train.x.detach(), run.train.y.detach()
    x = x if x.is_shared() else x.clone().share_memory_()
    y = y if y.is_shared() else y.clone().share_memory_()
    tasks, results = ctx.Queue(), ctx.Queue()
    remaining = ctx.Value("i", k)
    for i, m in enumerate(run.models):
        tasks.put(
            (
                i,
                copy.deepcopy(m).cpu(),
                run.cfg,
                run.seeds[i],
                run.dtype,
                run.paths[i],
                run.names[i],
                run.objective,
            )
        )
    for _ in range(nproc):
        tasks.put(None)
    procs = [
        ctx.Process(
            target=_worker, args=(x, y, tasks, results, remaining, budget, nproc), daemon=True
        )
        for _ in range(nproc)
    ]
    out: dict[int, dict[str, Any]] = {}
    try:
        for p in procs:
            p.start()
        while len(out) < k:
            try:
                kind, i, a, b = results.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    raise TrainingError("train_group: the worker processes exited early") from None
                continue
            if kind == "progress":
                if on_step:
                    on_step(i, a, b)
            elif kind == "error":
                raise TrainingError(f"train_group: the worker training model {i} failed:\n{a}")
            else:
                with torch.no_grad():
                    run.models[i].load_state_dict({n: torch.from_numpy(v) for n, v in b.items()})
                out[i] = a
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
        tasks.close()
        results.close()
    return [out[i] for i in range(k)]


# --------------------------------------------------------------------------------------------
# the allocator

_TUNED = [False]


def tune_cpu_allocator() -> bool:
    """Keep freed memory in this process's glibc heap instead of returning it to the kernel.

    A training step allocates and frees activations of several MB. With glibc's defaults the
    main thread's arena hands them back (``mmap``/``munmap``, heap trimming), and every step
    page-faults them in again: :func:`train_member` on the CNN of ``benchmarks/train_seeds.py``
    in the main thread, one thread, bf16, took 60 ms a step with 5,900-7,600 page faults, and
    41-45 ms with none once tuned. (Worker threads' arenas do not trim, so ``threads`` hardly
    faults either way.) This turns ``mmap`` off for allocations and heap trimming off; the
    process then keeps its peak footprint (a few hundred MB here), which a training process
    holds anyway. Process-wide and permanent; glibc only (returns whether it was applied).
    """
    if _TUNED[0]:
        return True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):
        return False
    _TUNED[0] = ok
    return ok
