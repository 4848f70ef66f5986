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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from richrep.errors import ConfigError
from richrep.registry import BROKEN_PLUGINS, Registry, did_you_mean

OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective")
MEMBERS: Registry[Callable[..., Any]] = Registry("member kind")
PROBES: Registry[Callable[..., Any]] = Registry("probe")
PROTOCOLS: Registry[Callable[..., Any]] = Registry("protocol")
FLOORS: Registry[Callable[..., Any]] = Registry("floor")
ENGINES: Registry[Callable[..., Any]] = Registry("engine")

BUILTIN_PLUGINS = (
    "richrep.data.arrays",
    "richrep.data.augment",
    "richrep.data.digits",
    "richrep.data.fashion_mnist",
    "richrep.data.image_folder",
    "richrep.data.mnist1d",
    "richrep.data.shifts",
    "richrep.models.encoders",
    "richrep.models.resnet",
    "richrep.objectives",
    "richrep.members",
    "richrep.evaluation.probe_entries",
    "richrep.evaluation.protocols",
    "richrep.evaluation.few_shot",
    "richrep.evaluation.finetune",
    "richrep.evaluation.ood",
    "richrep.evaluation.disambiguate",
    "richrep.evaluation.continual",
    "richrep.evaluation.truncation",
    "richrep.evaluation.retrieval",
    "richrep.evaluation.compatibility",
    "richrep.representations.floors",
    "richrep.training.engines",
    "richrep.analysis.measures",
)
_LOADED = [False]


def load_plugins() -> None:
    """Import the built-in plug-in modules and those of installed packages (entry-point group
    ``richrep.plugins``); each registers its entries on import. Idempotent. A plug-in that
    fails to import, or registers a name richrep or an earlier plug-in has, is left out with
    a warning naming it and its package (what it registered is removed): an experiment that
    needs it fails where it names it."""
    if _LOADED[0]:
        return
    _LOADED[0] = True
    for name in BUILTIN_PLUGINS:
        importlib.import_module(name)
    from importlib.metadata import entry_points

    for ep in entry_points(group="richrep.plugins"):
        _load_plugin(ep)


def _load_plugin(ep: Any) -> None:
    before = {id(r): set(r.names()) for r in Registry.instances}
    try:
        ep.load()
    except Exception as e:  # noqa: BLE001 - any failure of a third-party import is reported
        for r in Registry.instances:
            for name in set(r.names()) - before.get(id(r), set()):
                r.unregister(name)
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown package"
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        line = f"plug-in {ep.name!r} ({ep.value}, from {dist}) was not loaded: {why}"
        BROKEN_PLUGINS.append(line)
        warnings.warn(f"{line}; going on without it", RuntimeWarning, stacklevel=3)


def all_registries() -> dict[str, Registry[Any]]:
    """Kind (plural, as ``richrep list`` spells it) -> registry, plug-ins loaded."""
    load_plugins()
    from richrep.analysis.measures import MEASURES
    from richrep.data.augment import AUGMENTATIONS
    from richrep.data.datasets import DATASETS
    from richrep.data.shifts import SHIFTS
    from richrep.models.encoders import ENCODERS

    return {
        "datasets": DATASETS,
        "shifts": SHIFTS,
        "augmentations": AUGMENTATIONS,
        "encoders": ENCODERS,
        "objectives": OBJECTIVES,
        "members": MEMBERS,
        "probes": PROBES,
        "protocols": PROTOCOLS,
        "floors": FLOORS,
        "engines": ENGINES,
        "measures": MEASURES,
    }


def registry_of(kind: str) -> Registry[Any]:
    regs = all_registries()
    if kind not in regs:
        raise ConfigError(
            f"unknown registry {kind!r}{did_you_mean(kind, list(regs))}; "
            f"choose one of: {', '.join(sorted(regs))}"
        )
    return regs[kind]


@dataclass(frozen=True)
class Display:
    """How a representation kind shows in tables and plots."""

    kind: str
    label: str  # a format with {k}, e.g. "wide{k}"
    order: int
    marker: str = "o"
    color: str | None = None
    description: str = ""
    floor: bool = False  # drawn as a horizontal line (input, random)
    line: bool = False  # drawn as a line over K (single and catK)

    def column(self, k: int) -> str:
        return self.label.format(k=k)


CAT = Display(
    "cat",
    "cat{k}",
    30,
    "o",
    "tab:blue",
    "K seeds' penultimate features concatenated (Zhang & Bottou, ICML 2023)",
    line=True,
)


def display(kind: str) -> Display:
    """The display of a representation kind: ``cat``, a member kind or a floor."""
    load_plugins()
    if kind == "cat":
        return CAT
    for reg, floor in ((MEMBERS, False), (FLOORS, True)):
        if kind in reg:
            e = reg.entry(kind)
            m = e.meta
            return Display(
                kind,
                m.get("label", kind + "{k}"),
                int(m.get("order", 90)),
                m.get("marker", "o"),
                m.get("color"),
                m.get("description", e.summary),
                floor=floor,
                line=bool(m.get("line", False)),
            )
    return Display(kind, kind + "{k}", 99)
