"""Bounds on what an experiment or a command asks for, so that a number means what it says.

Two kinds:

* **bounded by nature** -- ``runtime.threads`` above the cores this process may use is clamped
  to them with a warning when the local engine or a stage resolves its budget
  (``ThreadBudget.resolve``; the Ray engine plans for the count as set, since its nodes bound
  it; ``runtime`` is not part of the run's identity); ``evaluation.subsets`` above the number of distinct seed
  subsets there are is refused when the experiment is validated.
* **bounded by cost** -- estimated before the work starts (``richrep.stages.budget``) and
  refused above the sizes below unless the user says so (``--yes``, ``yes=True``).
"""

from __future__ import annotations

import math

from richrep.errors import ConfigError

MAX_PARAMS = 1_000_000_000  # parameters of one network (4 GB of float32 weights)
MAX_TRAINING_PASSES = 10_000_000_000  # examples seen in training: epochs x examples x networks
MAX_PROBE_FITS = 100_000  # probe fits of an evaluation: representations x draws x sizes
MAX_PERMUTATIONS = 100_000  # permutations of the CKA test of ``richrep analyze``
YES = "pass --yes (yes=True in Python) to run it anyway"


class BudgetError(ConfigError):
    """The work asked for is estimated above a stated limit (:mod:`richrep.runtime.limits`)."""


def distinct_subsets(seeds: int) -> int:
    """The most distinct seed subsets of one size K (2 <= K <= seeds) there are; 1 for a single
    seed."""
    return math.comb(seeds, max(2, seeds // 2)) if seeds >= 2 else 1


def check_subsets(subsets: int, seeds: int, default: int = 3) -> None:
    """Refuse ``evaluation.subsets`` above both the default and the distinct subsets of the
    seeds (catK uses every subset when there are fewer than asked)."""
    most = distinct_subsets(seeds)
    if subsets > max(most, default):
        raise ConfigError(
            f"evaluation.subsets: {subsets} seed subsets per K, but {seeds} seed(s) have at "
            f"most {most} distinct subsets of any size K; set it to at most {max(most, default)} "
            f"(catK uses every subset when there are fewer than asked)"
        )


def over(what: str, limit: int, unit: str, fix: str) -> BudgetError:
    """The error for work estimated above its limit: ``what`` it is, the ``limit`` in
    ``unit``s, and how to ``fix`` it."""
    return BudgetError(
        f"{what}, more than the {limit:,} {unit} richrep starts without asking; {fix}, or {YES}"
    )
