"""K models of one architecture trained together, each model's result equal to
:func:`~richrep.training.loop.train_member` on its own (per-seed semantics: see
:mod:`richrep.training.loop`). A run killed under one strategy resumes under any other.

Strategies (``strategy=``):

``sequential``
    each model in turn, as a unit of one: the reference.
``threads``
    (CPU) the models are handed out to ``P`` Python threads of this process, each applying its
    share of the budget (``threads // P`` cores) at its start (``torch.set_num_threads`` is
    per calling thread: :mod:`richrep.runtime.threads`); the GIL is released inside every kernel and the backward pass. Models left over
    after the full rounds (K mod P) then share all cores. Nothing is copied or pickled.
``processes``
    (CPU) the same split over spawned worker processes, the training tensors handed over once
    through shared memory; each worker costs a process start and ``import torch`` (seconds), and,
    as any spawn, needs the caller's script to be import-safe.
``fused``
    the K models folded into one module (:mod:`richrep.training.fused`), when their objectives
    say they fold.
``fused-threads``
    (CPU) the models split into ``P`` groups, each folded and trained in its own thread.

:func:`~richrep.training.plan.plan_units` fixes the units; ``auto`` picks with
:func:`~richrep.training.plan.choose_strategy`. See ``benchmarks/train_seeds.py``.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split
from richrep.data.images import is_lazy
from richrep.errors import ConfigError, TrainingError
from richrep.objectives import CrossEntropy, Objective
from richrep.runtime.threads import ThreadBudget
from richrep.training.allocator import tune_cpu_allocator
from richrep.training.fused import fusable
from richrep.training.loop import EpochReport, UnitProgress, train_unit
from richrep.training.plan import STRATEGIES, Unit, choose_strategy, plan_units

# Per-example training targets of a model, or a function computing them inside its unit.
Targets = dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]]


@dataclass
class _Group:
    """What every model of a group shares, and each model's own settings."""

    train: Split
    cfg: TrainingConfig
    device: torch.device
    dtype: torch.dtype
    models: Sequence[nn.Module]
    seeds: Sequence[int]
    objectives: list[Objective]
    targets: list[Targets]
    paths: list[Path | None]
    names: list[str]

    def run(
        self, unit: Unit, on_step: UnitProgress | None, on_epoch: EpochReport | None = None
    ) -> list[dict[str, Any]]:
        """Train one unit; progress is reported with indices into the group."""
        idx = list(unit.indices)
        hook = (lambda j, d, t: on_step(idx[j], d, t)) if on_step else None
        epoch = (lambda j, e, n, loss: on_epoch(idx[j], e, n, loss)) if on_epoch else None
        # Targets given as callables are computed here, on this unit's threads, so their
        # arithmetic is the unit's wherever it runs (a thread here, a Ray task elsewhere).
        targets = [self.targets[i]() if callable(self.targets[i]) else self.targets[i] for i in idx]
        return train_unit(
            [self.models[i] for i in idx],
            [self.seeds[i] for i in idx],
            self.train,
            self.cfg,
            device=self.device,
            dtype=self.dtype,
            fused=unit.fused,
            objectives=[self.objectives[i] for i in idx],
            targets=targets,
            partial_paths=[self.paths[i] for i in idx],
            names=[self.names[i] for i in idx],
            on_step=hook,
            on_epoch=epoch,
        )


