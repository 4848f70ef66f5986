"""Every registry of richrep in one map, and the plug-in loader.

The registries of the later stages (objectives, member kinds, probes, protocols, floors,
engines) are created here, at the bottom of the package, so the experiment schema can be
validated against them without importing the stages: plug-in modules import the registry
they extend and register into it. Built-in plug-ins and third-party ones (the
``richrep.plugins`` entry-point group) are imported by :func:`load_plugins`.

Representation kinds (the columns of every table) draw their display from their registry
entry: ``label`` (a format with ``{k}``), ``order``, ``marker``, ``color``, ``description``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from typing import Any

from richrep.errors import ConfigError
from richrep.registry import CATALOGUE, Registry, did_you_mean

OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective")
MEMBERS: Registry[Callable[..., Any]] = Registry("member kind", plural="members")
PROBES: Registry[Callable[..., Any]] = Registry("probe")
PROTOCOLS: Registry[Callable[..., Any]] = Registry("protocol")
FLOORS: Registry[Callable[..., Any]] = Registry("floor")
ENGINES: Registry[Callable[..., Any]] = Registry("engine")

# Packages whose modules register built-in plug-ins: every module in them is imported once by
# load_plugins, so a new built-in is one file and one registration (no list to edit).
PLUGIN_PACKAGES = (
    "richrep.data",
    "richrep.models",
    "richrep.objectives",
    "richrep.members",
    "richrep.evaluation",
    "richrep.representations",
    "richrep.training.engines",
    "richrep.analysis",
    "richrep.report.figures",
)
_LOADED = [False]


def load_plugins() -> None:
    """Import the built-in plug-in modules and those of installed packages (entry-point group
    ``richrep.plugins``); each registers its entries on import. Idempotent."""
    if _LOADED[0]:
        return
    _LOADED[0] = True
    for name in builtin_modules():
        importlib.import_module(name)
    from importlib.metadata import entry_points

    for ep in entry_points(group="richrep.plugins"):
        ep.load()


def builtin_modules() -> list[str]:
    """Every module of :data:`PLUGIN_PACKAGES` (found on disk, imported by nobody here)."""
    out = []
    for package in PLUGIN_PACKAGES:
        spec = importlib.util.find_spec(package)
        paths = spec.submodule_search_locations if spec else None
        out.append(package)
        out += [m.name for m in pkgutil.walk_packages(paths or [], package + ".")]
    return out


LISTING_ORDER = (
    "datasets",
    "shifts",
    "augmentations",
    "encoders",
    "objectives",
    "members",
    "probes",
    "protocols",
    "floors",
    "engines",
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
