"""The size of a run's work, estimated before it starts: a network's parameters (counted on
the meta device, nothing allocated), the training examples still to process and the probe
fits of the evaluation. Work above the limits of :mod:`richrep.runtime.limits` is refused with a
:class:`~richrep.runtime.limits.BudgetError` naming the field and the limit, unless ``yes``."""

from __future__ import annotations

import json
import math

import torch

from richrep.config import Experiment
from richrep.members import Member, kind_of
from richrep.models import count_params
from richrep.run import Run
from richrep.runtime.limits import (
    MAX_PARAMS,
    MAX_PERMUTATIONS,
    MAX_PROBE_FITS,
    MAX_TRAINING_PASSES,
    over,
)
from richrep.store.weightfiles import Checkpoints


def check_run(run: Run, *, train: bool = True, evaluate: bool = True, yes: bool = False) -> None:
    """Refuse the run's remaining training (``train``) or its evaluation (``evaluate``) when
    estimated above richrep's limits, unless ``yes``."""
    if yes:
        return
    if train:
        check_params(run)
        check_training(run)
    if evaluate:
        check_evaluation(run.exp)


def encoder_params(run: Run, member: Member) -> int | None:
    """The parameters of ``member``'s encoder, built on the meta device (None when it cannot
    be built there: the real build reports why)."""
    try:
        with torch.device("meta"):
            return count_params(kind_of(member).encoder(member, run.exp, run.source_task))
    except Exception:  # noqa: BLE001 - the estimate is best effort; building reports errors
        return None


def check_params(run: Run) -> None:
    """Refuse a network with more than :data:`~richrep.runtime.limits.MAX_PARAMS` parameters."""
    seen: set[str] = set()
    for m in run.members:
        key = json.dumps([m.kind, m.k, m.width, m.feature_dim, m.params], default=str)
        if key in seen:
            continue
        seen.add(key)
        n = encoder_params(run, m)
        if n is not None and n > MAX_PARAMS:
            raise over(
                f"model: the encoder of {m.name} has about {n:.3g} parameters "
                f"(model.encoder {run.exp.model.encoder!r}, model.params, model.width)",
                MAX_PARAMS,
                "parameters per network",
                "make it smaller",
            )


def check_training(run: Run) -> None:
    """Refuse training that would process more than
    :data:`~richrep.runtime.limits.MAX_TRAINING_PASSES` examples (epochs x examples x networks, over
    the members not yet trained)."""
    exp = run.exp
    imported = isinstance(exp.training.seeds, Checkpoints)
    todo = [  # read without verifying: the train stage verifies (and reports) each checkpoint
        m
        for m in run.members
        if not run.ledger.looks_finished(m.name) and not (imported and m.kind == "single")
    ]
    if not todo:
        return
    epochs = [kind_of(m).training(m, exp).epochs for m in todo]
    n = len(run.source_task.train)
    passes = sum(epochs) * n
    if passes > MAX_TRAINING_PASSES:
        raise over(
            f"training.epochs: {max(epochs)} epochs × {n} training examples × {len(todo)} "
            f"network(s) is about {passes:.3g} examples to train on",
            MAX_TRAINING_PASSES,
            "examples",
            "lower training.epochs",
        )


def representations(exp: Experiment) -> int:
    """How many representations the evaluation compares: floors, seeds, catK's subsets for each
    K and the baselines' members."""
    n = len(exp.training.seed_list)
    cats = sum(min(exp.evaluation.subsets, math.comb(n, k)) for k in range(2, n + 1))
    baselines = sum(b.seeds for b in exp.training.baselines)
    return len(exp.evaluation.floors) + n + cats + baselines


def check_evaluation(exp: Experiment) -> None:
    """Refuse a suite whose probe fits (representations x, per entry, one per ``all`` size and
    ``draws`` per other size) pass :data:`~richrep.runtime.limits.MAX_PROBE_FITS`."""
    per_rep = {
        e.name: sum(1 if s == "all" else e.draws for s in e.sizes) for e in exp.evaluation.suite
    }
    reps = representations(exp)
    fits = reps * sum(per_rep.values())
    if fits > MAX_PROBE_FITS:
        name = max(per_rep, key=per_rep.__getitem__)
        raise over(
            f"evaluation.suite: {reps} representations × {sum(per_rep.values())} draws and "
            f"sizes is about {fits:.3g} probe fits (entry {name!r}: {per_rep[name]})",
            MAX_PROBE_FITS,
            "probe fits",
            "lower the entries' draws or sizes",
        )


def check_permutations(n: int, yes: bool = False) -> None:
    """Refuse more than :data:`~richrep.runtime.limits.MAX_PERMUTATIONS` permutations, unless ``yes``."""
    if n > MAX_PERMUTATIONS and not yes:
        raise over(
            f"--permutations: {n} permutations of the CKA test",
            MAX_PERMUTATIONS,
            "permutations",
            "lower --permutations",
        )
