"""Typed result rows: one measurement each, tidy. ``metric`` is a dimension (accuracy,
worst-group accuracy, an interval bound, mAP…), with room for a group, an episode and an
environment, so a protocol that reports more than accuracy is aggregated, tabled and plotted
like any other. Rows are written as JSON lines (one object per row)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from richrep.errors import StoreError

ROW_VERSION = 2


@dataclass(frozen=True)
class Row:
    """One measurement of one representation on one target."""

    run: str  # run id (<name>-<hash>)
    entry: str  # suite entry name
    protocol: str  # protocol name (transfer, robustness, …)
    representation: str  # kind: input, random, single, cat, wide, wide_dim, joint, distill, …
    column: str  # the table column, e.g. single, cat5, wide5, random5
    k: int  # the K it stands for (seeds concatenated, or the catK a baseline matches)
    seeds: tuple[int, ...]
    dim: int  # feature dimension
    params: int  # encoder parameters
    metric: str  # accuracy, worst_group_accuracy, …
    value: float
    n: int  # test examples the value is measured on
    shift: str = "none"  # the target's shifts, as labels
    size: int | str = "all"  # probe training examples per class ("all": every one)
    draw: int = 0  # which random draw of the probe's training examples
    train_n: int | None = None  # examples the probe (or head) was fit on
    group: str | None = None
    episode: int | None = None
    environment: str | None = None
    variant: str | None = None  # what runs on top of the representation (e.g. "irm · oracle")
    extra: dict[str, Any] = field(default_factory=dict)  # protocol-specific: C, converged, …

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        names = _FIELDS
        missing = sorted(n for n in _REQUIRED if n not in d)
        if missing:
            raise StoreError(
                f"a result row lacks {missing}: it was written by an older richrep; "
                f"rerun the evaluation (richrep run … --only evaluate)"
            )
        extra = dict(d.get("extra") or {})
        extra.update({k: v for k, v in d.items() if k not in names})
        kw = {k: v for k, v in d.items() if k in names}
        kw["seeds"] = tuple(kw["seeds"])
        kw["extra"] = extra
        return cls(**kw)

    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A field, or a key of ``extra`` (so rows read like the dicts they are stored as)."""
        if key in _FIELDS:
            return getattr(self, key)
        return self.extra.get(key, default)


_FIELDS = {f.name for f in dataclasses.fields(Row)}
_REQUIRED = [
    f.name
    for f in dataclasses.fields(Row)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]


def count(n: int | None) -> str:
    """A row's parameter count (``Row.params``) short, as the tables and the advice show it:
    0, 12k, 1.25M."""
    if not n:
        return "0"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)
