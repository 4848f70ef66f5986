"""The probe registry (``PROBES``): scikit-learn estimators fitted on frozen features."""

from __future__ import annotations

from typing import Any

from richrep.evaluation.probes import LinearProbe, NearestMeanProbe
from richrep.plugins import PROBES

PROBES.register(
    "linear", description="L2 logistic regression, strength chosen on a validation split"
)(LinearProbe)
PROBES.register("nearest_mean", description="nearest class mean on standardized features")(
    NearestMeanProbe
)


def probe_seed(seed: int, draw: int) -> int:
    """The ``random_state`` (validation-split seed) of draw ``draw``'s probe in an experiment of
    ``seed``: ``seed + draw``, so every draw holds out its own validation split, another
    ``seed`` moves every draw's, and a single-draw probe (``all``, robustness) keeps the
    experiment's seed."""
    return seed + draw


def make_probe(name: str, params: dict[str, Any], *, seed: int, device: str) -> Any:
    """A fresh probe ``name`` with ``params``; ``seed`` and the run's ``device`` fill
    ``random_state`` and ``device`` where the probe takes them and ``params`` leaves them unset
    (:attr:`PROBES.filled`: a resolved spec never holds their defaults)."""
    entry = PROBES.entry(name)
    accepted = {p.name for p in entry.params()}
    run = {"random_state": seed, "device": device}
    extra = {k: run[k] for k in PROBES.filled if k in accepted}
    return PROBES.build(name, **{**extra, **params})
