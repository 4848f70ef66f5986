"""Evaluation: probes (scikit-learn estimators), protocols (transfer, robustness), the suite
and statistics over the tidy result rows."""

from richrep.evaluation.probes import LinearProbe, NearestMeanProbe
from richrep.evaluation.protocols import PROTOCOLS
from richrep.evaluation.stats import aggregate, summarize

__all__ = ["PROTOCOLS", "LinearProbe", "NearestMeanProbe", "aggregate", "summarize"]
