"""The memory budget: ``runtime.memory`` as a value (:class:`MemoryBudget`), applied at the edge
where evaluation starts, read by the probes to decide between holding the features in memory
and streaming them from disk in chunks.

``runtime.memory`` is a byte count (``8589934592``), a size with a unit (``"8GB"``,
``"512 MiB"``) or a share of this machine's memory (``"50%"``); unset, it is
:data:`DEFAULT_SHARE` of the machine's memory (the cgroup's limit where one is lower)."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from richrep.errors import ConfigError

DEFAULT_SHARE = 0.5  # of the machine's memory, when runtime.memory is unset
MINIMUM = 64 << 20  # below this no chunk of a realistic feature matrix fits
UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_EDGE = threading.local()  # .budget: what applied() put in effect on this thread


def machine_memory() -> int:
    """This machine's physical memory in bytes, or the cgroup (v2 or v1) limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit).read_text().strip()))
    return total


def parse_memory(value: object, *, total: int | None = None) -> int:
    """``runtime.memory`` as bytes (module docstring); :class:`ConfigError` naming the value for
    anything else, a size below :data:`MINIMUM` or a share outside (0, 100] %."""
    if value is None:
        return int(DEFAULT_SHARE * (total or machine_memory()))
    what = f"runtime.memory {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{what}: give bytes, a size such as '8GB', or a share such as '50%'")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1])
        except ValueError:
            raise ConfigError(f"{what}: a share is a number followed by %, e.g. '50%'") from None
        if not 0 < share <= 100:
            raise ConfigError(f"{what}: a share of the machine's memory is in (0, 100] %")
        size = int(share / 100 * (total or machine_memory()))
    elif isinstance(value, str):
        m = _SIZE.match(value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in UNITS:
            raise ConfigError(
                f"{what}: not a size; give bytes or a number with one of the units "
                f"{', '.join(u for u in UNITS if u)}, e.g. '8GB'"
            )
        size = int(float(m.group(1)) * UNITS[unit])
    else:
        if not value == value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{what}: not a finite size")
        size = int(value)
    if size <= 0:
        raise ConfigError(f"{what}: a memory budget must be positive")
    if size < MINIMUM:
        raise ConfigError(
            f"{what} is {size:,} bytes: at least {MINIMUM >> 20} MiB, to hold a chunk of features"
        )
    return size


@dataclass(frozen=True)
class MemoryBudget:
    """``bytes`` of memory the work of one process (or one thread's share of it) may hold."""

    bytes: int

    def __post_init__(self) -> None:
        if isinstance(self.bytes, bool) or not isinstance(self.bytes, int) or self.bytes < 1:
            raise ConfigError(f"a memory budget is a positive number of bytes, got {self.bytes!r}")

    @classmethod
    def resolve(cls, value: object = None) -> MemoryBudget:
        """``runtime.memory`` (:func:`parse_memory`) as a budget."""
        return cls(parse_memory(value))

    def split(self, n: int) -> MemoryBudget:
        """One of ``n`` equal shares (workers side by side)."""
        return MemoryBudget(max(1, self.bytes // max(1, n)))

    def apply(self) -> MemoryBudget:
        """Put this budget in effect on the calling thread (for a thread's start)."""
        _EDGE.budget = self
        return self

    @contextlib.contextmanager
    def applied(self) -> Iterator[MemoryBudget]:
        """This budget in effect on the calling thread for the ``with`` block."""
        before = getattr(_EDGE, "budget", None)
        _EDGE.budget = self
        try:
            yield self
        finally:
            _EDGE.budget = before

    @staticmethod
    def here() -> MemoryBudget:
        """The budget applied on the calling thread, else the default (:data:`DEFAULT_SHARE` of
        the machine's memory)."""
        budget = getattr(_EDGE, "budget", None)
        return budget if budget is not None else MemoryBudget(parse_memory(None))
