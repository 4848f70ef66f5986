"""Result rows as a pandas DataFrame (pandas is optional: ``pip install 'richrep[data]'``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from richrep.results.rows import Row

NEEDS_PANDAS = (
    "the results as a DataFrame need pandas, an optional dependency of richrep: "
    "pip install 'richrep[data]' (or pip install pandas)"
)


def rows_frame(rows: Iterable[Row]) -> Any:
    """One DataFrame row per result row: the :class:`Row` fields (``seeds`` a tuple), then the
    keys of ``extra`` (a field's own value wins a clash)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(NEEDS_PANDAS) from e
    fields = [f.name for f in dataclasses.fields(Row) if f.name != "extra"]
    records = []
    for r in rows:
        d = {name: getattr(r, name) for name in fields}
        for k, v in r.extra.items():
            d.setdefault(k, v)
        records.append(d)
    columns = list(dict.fromkeys([*fields, *(k for d in records for k in d)]))
    return pd.DataFrame.from_records(records, columns=columns)
