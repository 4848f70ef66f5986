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


def make_probe(name: str, params: dict[str, Any], *, seed: int, device: str) -> Any:
    """A fresh probe ``name`` with ``params``; the run's seed and device fill ``random_state``
    and ``device`` where the probe takes them and the spec leaves them unset."""
    entry = PROBES.entry(name)
    accepted = {p.name for p in entry.params()}
    extra = {k: v for k, v in (("random_state", seed), ("device", device)) if k in accepted}
    return PROBES.build(name, **{**extra, **params})
