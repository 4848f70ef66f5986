"""Figures of the report that a plug-in may add: a protocol's own figure (:mod:`.protocols`,
registry ``FIGURES`` keyed by protocol name)."""
