"""The ``compatibility`` protocol: can a new model replace an old one without re-encoding the
gallery? (Shen et al., CVPR 2020, "Towards Backward-Compatible Representation Learning".)

The gallery (the target's labelled training data) is encoded by the ``old`` representation,
the queries (its test split) by each evaluated — *new* — representation, and retrieval is by
cosine similarity (:mod:`.retrieval`). Which of the new features are compared with the old
ones: when the new representation contains all of the old one's networks (cat(K+1) built by
adding a seed to catK) those networks' features — the old blocks, unchanged; otherwise its first
``dim(old)`` features (BCT's whole vector, BT²'s compatible subspace, an unrelated model's
prefix). ``variant`` records the relation: ``same`` (the old representation itself),
``extends`` (contains it) or ``other``.

Rows per new representation: ``top1`` and ``map`` (at ``top``) for new/new, new/old (queries
new, gallery old) and old/old; ``compatible``, the empirical compatibility criterion
M(new, old) > M(old, old) on top-1 (1 or 0; equality, e.g. the old model itself, is not
compatible: nothing was gained); ``compatibility_margin`` = M(new, old) − M(old, old), the
criterion's margin (0 for an upgrade that keeps the old features, negative for one that
retrieves worse than not upgrading).

``sequences`` (name → representations, oldest first) adds, once per entry, each sequence's
cross-model matrix ``cross_top1`` (queries by model i, gallery by model j ≤ i) and its
average compatibility AC = mean over j < i of 1[M(i, j) > M(j, j)] and average multi-model
accuracy AM = mean over j ≤ i of M(i, j) (Biondi et al., 2023, "CoReS: Compatible
Representations via Stationarity"). Representations are named by table column, id
(``cat2[0,1]``, ``single1[0]``), member name (``bct-s1``), or ``catK[seeds]`` for any subset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from richrep.config import SuiteEntry
from richrep.data import Split, Task
from richrep.errors import ConfigError
from richrep.evaluation.protocols import Context
from richrep.evaluation.retrieval import Backend, scores, search
from richrep.plugins import PROTOCOLS
from richrep.representations import Representation
from richrep.results import Row


def find_representation(name: str, reps: Sequence[Representation]) -> Representation:
    """A representation by id, column (the first), member name, or ``catK[s1,...]`` built
    from the run's single seeds."""
    for r in reps:
        if name == r.id:
            return r
    for r in reps:
        if name == r.column or r.parts == (name,):
            return r
    m = re.fullmatch(r"cat(\d+)\[([\d, ]+)\]", name.strip())
    singles = {r.seeds[0]: r for r in reps if r.kind == "single"}
    if m:
        seeds = tuple(int(s) for s in m.group(2).split(","))
        if len(seeds) == int(m.group(1)) and all(s in singles for s in seeds):
            parts = [singles[s] for s in seeds]
            return Representation(
                "cat" if len(seeds) > 1 else "single",
                len(seeds),
                seeds,
                tuple(p.parts[0] for p in parts),
                sum(p.dim for p in parts),
                sum(p.params for p in parts),
            )
    have = sorted({r.id for r in reps} | {r.column for r in reps})
    raise ConfigError(
        f"compatibility: no representation {name!r}; the run has {have} (or write "
        f"catK[seeds] with trained seeds {sorted(singles)})"
    )


def relation(new: Representation, old: Representation) -> str:
    if new.parts == old.parts:
        return "same"
    if old.parts and set(old.parts) <= set(new.parts):
        return "extends"
    return "other"


class Encoded:
    """Features of the gallery and the queries per representation, computed once."""

    def __init__(self, ctx: Context, gallery: Split, queries: Split) -> None:
        self.ctx, self.gallery, self.queries = ctx, gallery, queries
        self._g: dict[str, torch.Tensor] = {}
        self._q: dict[str, torch.Tensor] = {}

    def g(self, rep: Representation) -> torch.Tensor:
        if rep.id not in self._g:
            self._g[rep.id] = self.ctx.featurizer(rep, self.gallery)
        return self._g[rep.id]

    def q(self, rep: Representation) -> torch.Tensor:
        if rep.id not in self._q:
            self._q[rep.id] = self.ctx.featurizer(rep, self.queries)
        return self._q[rep.id]

    def q_against(self, new: Representation, old: Representation) -> torch.Tensor:
        """The new representation's query features that are compared with the old gallery."""
        if relation(new, old) != "other":
            return self.q(old)  # the old networks' own blocks of the new representation
        if new.dim < old.dim:
            raise ConfigError(
                f"compatibility: {new.id} has {new.dim} features, fewer than the old "
                f"{old.id}'s {old.dim}; it cannot be compared with the old gallery"
            )
        return self.q(new)[:, : old.dim]


def cross_top1_matrix(
    enc: Encoded, models: Sequence[Representation], top: int, backend: Backend
) -> np.ndarray:
    """M[i, j] (j ≤ i): top-1 with queries by ``models[i]``, gallery by ``models[j]``; NaN
    above the diagonal."""
    t = len(models)
    out = np.full((t, t), np.nan)
    gy, qy = enc.gallery.y, enc.queries.y
    for i, new in enumerate(models):
        for j, old in enumerate(models[: i + 1]):
            nb = search(enc.q_against(new, old), enc.g(old), 1, backend)
            out[i, j] = scores(nb, gy, qy)["top1"]
    return out


