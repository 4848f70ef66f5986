"""Result rows as a pandas DataFrame (pandas is optional: ``pip install 'richrep[data]'``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from richrep.errors import ConfigError, StoreError
from richrep.results.rows import Row
from richrep.store import read_jsonl

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


def results_frame(path: Path, entry: str | Sequence[str] | None = None) -> Any:
    """The rows of a run's ``results.jsonl`` (checked against its sha256) as a DataFrame
    (:func:`rows_frame`); ``entry``: only this entry (or these)."""
    if not path.exists():
        raise StoreError(
            f"{path.parent} has no results.jsonl yet; run `richrep run` (or `richrep evaluate "
            "RUN`) first"
        )
    rows = [Row.from_dict(d) for d in read_jsonl(path)]
    if entry is not None:
        names = [entry] if isinstance(entry, str) else list(entry)
        have = sorted({r.entry for r in rows})
        unknown = sorted(set(names) - set(have))
        if unknown:
            raise ConfigError(f"no entry {unknown} in {path.parent}; it has {have}")
        rows = [r for r in rows if r.entry in names]
    return rows_frame(rows)
