"""Result rows and the statistics computed from them: :mod:`.rows` (typed, tidy rows, one
measurement each) and :mod:`.stats` (means, intervals and paired differences over what varied)."""

from richrep.results.rows import ROW_VERSION, Row

__all__ = ["ROW_VERSION", "Row"]
