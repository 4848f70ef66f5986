"""Training engines (``ENGINES``): ``local`` (this process) and ``ray`` (a Ray cluster).

An engine takes a run's planned members (teachers before students) and trains every
unfinished one into the run folder; :func:`train` dispatches to the one ``runtime.engine``
names.
"""

from richrep.training.engines.base import Engine, Progress
from richrep.training.engines.local import LocalEngine, train_local, work_units

__all__ = ["Engine", "LocalEngine", "Progress", "train_local", "work_units"]
