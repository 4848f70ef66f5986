"""What evaluation may ask of the run it evaluates (:class:`RunView`). :class:`~richrep.run.Run`
implements it; evaluation cannot import the run (it sits above), so protocols that train or
load the run's networks (``finetune``, ``ood`` with ``mode: network``, ``disambiguate``) reach
it through this view, as ``Context.owner``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from richrep.data import Task
from richrep.members import Member
from richrep.store import RunStore


@runtime_checkable
class RunView(Protocol):
    """The run behind an evaluation: its networks, their checkpoints' sha256 and its folder
    (``store``: the work folders a protocol resumes from, :meth:`RunStore.work`)."""

    store: RunStore

    @property
    def source_task(self) -> Task:
        """The task the members trained on."""
        ...

    @property
    def device(self) -> torch.device:
        """Where evaluation runs (``runtime.evaluation_device``)."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The precision evaluation autocasts to."""
        ...

    def member(self, name: str) -> Member:
        """The planned member ``name``."""
        ...

    def classifier(self, name: str, trained: bool = True) -> nn.Module:
        """Member ``name``'s whole network (encoder and heads), in eval mode."""
        ...

    def encoder(self, part: str) -> nn.Module:
        """The encoder of a representation part (``single-s0``, ``random-single-s0``,
        ``input``)."""
        ...

    def checkpoint_sha(self, name: str) -> str:
        """The sha256 of member ``name``'s checkpoint ("" when it has none)."""
        ...
