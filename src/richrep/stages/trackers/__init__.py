"""Experiment trackers (``TRACKERS``), named by ``runtime.track``: ``mlflow``.

A tracker receives a :class:`Record` (what the tracking stage, :mod:`richrep.stages.track`,
gathered from a run folder) and logs it; it knows nothing of run folders. Its constructor
takes the user's arguments and fails with a :class:`~richrep.errors.ConfigError` when its
library is missing, so the pipeline builds it before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Record:
    """What one run logs, whatever the tracker."""

    run_id: str  # the run folder's name (<name>-<hash>)
    experiment: str  # the experiment's name: the tracker's default experiment
    runs_dir: Path  # the folder holding the run folder: home of a default local store
    params: dict[str, str]  # the resolved config, flattened to dotted keys
    tags: dict[str, str]
    metrics: list[tuple[str, float, int]]  # (key, value, step)
    artifacts: list[tuple[Path, str]]  # (file, folder among the artifacts; "" the top)
    digest: str  # a hash of what is logged (not the environment): equal, nothing new to log


class Tracker(Protocol):
    def target(self, record: Record) -> str:
        """Where ``record`` goes (a tracking URI and an experiment), as one string."""
        ...

    def logged(self, ref: str, record: Record) -> bool:
        """Whether the tracker's run ``ref`` (logged earlier to this target) still exists."""
        ...

    def log(self, record: Record) -> str:
        """Log ``record`` as a new tracker run; return its id."""
        ...
