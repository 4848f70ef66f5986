"""The registries of the later stages, and every registry in one map.

The registries of the later stages (objectives, member kinds, probes, protocols, floors,
engines, trackers) are created here, at the bottom of the package, so the experiment schema
can be validated against them without importing the stages: plug-in modules import the
registry they extend and register into it. Built-in plug-ins and third-party ones (the
``richrep.plugins`` entry-point group) are imported by
:func:`richrep.registry.load_plugins` before any registry is first read.

Representation kinds (the columns of every table) draw their display from their registry
entry: ``label`` (a format with ``{k}``), ``order``, ``marker``, ``color``, ``description``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from richrep.errors import ConfigError
from richrep.registry import CATALOGUE, Registry, did_you_mean, load_plugins

OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective")
MEMBERS: Registry[Callable[..., Any]] = Registry("member kind", plural="members")
# a probe's validation-split seed and device come from the run unless its spec sets them
PROBES: Registry[Callable[..., Any]] = Registry("probe", filled=("random_state", "device"))
PROTOCOLS: Registry[Callable[..., Any]] = Registry("protocol")
FLOORS: Registry[Callable[..., Any]] = Registry("floor")
ENGINES: Registry[Callable[..., Any]] = Registry("engine")
TRACKERS: Registry[Callable[..., Any]] = Registry("tracker")
# methods of the domain_generalization protocol (ERM, ensembles, soups, DiWA, …)
DG_METHODS: Registry[Callable[..., Any]] = Registry("dg method", plural="dg_methods")

LISTING_ORDER = (
    "datasets",
    "shifts",
    "augmentations",
    "encoders",
    "objectives",
    "members",
    "probes",
    "protocols",
    "dg_methods",
    "floors",
    "engines",
    "trackers",
    "measures",
)


def all_registries() -> dict[str, Registry[Any]]:
    """Kind (plural, as ``richrep list`` spells it) -> registry, plug-ins loaded: every
    registry created so far (:data:`richrep.registry.CATALOGUE`), in listing order."""
    load_plugins()
    rank = {kind: i for i, kind in enumerate(LISTING_ORDER)}
    return dict(sorted(CATALOGUE.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def registry_of(kind: str) -> Registry[Any]:
    regs = all_registries()
    if kind not in regs:
        raise ConfigError(
            f"unknown registry {kind!r}{did_you_mean(kind, list(regs))}; "
            f"choose one of: {', '.join(sorted(regs))}"
        )
    return regs[kind]


def column_label(kind: str, k: int) -> str:
    """The table column of a representation of ``kind`` standing for K = ``k``: the kind's
    registry ``label`` (a format with ``{k}``, e.g. ``wide{k}``); ``cat{k}`` for catK."""
    load_plugins()
    if kind == "cat":
        return f"cat{k}"
    for reg in (MEMBERS, FLOORS):
        if kind in reg:
            return str(reg.entry(kind).meta.get("label", kind + "{k}")).format(k=k)
    return f"{kind}{k}"
