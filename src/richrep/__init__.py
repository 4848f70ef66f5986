"""richrep: rich representations that stay useful when tasks and distributions shift.

Train K seeds of an encoder, concatenate their penultimate features (catK), and evaluate them
against fair baselines on shifted tasks (Zhang & Bottou, "Learning useful representations for
shifting tasks and distributions", ICML 2023).

The names below are loaded on first use, so ``import richrep.analysis`` (a library on arrays)
loads no training or pipeline code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {
    "ConfigError": "richrep.errors",
    "DataError": "richrep.errors",
    "RichrepError": "richrep.errors",
    "StoreError": "richrep.errors",
    "TrainingError": "richrep.errors",
    "Experiment": "richrep.config",
    "load_experiment": "richrep.config",
    "parse_experiment": "richrep.config",
    "Split": "richrep.data",
    "Task": "richrep.data",
    "apply_shift": "richrep.data",
    "apply_shifts": "richrep.data",
    "load_task": "richrep.data",
    "Row": "richrep.results",
    "Run": "richrep.run",
    "open_run": "richrep.run",
    "run_experiment": "richrep.pipeline",
    "sweep": "richrep.sweeps",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'richrep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
