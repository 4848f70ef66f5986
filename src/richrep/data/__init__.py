"""Data: datasets (Fashion-MNIST, MNIST-1D, sklearn digits, your .npz), tasks and shifts."""

from richrep.data.datasets import DATASETS, RawData, load_task
from richrep.data.shifts import SHIFTS, apply_shift, apply_shifts
from richrep.data.task import Split, Task

__all__ = [
    "DATASETS",
    "SHIFTS",
    "RawData",
    "Split",
    "Task",
    "apply_shift",
    "apply_shifts",
    "load_task",
]
