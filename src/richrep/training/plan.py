"""Which models train together, folded or not, and on how many threads: fixed in advance from
(K, strategy, thread budget) alone, never by timing, so a seed's arithmetic depends only on its
unit and reruns — and the Ray engine, which runs the same units as tasks — give bit-identical
weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from richrep.runtime.threads import ThreadBudget
from richrep.training.fused import fusable

STRATEGIES: tuple[str, ...] = ("sequential", "threads", "processes", "fused", "fused-threads")


def choose_strategy(
    models: Sequence[nn.Module],
    device: torch.device,
    budget: ThreadBudget,
    *,
    folds: bool = True,
) -> str:
    """The strategy ``auto`` uses, by device and model family (no timed probe: on a shared
    machine a few seconds of probing measure the neighbours as much as the strategies).

    CPU, two or more models and a ``budget`` of two or more intra-op threads: ``threads`` for
    convolutional networks, ``fused-threads`` for the others (MLPs); else ``sequential``
    (``benchmarks/train_seeds.py``; timings: the README's Performance section):

    * CNN: oneDNN's grouped convolutions are much slower per FLOP than K plain ones, so folding
      the seeds loses on a CPU; ``processes`` pays its start-up. With a neighbour process busy
      on the same cores, two-thread kernels stall at every OpenMP barrier while one-thread
      workers only slow down in proportion, hence ``threads``.
    * MLP: the strategies are close; a batched matmul per layer keeps the bf16 kernels busier.

    GPU: ``fused`` when the models can be folded (a small network leaves the device idle; one
    K-times wider kernel fills it), else ``sequential``.
    """
    foldable = folds and fusable(models)
    if device.type == "cpu":
        if len(models) < 2 or budget.threads < 2:
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


def plan_units(
    k: int, strategy: str, budget: ThreadBudget, workers: int | None = None
) -> list[Unit]:
    """The work units of ``k`` models under ``strategy`` with the thread ``budget`` (the value
    handed down from ``runtime.threads``, never torch's current setting): ``sequential``
    one model at a time on all threads; ``fused`` all folded together; ``threads`` (and
    ``processes``) ``P = min(k, workers or budget)`` one-model workers on ``budget // P``
    threads, then the ``k mod P`` left over on ``budget // (k mod P)`` each; ``fused-threads``
    the models split into ``P`` folded groups of ``budget // P`` threads."""
    if strategy == "sequential":
        return [Unit((i,), False, budget.threads) for i in range(k)]
    if strategy == "fused":
        return [Unit(tuple(range(k)), True, budget.threads)]
    n = max(1, min(k, workers or budget.threads))
    share = budget.split(n)[0].threads
    if strategy == "fused-threads":
        return [Unit(tuple(g), True, share) for g in _split(list(range(k)), n)]
    full = k - k % n
    tail = k - full
    return [Unit((i,), False, share) for i in range(full)] + [
        Unit((i,), False, budget.split(tail)[0].threads) for i in range(full, k)
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
