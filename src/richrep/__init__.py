"""richrep: rich representations that stay useful when tasks and distributions shift.

Train K seeds of an encoder, concatenate their penultimate features (catK), and evaluate them
against fair baselines on shifted tasks (Zhang & Bottou, "Learning useful representations for
shifting tasks and distributions", ICML 2023).
"""

from richrep.config import Experiment, load_experiment, parse_experiment
from richrep.data import Split, Task, apply_shift, apply_shifts, load_task
from richrep.errors import ConfigError, DataError, RichrepError, StoreError, TrainingError
from richrep.pipeline import load_run, run_experiment

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "DataError",
    "Experiment",
    "RichrepError",
    "Split",
    "StoreError",
    "Task",
    "TrainingError",
    "apply_shift",
    "apply_shifts",
    "load_experiment",
    "load_run",
    "load_task",
    "parse_experiment",
    "run_experiment",
]