def train_group(
    models: Sequence[nn.Module],
    train: Split,
    cfg: TrainingConfig,
    seeds: Sequence[int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    budget: ThreadBudget,
    partial_paths: Sequence[Path | None] | None = None,
    on_step: UnitProgress | None = None,
    on_epoch: EpochReport | None = None,
    members: Sequence[str] | None = None,
    strategy: str = "auto",
    objectives: Sequence[Objective] | None = None,
    targets: Sequence[Targets] | None = None,
    workers: int | None = None,
    tune_allocator: bool = True,
    units: Sequence[Unit] | None = None,
) -> list[dict[str, Any]]:
    """Train ``models[k]`` in place with ``seeds[k]``; return one result per model:
    ``{"history": [...], "strategy": name}`` plus ``"failed": message`` for a seed whose loss
    became non-finite (the others go on). ``partial_paths[k]`` is model ``k``'s epoch
    checkpoint, ``members[k]`` its name in messages, ``objectives[k]`` / ``targets[k]`` its
    loss and per-example targets, ``on_step(k, done, total)`` its progress and
    ``on_epoch(k, epoch, epochs, loss)`` each epoch's mean loss (serialized by a lock under
    ``threads``). ``budget``: the threads of this call, planned for and applied for
    its duration (restored after). ``workers`` sets the worker count of ``threads``/``processes``.
    Other exceptions stop every worker and propagate; the epoch checkpoints written so far
    stay. ``tune_allocator`` applies :func:`tune_cpu_allocator` on a CPU (a process policy).
    ``units`` (indices into ``models``) replaces the plan of :func:`plan_units`: an engine that
    retrains some members of a group passes the units planned for the whole group, so each
    member keeps the arithmetic it was first trained with."""
    k = len(models)
    group = _Group(
        train,
        cfg,
        device,
        dtype,
        models,
        seeds,
        list(objectives) if objectives is not None else [CrossEntropy() for _ in range(k)],
        list(targets) if targets is not None else [{} for _ in range(k)],
        list(partial_paths) if partial_paths is not None else [None] * k,
        list(members) if members is not None else [""] * k,
    )
    _check(group, strategy)
    if k == 0:
        return []
    if device.type == "cpu" and tune_allocator:
        tune_cpu_allocator()
    folds = all(o.folds() for o in group.objectives)
    if strategy == "auto":
        strategy = choose_strategy(models, device, budget, folds=folds)
    if strategy.startswith("fused") and not (folds and fusable(models)):
        raise ConfigError(
            "train_group: the fused strategies need foldable models (mlp/cnn families) and "
            "objectives that fold"
        )
    if strategy in ("threads", "processes", "fused-threads") and device.type != "cpu":
        raise ConfigError(f"train_group: the {strategy} strategy is for CPUs")
    units = list(units) if units is not None else plan_units(k, strategy, budget, workers)
    if sorted(i for u in units for i in u.indices) != list(range(k)):
        raise ConfigError("train_group: the units must cover every model exactly once")
    with budget.applied():  # a no-op under train_local, whose edge applied the same budget
        if strategy in ("sequential", "fused"):
            out: dict[int, dict[str, Any]] = {}
            for u in units:
                out.update(zip(u.indices, group.run(u, on_step, on_epoch), strict=True))
            results = [out[i] for i in range(k)]
        elif strategy == "processes":
            results = _train_processes(group, (on_step, on_epoch), workers, budget)
        else:
            results = _train_threads(group, units, budget, (on_step, on_epoch))
    for r in results:
        r["strategy"] = strategy
    return results


def _check(group: _Group, strategy: str) -> None:
    """One seed, objective, targets, path and name per model; a known strategy."""
    k = len(group.models)
    if len(group.seeds) != k:
        raise ConfigError(f"train_group: {k} models but {len(group.seeds)} seeds")
    if not (
        len(group.objectives) == len(group.targets) == len(group.paths) == len(group.names) == k
    ):
        raise ConfigError(
            "train_group: objectives, targets, partial_paths and members need one per model"
        )
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ConfigError(
            f"train_group: unknown strategy {strategy!r} (one of auto, {', '.join(STRATEGIES)})"
        )


# --------------------------------------------------------------------------------------------
# threads: units handed out to Python threads, each with its own cores


class _Stop(Exception):
    """Raised in a worker's progress hook once another worker has failed."""


def _train_threads(
    group: _Group,
    units: list[Unit],
    budget: ThreadBudget,
    report: tuple[UnitProgress | None, EpochReport | None],
) -> list[dict[str, Any]]:
    """Run ``units`` in waves of equal thread counts, each wave on ``budget // threads``
    Python threads that each apply their unit's budget at their start. The caller applies
    ``budget`` again after (:meth:`ThreadBudget.applied`): the workers moved the default
    that threads started later begin with."""
    lock = threading.Lock()
    out: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    on_step, on_epoch = report

    def hook(i: int, done: int, total: int) -> None:
        if stop.is_set():
            raise _Stop
        if on_step:
            with lock:
                on_step(i, done, total)

    def epoch(i: int, e: int, epochs: int, loss: float) -> None:
        if on_epoch:
            with lock:
                on_epoch(i, e, epochs, loss)

    def work(todo: list[Unit], threads: ThreadBudget) -> None:
        threads.apply()  # this thread's edge: its OpenMP and MKL budget
        while not stop.is_set():
            with lock:
                if not todo:
                    return
                unit = todo.pop(0)
            try:
                results = group.run(unit, hook, epoch)
            except _Stop:
                return
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(e)
                stop.set()
                return
            with lock:
                out.update(zip(unit.indices, results, strict=True))

    waves: list[list[Unit]] = []
    for u in units:
        if waves and waves[-1][0].threads == u.threads:
            waves[-1].append(u)
        else:
            waves.append([u])
    pool: list[threading.Thread] = []
    try:
        for wave in waves:
            n = max(1, min(len(wave), budget.threads // wave[0].threads))
            pool = [
                threading.Thread(
                    target=work,
                    args=(wave, ThreadBudget(wave[0].threads)),
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
    if errors:
        raise errors[0]
    return [out[i] for i in range(len(group.models))]


# --------------------------------------------------------------------------------------------
# processes: models handed out to spawned CPU workers


def _worker(
    x: torch.Tensor,
    y: torch.Tensor,
    tasks: Any,
    results: Any,
    remaining: Any,
    budget: ThreadBudget,
    nproc: int,
) -> None:
    tune_cpu_allocator()
    split = Split(x, y)
    threads = budget.split(nproc)[0].apply()  # this process's edge: its share
    while True:
        task = tasks.get()
        if task is None:
            return
        i, model, cfg, seed, dtype, path, member, objective, targets = task
        last = [0.0]

        def progress(_j: int, done: int, total: int, i: int = i, last: list[float] = last) -> None:
            nonlocal threads
            want = budget.split(max(1, min(nproc, remaining.value)))[0]
            if want != threads:  # fewer models left: this process takes their cores
                threads = want.apply()
            now = time.perf_counter()
            if done in (0, total) or now - last[0] > 0.25:
                last[0] = now
                results.put(("progress", i, done, total))

        def epoch(_j: int, e: int, epochs: int, loss: float, i: int = i) -> None:
            results.put(("epoch", i, (e, epochs), loss))

        try:
            (res,) = train_unit(
                [model],
                [seed],
                split,
                cfg,
                device=torch.device("cpu"),
                dtype=dtype,
                objectives=[objective],
                targets=[targets],
                partial_paths=[path],
                names=[member],
                on_step=progress,
                on_epoch=epoch,
            )
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
    group: _Group,
    report: tuple[UnitProgress | None, EpochReport | None],
    workers: int | None,
    budget: ThreadBudget,
) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    on_step, on_epoch = report
    k = len(group.models)
    nproc = max(1, min(k, workers or budget.threads))
    ctx = mp.get_context("spawn")
    if is_lazy(group.train.x):
        raise ConfigError(
            "runtime.strategy 'processes' shares the training inputs in memory; streamed "
            "images (the image_folder dataset) train with sequential, threads or fused"
        )
    x, y = group.train.x.detach(), group.train.y.detach()
    x = x if x.is_shared() else x.clone().share_memory_()
    y = y if y.is_shared() else y.clone().share_memory_()
    tasks, results = ctx.Queue(), ctx.Queue()
    remaining = ctx.Value("i", k)
    targets = [t() if callable(t) else t for t in group.targets]
    for i, m in enumerate(group.models):
        tasks.put(
            (
                i,
                copy.deepcopy(m).cpu(),
                group.cfg,
                group.seeds[i],
                group.dtype,
                group.paths[i],
                group.names[i],
                group.objectives[i],
                targets[i],
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
            elif kind == "epoch":
                if on_epoch:
                    on_epoch(i, *a, b)
            elif kind == "error":
                raise TrainingError(f"train_group: the worker training model {i} failed:\n{a}")
            else:
                with torch.no_grad():
                    group.models[i].load_state_dict({n: torch.from_numpy(v) for n, v in b.items()})
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