def average_compatibility(m: np.ndarray) -> float:
    """AC: the fraction of pairs j < i whose cross-model top-1 beats model j's own."""
    t = len(m)
    pairs = [(i, j) for i in range(t) for j in range(i)]
    return float(np.mean([m[i, j] > m[j, j] for i, j in pairs])) if pairs else float("nan")


def average_multi_model_accuracy(m: np.ndarray) -> float:
    """AM: the mean cross-model top-1 over all pairs j ≤ i (the diagonal included)."""
    return float(np.nanmean(m[np.tril_indices(len(m))]))


@PROTOCOLS.register(
    "compatibility",
    metrics=(
        "top1",
        "map",
        "compatible",
        "compatibility_margin",
        "cross_top1",
        "average_compatibility",
        "average_multi_model_accuracy",
    ),
    vs_k=False,
    description="old gallery, new queries: cross-model retrieval and compatibility criteria",
)
class Compatibility:
    """Gallery by ``old``, queries by each new representation (``columns``: which; default all
    with at least the old dimension); ``sequences`` of upgrades for AC / AM; mAP at ``top``."""

    def __init__(
        self,
        old: str,
        sequences: dict[str, Annotated[list[str], Field(min_length=2)]] | None = None,
        top: Annotated[int, Field(ge=1)] = 10,
        backend: Backend = "auto",
        columns: list[str] | None = None,
    ) -> None:
        self.old, self.sequences, self.top = old, sequences or {}, top
        self.backend, self.columns = backend, columns
        self._encoded: dict[str, Encoded] = {}
        self._sequences_done: set[str] = set()

    def encoded(self, ctx: Context, target: Task, entry: SuiteEntry) -> Encoded:
        key = f"{entry.name}|{target.hash}"
        if key not in self._encoded:
            self._encoded = {key: Encoded(ctx, ctx.pool(target), target.test)}
        return self._encoded[key]

    def evaluate(
        self, ctx: Context, rep: Representation, target: Task, entry: SuiteEntry
    ) -> list[Row]:
        reps = ctx.representations or [rep]
        old = find_representation(self.old, reps)
        enc = self.encoded(ctx, target, entry)
        rows = self.sequence_rows(ctx, enc, reps, entry)
        rel = relation(rep, old)
        if not rep.chosen(self.columns) or (rel == "other" and rep.dim < old.dim):
            return rows
        gy, qy = enc.gallery.y, enc.queries.y
        found = {
            "new/new": scores(search(enc.q(rep), enc.g(rep), self.top, self.backend), gy, qy),
            "new/old": scores(
                search(enc.q_against(rep, old), enc.g(old), self.top, self.backend), gy, qy
            ),
            "old/old": scores(search(enc.q(old), enc.g(old), self.top, self.backend), gy, qy),
        }
        common: dict[str, Any] = {"size": "all", "draw": 0, "train_n": len(gy)}
        extra = {"old": old.id, "relation": rel, "at": self.top}
        n = len(qy)
        for pair, values in found.items():
            for metric, value in values.items():
                variant = f"{pair} · {rel}"
                rows.append(
                    ctx.row(entry, rep, metric, value, n, variant=variant, **common, extra=extra)
                )
        cross, base = found["new/old"]["top1"], found["old/old"]["top1"]
        for metric, value in (
            ("compatible", float(cross > base)),
            ("compatibility_margin", cross - base),
        ):
            rows.append(ctx.row(entry, rep, metric, value, n, variant=rel, **common, extra=extra))
        return rows

    def sequence_rows(
        self, ctx: Context, enc: Encoded, reps: Sequence[Representation], entry: SuiteEntry
    ) -> list[Row]:
        """Each sequence's matrix, AC and AM, once per entry (with the first representation)."""
        rows: list[Row] = []
        for name, seq in self.sequences.items():
            key = f"{entry.name}|{name}"
            if key in self._sequences_done:
                continue
            self._sequences_done.add(key)
            models = [find_representation(s, reps) for s in seq]
            m = cross_top1_matrix(enc, models, self.top, self.backend)
            last, n = models[-1], len(enc.queries)
            common: dict[str, Any] = {"size": "all", "draw": 0, "train_n": len(enc.gallery)}
            for i, new in enumerate(models):
                for j, old in enumerate(models[: i + 1]):
                    extra = {"sequence": name, "i": i, "j": j, "queries": new.id, "gallery": old.id}
                    rows.append(
                        ctx.row(
                            entry,
                            last,
                            "cross_top1",
                            m[i, j],
                            n,
                            variant=f"{name}: {new.id} → {old.id}",
                            **common,
                            extra=extra,
                        )
                    )
            extra = {"sequence": name, "models": [r.id for r in models]}
            for metric, value in (
                ("average_compatibility", average_compatibility(m)),
                ("average_multi_model_accuracy", average_multi_model_accuracy(m)),
            ):
                rows.append(
                    ctx.row(entry, last, metric, value, n, variant=name, **common, extra=extra)
                )
        return rows
