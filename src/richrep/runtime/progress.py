"""The progress callback every stage reports to, and its optional extensions.

``progress(task, done, total)`` is the whole contract: a plain function of three arguments
works. A richer receiver (the command line's) may also have ``plan(task, total, unit)``,
told what a stage will do before it starts (so an overall estimate covers the work ahead),
and ``note(task, **info)``, told what a bar cannot count (a member's epoch and loss); the
helpers here call them only where they exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[str, int, int], None]  # (task, done, total)


def plan(progress: Progress | None, task: str, total: int, unit: str) -> None:
    """Tell ``progress`` that ``task`` will do ``total`` units of work (``unit``: "steps",
    "probe fits"…), if it listens for plans."""
    fn = getattr(progress, "plan", None)
    if fn is not None:
        fn(task, total, unit)


def note(progress: Progress | None, task: str, **info: Any) -> None:
    """Tell ``progress`` what else it may show of ``task`` (``epoch``, ``epochs``, ``loss``),
    if it listens for notes."""
    fn = getattr(progress, "note", None)
    if fn is not None:
        fn(task, **info)
