"""All registries by kind, for ``richrep list``."""

from __future__ import annotations

from typing import Any

from richrep.errors import ConfigError
from richrep.registry import Registry


def registry_of(kind: str) -> Registry[Any]:
    from richrep.data import DATASETS, SHIFTS
    from richrep.models import ENCODERS

    regs: dict[str, Registry[Any]] = {"datasets": DATASETS, "shifts": SHIFTS, "encoders": ENCODERS}
    try:
        from richrep.evaluation.protocols import PROTOCOLS

        regs["protocols"] = PROTOCOLS
    except ImportError:
        pass
    try:
        from richrep.analysis import MEASURES

        regs["measures"] = MEASURES
    except ImportError:
        pass
    if kind not in regs:
        raise ConfigError(f"unknown registry {kind!r}; choose one of: {', '.join(sorted(regs))}")
    return regs[kind]
