"""A training budget as ``richrep advise --budget`` takes it: seed-equivalents of training
(``8members``) or time on the run's own device (``600s``, ``600cpu-s``, ``0.5gpu-h``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from richrep.errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """A training budget: seed-equivalents (``members``) or time on the run's device."""

    amount: float  # in ``unit``
    unit: str  # "members", "s" or "h"
    device: str | None  # "cpu", "gpu" or None (the run's own)
    text: str

    @property
    def per_unit(self) -> float:
        """Seconds in one unit (members: none)."""
        return {"s": 1.0, "h": 3600.0}.get(self.unit, math.nan)


_UNITS = {
    **dict.fromkeys(("members", "member", "seeds", "seed"), "members"),
    **dict.fromkeys(("s", "sec", "seconds"), "s"),
    **dict.fromkeys(("h", "hours"), "h"),
}


def parse_budget(text: str) -> Budget:
    """``8members``, ``600s``, ``600cpu-s``, ``0.5gpu-h``, ``2 hours``… (no bare numbers)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:(cpu|gpu)-)?([A-Za-z]*)\s*", str(text), re.I)
    unit = _UNITS.get(m.group(3).lower()) if m else None
    if not m or unit is None or (m.group(2) and unit == "members"):
        raise ConfigError(
            f"--budget {text!r}: give an amount and a unit: 8members (seed-equivalents of "
            f"training), 600s or 600cpu-s (seconds), 0.5h or 0.5gpu-h (hours)"
        )
    amount = float(m.group(1))
    if amount <= 0:
        raise ConfigError(f"--budget {text!r}: the amount must be positive")
    device = m.group(2).lower() if m.group(2) else None
    return Budget(amount, unit, device, str(text).strip())


def check_budget(budget: Budget, device: str, seed_seconds: float | None) -> None:
    """A budget the run's own records can price, else a ConfigError saying why."""
    if budget.unit == "members":
        return
    trained_on = "cpu" if device.startswith("cpu") else "gpu"
    if budget.device is not None and budget.device != trained_on:
        raise ConfigError(
            f"--budget {budget.text!r} is in {budget.device.upper()} time but the run's seeds "
            f"trained on {device}; give it in seconds or hours of that device, or in members"
        )
    if not seed_seconds:
        raise ConfigError(
            f"--budget {budget.text!r}: the run records no training time for its seeds "
            "(imported checkpoints?); give the budget in members"
        )
