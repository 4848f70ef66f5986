"""How a run was made: the overrides of its last command and the sweeps it belongs to, kept
in its folder as ``overrides.json`` (written only for runs made with overrides or by a sweep).

``{"experiment": file, "overrides": [...], "sweeps": [{"id", "keys", "values", "index",
"of", "started"}]}``: a sweep's ``values`` are its combination for this run (swept key → value),
``index`` its place among the ``of`` combinations. A run folder shared by two sweeps lists both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from richrep.errors import StoreError
from richrep.store import read_json, write_json

ORIGIN = "overrides.json"


@dataclass(frozen=True)
class Origin:
    """What to record of how an experiment was made: its ``overrides``, the ``sweep`` it runs
    in (id, keys, values, index, of, started) and the ``experiment`` file."""

    overrides: Sequence[str] = ()
    sweep: Mapping[str, Any] | None = None
    experiment: str | None = None


def _sweep(entry: Any) -> dict[str, Any] | None:
    """A well-formed sweep record, or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    keys, values = entry.get("keys"), entry.get("values")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return None
    if not isinstance(values, dict):
        return None
    index, of = entry.get("index"), entry.get("of")
    return {
        "id": entry["id"],
        "keys": keys,
        "values": values,
        "index": index if isinstance(index, int) and not isinstance(index, bool) else None,
        "of": of if isinstance(of, int) and not isinstance(of, bool) else None,
        "started": entry["started"] if isinstance(entry.get("started"), str) else "",
    }


def read_origin(root: Path) -> dict[str, Any]:
    """The record of the run folder ``root`` (empty lists when it has none, or a broken one)."""
    raw: Any = {}
    with contextlib.suppress(FileNotFoundError, StoreError, OSError):
        raw = read_json(Path(root) / ORIGIN)
    raw = raw if isinstance(raw, dict) else {}
    overrides = raw.get("overrides")
    out: dict[str, Any] = {
        "overrides": [o for o in overrides if isinstance(o, str)]
        if isinstance(overrides, list)
        else [],
        "sweeps": [s for e in raw.get("sweeps") or [] if (s := _sweep(e))]
        if isinstance(raw.get("sweeps"), list)
        else [],
    }
    if isinstance(raw.get("experiment"), str):
        out["experiment"] = raw["experiment"]
    return out


def write_origin(root: Path, origin: Origin) -> None:
    """Record ``origin`` in the run folder ``root``: its overrides replace the last command's,
    its sweep joins the others. A run made without either and without a record is left as is."""
    path = Path(root) / ORIGIN
    if not origin.overrides and origin.sweep is None and not path.exists():
        return
    record = read_origin(root)
    record["overrides"] = list(origin.overrides)
    if origin.experiment is not None:
        record["experiment"] = origin.experiment
    if origin.sweep is not None:
        sweep = dict(origin.sweep)
        record["sweeps"] = [s for s in record["sweeps"] if s["id"] != sweep["id"]] + [sweep]
    write_json(path, record)
