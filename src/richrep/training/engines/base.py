"""What a training engine (``ENGINES``) is: :class:`Engine`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from richrep.config import Experiment
from richrep.data import Task
from richrep.members import Member
from richrep.runtime.progress import Progress  # (member, done, total)
from richrep.store import RunStore
from richrep.store.ledger import Status

__all__ = ["Engine", "Progress"]


@runtime_checkable
class Engine(Protocol):
    """Trains every unfinished member of ``members`` (teachers before students) into the run
    folder ``store``; returns each member's status. Structural: a plug-in implements it
    without subclassing."""

    def train(
        self,
        exp: Experiment,
        task: Task,
        members: Sequence[Member],
        store: RunStore,
        progress: Progress | None = None,
    ) -> dict[str, Status]: ...
