"""Batch sources of the training loop (:mod:`richrep.training.loop`): what each step of an
epoch trains on, for each of a unit's active models.

A source has ``steps`` (per epoch) and ``epoch(seeds, epoch)``, which yields, per step, each
model's rows of the training split (``rows[a]``: a tensor of indices, or a slice) and their
inputs stacked ``(A, B, ...)``. :class:`EpochOrder` visits every example once per epoch in an
order that is a function of the model's seed and the epoch (so a killed run resumes
bit-identically); :class:`Sampled` draws minibatches with replacement from one generator (the
``ood`` protocol's networks), or takes the full batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch

from richrep.data import Split
from richrep.data.images import is_lazy, stream
from richrep.runtime.seeding import generator

Rows = Sequence[torch.Tensor | slice]
Steps = Iterator[tuple[Rows, torch.Tensor]]


class Batches(Protocol):
    """A batch source: ``steps`` per epoch, and each step's rows and inputs per model."""

    steps: int

    def epoch(self, seeds: Sequence[int], epoch: int) -> Steps: ...


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, "order", epoch))


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


class EpochOrder:
    """Each model's epoch in ``epoch_order(seed, epoch, n)``, in batches of ``batch_size`` (the
    last partial batch kept). Tensors move to ``device`` once; streamed images are decoded by
    worker processes, batch by batch."""

    def __init__(self, data: Split, batch_size: int, device: torch.device) -> None:
        self.lazy = is_lazy(data.x)
        self.x = data.x if self.lazy else data.x.to(device)
        self.n, self.batch_size, self.device = len(data), batch_size, device
        self.steps = math.ceil(self.n / batch_size)

    def epoch(self, seeds: Sequence[int], epoch: int) -> Steps:
        bs = self.batch_size
        orders = torch.stack([epoch_order(s, epoch, self.n) for s in seeds]).to(self.device)
        chunks = [orders[:, s * bs : (s + 1) * bs] for s in range(self.steps)]
        if not self.lazy:
            for batch in chunks:
                yield batch, self.x[batch]
            return
        cpu = [c.cpu() for c in chunks]
        xs_stream = stream(self.x, cpu, pin_memory=self.device.type == "cuda")
        for batch in chunks:
            yield batch, next(xs_stream).to(self.device, non_blocking=True)


class Sampled:
    """``steps`` minibatches of ``batch_size`` rows drawn with replacement from ``gen`` (one
    model), or the full batch when ``batch_size`` is None or not below the split's size."""

    def __init__(
        self,
        data: Split,
        batch_size: int | None,
        steps: int,
        gen: torch.Generator,
        device: torch.device,
    ) -> None:
        self.x, self.n, self.steps = data.x.to(device), len(data), steps
        self.batch_size = batch_size if batch_size and batch_size < self.n else None
        self.gen, self.device = gen, device

    def epoch(self, seeds: Sequence[int], epoch: int) -> Steps:
        for _ in range(self.steps):
            rows: torch.Tensor | slice = slice(None)
            if self.batch_size is not None:
                rows = torch.randint(0, self.n, (self.batch_size,), generator=self.gen)
                rows = rows.to(self.device)
            yield [rows], self.x[rows][None]
