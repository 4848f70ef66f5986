"""Which targets ``richrep advise`` answers for: one per suite entry (its headline: no group or
environment, no variant, the largest training size), or the one the user names."""

from __future__ import annotations

import math
from collections.abc import Sequence

from richrep.errors import ConfigError
from richrep.results import Row

SEED_KINDS = ("single", "cat")  # the representations made of seeds: the curve's points


def target_key(r: Row) -> tuple:
    return (r.entry, r.protocol, r.shift, str(r.size), r.group, r.environment, r.variant)


def target_label(key: tuple) -> str:
    entry, protocol, _shift, size, group, env, variant = key
    parts = [entry, protocol, "all" if size == "all" else f"{size}/class"]
    parts += [] if variant is None else [variant]
    parts += [] if group is None else [f"group {group}"]
    parts += [] if env is None else [f"env {env}"]
    return " · ".join(parts)


def _size_rank(size: str) -> float:
    try:
        return float(size)
    except ValueError:
        return math.inf


def headline_targets(rows: Sequence[Row], order: Sequence[str] = ()) -> list[tuple]:
    """One target per entry (``order`` first): no group or environment where there is such a
    row, no variant (else the last), the largest training size; seeds measured, if any."""
    keys = list(dict.fromkeys(map(target_key, rows)))
    seeded = set(map(target_key, (r for r in rows if r.representation in SEED_KINDS)))
    entries = list(order) + [e for e in dict.fromkeys(k[0] for k in keys) if e not in order]
    out = []
    for e in entries:
        mine = [k for k in keys if k[0] == e]
        mine = [k for k in mine if k in seeded] or mine
        mine = [k for k in mine if k[4] is None and k[5] is None] or mine
        plain = [k for k in mine if k[6] is None]
        if not plain and mine:
            plain = [k for k in mine if k[6] == mine[-1][6]]
        if plain:
            out.append(max(plain, key=lambda k: _size_rank(k[3])))
    return out


def select_targets(rows: Sequence[Row], target: str | None, order: Sequence[str]) -> list[tuple]:
    """The headline target of each entry, of entry ``target``, or the target labelled so."""
    heads = headline_targets(rows, order)
    if target is None:
        return heads
    hits = [k for k in heads if k[0] == target]
    hits = hits or [
        k for k in dict.fromkeys(target_key(r) for r in rows) if target_label(k) == target
    ]
    if not hits:
        have = sorted({k[0] for k in heads})
        raise ConfigError(f"no target {target!r} in the run's results; its entries are {have}")
    return hits
