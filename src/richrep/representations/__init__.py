"""Representations: what a probe sees. ``single`` (one seed's penultimate features), ``cat``
(K seeds' features concatenated, Zhang & Bottou 2023), one per trained baseline member
(``wide``, ``wide_dim``, ``joint``, ``distill``, …), and the floors every comparison needs
(``FLOORS``: ``input``, ``random``).

A representation is a list of *parts* (encoders, by name) whose features are concatenated;
features are extracted once per (part, data) and cached (:mod:`.features`), so catK never
extracts a seed twice, whatever K or subset.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from richrep.data.splits import rng
from richrep.errors import ConfigError
from richrep.plugins import FLOORS, MEMBERS, column_label, load_plugins


@dataclass(frozen=True)
class Representation:
    """A named way to turn inputs into features.

    ``parts`` are the encoders (by name) whose features are concatenated; ``params`` counts
    their parameters, ``dim`` the features."""

    kind: str  # single | cat | a member kind | a floor
    k: int
    seeds: tuple[int, ...]
    parts: tuple[str, ...]
    dim: int
    params: int
    label: str = field(default="")
    tag: str = ""  # tells members of one kind and K apart (MemberKind.tag)

    @property
    def column(self) -> str:
        """The table column: ``single``, ``cat5``, ``wide5``, ``random5``, ``diverse2-test``…"""
        col = column_label(self.kind, self.k)
        return f"{col}-{self.tag}" if self.tag else col

    def chosen(self, columns: Sequence[str] | None) -> bool:
        """Whether a protocol's ``columns`` option (table columns or ids; None: all) picks it."""
        return columns is None or self.column in columns or self.id in columns

    @property
    def id(self) -> str:
        kind = f"{self.kind}{self.k}" + (f"-{self.tag}" if self.tag else "")
        return self.label or f"{kind}[{','.join(map(str, self.seeds))}]"


def seed_subsets(
    seeds: Sequence[int], k: int, n_subsets: int, seed: int = 0
) -> list[tuple[int, ...]]:
    """Seed subsets of size ``k`` for catK: disjoint groups first (a shuffled partition), then
    distinct random subsets, up to ``n_subsets``; all of them when K equals the seed count."""
    seeds = list(seeds)
    if k >= len(seeds):
        return [tuple(seeds)]
    g = rng(seed, "subsets", k)
    order = [seeds[i] for i in g.permutation(len(seeds))]
    chosen = [tuple(sorted(order[i * k : (i + 1) * k])) for i in range(len(seeds) // k)][:n_subsets]
    all_sets = [c for c in itertools.combinations(sorted(seeds), k) if c not in chosen]
    for i in g.permutation(len(all_sets)):
        if len(chosen) >= n_subsets:
            break
        chosen.append(all_sets[i])
    return chosen


@dataclass(frozen=True)
class Trained:
    """A finished member as the representations see it."""

    name: str
    kind: str
    k: int
    seed: int
    feature_dim: int
    encoder_params: int
    tag: str = ""


def is_representation(kind: str) -> bool:
    """Whether a member kind's networks are representations (not training scaffolding, such as
    RFC's rounds: registered with ``representation=False``)."""
    load_plugins()
    return bool(MEMBERS.meta(kind, "representation", True))


@runtime_checkable
class Floor(Protocol):
    """What a floor (``FLOORS``) is: it plans its representations from the run's trained seeds
    (``ctx``: facts of the run, e.g. ``input_dim``) and names the encoders (parts) it introduces.
    Structural: a plug-in implements it without subclassing."""

    def representations(
        self, singles: Sequence[Trained], ctx: Mapping[str, Any]
    ) -> list[Representation]: ...


def build_floors(specs: Sequence[Any]) -> list[Floor]:
    """The floors of ``evaluation.floors`` (specs with ``name`` and ``params``) built; a clear
    error naming the entry when a registered floor has no ``representations`` method."""
    out = []
    for i, spec in enumerate(specs):
        where = f"evaluation.floors[{i}]"
        floor = FLOORS.build(spec.name, where=where, **spec.params)
        if not isinstance(floor, Floor):
            raise ConfigError(
                f"{where}: floor {spec.name!r} ({type(floor).__name__}) has no "
                f"representations(singles, ctx) method"
            )
        out.append(floor)
    return out


def plan_representations(
    trained: Sequence[Trained],
    *,
    subsets: int,
    seed: int = 0,
    floors: Sequence[Floor] = (),
    floor_context: Mapping[str, Any] | None = None,
) -> list[Representation]:
    """Every representation of a run: floors, each single, catK subsets for K = 2..N, then one
    per trained member of another kind. ``trained`` are the finished members (failed ones are
    left out, so catK draws only from the seeds that trained); ``floors`` are floor objects
    (:mod:`.floors`)."""
    singles = {t.seed: t for t in trained if t.kind == "single"}
    seeds = sorted(singles)
    reps: list[Representation] = []
    for f in floors:
        reps += f.representations([singles[s] for s in seeds], floor_context or {})
    for k in range(1, len(seeds) + 1):
        for sub in seed_subsets(seeds, k, len(seeds) if k == 1 else subsets, seed):
            reps.append(
                Representation(
                    "single" if k == 1 else "cat",
                    k,
                    sub,
                    tuple(singles[s].name for s in sub),
                    sum(singles[s].feature_dim for s in sub),
                    sum(singles[s].encoder_params for s in sub),
                )
            )
    for t in trained:
        if t.kind != "single" and is_representation(t.kind):
            reps.append(
                Representation(
                    t.kind, t.k, (t.seed,), (t.name,), t.feature_dim, t.encoder_params, tag=t.tag
                )
            )
    return reps
