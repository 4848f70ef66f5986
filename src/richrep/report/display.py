"""How a representation kind shows in tables and plots, drawn from its registry entry
(``label``, ``order``, ``marker``, ``color``, ``description``, ``line``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from richrep.plugins import FLOORS, MEMBERS, load_plugins


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


@functools.lru_cache(maxsize=256)
def kind_display(kind: str) -> Display:
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
