"""Evaluation: probes (scikit-learn estimators, ``PROBES``) and their solver, protocols
(``PROTOCOLS``: transfer, robustness) and statistics over the tidy result rows."""

from richrep.evaluation.probes import LinearProbe, NearestMeanProbe

__all__ = ["LinearProbe", "NearestMeanProbe"]
