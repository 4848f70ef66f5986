"""The thread budget: ``runtime.threads`` as a value (:class:`ThreadBudget`), made once, handed
down (stage → engine → planner → workers) and applied at the edges where work starts.

What ``torch.set_num_threads(n)`` does (checked on torch 2.x with OpenMP):

* it sets the **calling thread's** budget: its OpenMP team size (``omp_set_num_threads`` sets
  an OpenMP variable of the calling thread) and its MKL budget (``mkl_set_num_threads_local``).
  Other threads that already ran torch code keep theirs;
* it also records ``n`` as the process's default: a thread that has not run torch code yet
  takes the *last* value any thread set, the first time it does (torch initializes each thread
  lazily). So worker threads that set their own budgets move the default of threads started
  after them, and the thread that started them applies its budget again once they are done;
* a new process does not inherit it: it starts from ``OMP_NUM_THREADS`` or torch's default.

Hence a budget is applied once at each edge, never read back to make decisions: the main
process at a stage's start, each Ray task and worker process at its start, each worker thread
at its start. :meth:`ThreadBudget.here` tells code under an edge that is not handed the value
(a streamed split's decoding workers, the probe solver's policy) what that edge applied to the
calling thread."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from richrep.errors import ConfigError

_EDGE = threading.local()  # .budget: what apply() last put in effect on this thread


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadBudget:
    """``threads`` intra-op threads (at least 1) for the work of one process or thread."""

    threads: int

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int):
            raise ConfigError(f"a thread budget is a whole number, got {self.threads!r}")
        if self.threads < 1:
            raise ConfigError(f"a thread budget is at least 1 thread, got {self.threads}")

    @classmethod
    def resolve(cls, threads: int = 0, *, cores: int | None = None) -> ThreadBudget:
        """``runtime.threads`` as a budget: 0 means every core this process may use; a count
        above the cores (``cores``, default :func:`available_cores`) is clamped to them; a
        negative count is a :class:`ConfigError`."""
        if isinstance(threads, bool) or not isinstance(threads, int):
            raise ConfigError(f"runtime.threads must be a whole number, got {threads!r}")
        if threads < 0:
            raise ConfigError(
                f"runtime.threads must be 0 (every core) or a positive count, got {threads}"
            )
        cores = available_cores() if cores is None else cores
        if threads > cores:
            warnings.warn(
                f"runtime.threads: {threads} is more than the {cores} core(s) this machine gives "
                f"richrep; using {cores}",
                RuntimeWarning,
                stacklevel=2,
            )
        return cls(min(threads, cores) if threads else cores)

    def split(self, n: int) -> tuple[ThreadBudget, ...]:
        """``n`` equal shares of this budget (``threads // n`` each, never below 1: more
        shares than threads run one thread each)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"a thread budget splits into at least 1 share, got {n!r}")
        return (ThreadBudget(max(1, self.threads // n)),) * n

    def apply(self) -> ThreadBudget:
        """Put this budget in effect on the calling thread (and as the default of threads that
        start running torch code later; see the module docstring). For the start of a process
        or thread, where there is nothing to restore."""
        torch.set_num_threads(self.threads)
        _EDGE.budget = self
        return self

    @contextlib.contextmanager
    def applied(self) -> Iterator[ThreadBudget]:
        """This budget in effect on the calling thread for the ``with`` block; on exit (also on
        an exception) the thread's earlier setting, and the process default, are back."""
        before, edge = torch.get_num_threads(), getattr(_EDGE, "budget", None)
        self.apply()
        try:
            yield self
        finally:
            torch.set_num_threads(before)
            _EDGE.budget = edge

    @staticmethod
    def here() -> ThreadBudget | None:
        """The budget the calling thread's edge applied (:meth:`apply`), or None outside any."""
        return getattr(_EDGE, "budget", None)


def current_threads() -> int:
    """torch's thread count on the calling thread, for records (the environment, a policy's
    report): never a reason to plan differently."""
    return torch.get_num_threads()
