"""Floors (``FLOORS``): representations every comparison needs, to show what training adds —
``input`` (the raw input, flattened) and ``random`` (catK of the same encoders, untrained).

A floor plans its representations from the run's trained seeds and names the encoders (parts)
it introduces; the run builds those encoders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from richrep.plugins import FLOORS
from richrep.representations import Representation, Trained


@FLOORS.register(
    "input",
    label="input",
    order=0,
    marker="_",
    color="0.35",
    description="the raw input, flattened",
)
class InputFloor:
    """The raw input, flattened: what a probe gets without any encoder."""

    def representations(
        self, singles: Sequence[Trained], ctx: Mapping[str, Any]
    ) -> list[Representation]:
        return [Representation("input", 0, (), ("input",), int(ctx.get("input_dim", 0)), 0)]


@FLOORS.register(
    "random",
    label="random{k}",
    order=10,
    marker="x",
    color="0.55",
    description="catK of the same encoders, untrained",
)
class RandomFloor:
    """catK of the seeds' encoders as initialized, before any training (same seeds)."""

    def representations(
        self, singles: Sequence[Trained], ctx: Mapping[str, Any]
    ) -> list[Representation]:
        if not singles:
            return []
        return [
            Representation(
                "random",
                len(singles),
                tuple(s.seed for s in singles),
                tuple(f"random-{s.name}" for s in singles),
                sum(s.feature_dim for s in singles),
                sum(s.encoder_params for s in singles),
            )
        ]
