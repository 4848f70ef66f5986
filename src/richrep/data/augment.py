"""Train-time augmentations: registered factories of batch transforms.

An entry takes the user's arguments and returns a transform ``(x, generator) -> x`` on a batch
``(B, C, H, W)`` that draws all its randomness from the explicit (CPU) ``torch.Generator``, so a
batch's augmentation is a function of (seed, epoch, step) — the training loop seeds one
generator per model and step. Augmentations shape training only (``training.augment``), never
evaluation. :func:`build_augment` composes a list of specs (``name`` or ``{name: {arg:
value}}``) into one transform, the identity when the list is empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from richrep.errors import ConfigError
from richrep.registry import Registry

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: Registry[Callable[..., Augment]] = Registry("augmentation")
Fraction = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[float, Field(gt=0)]


def _ordered(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"({v[0]}, {v[1]}) must be (low, high)")
    return v


def _need_images(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ConfigError(
            f"augmentation {name!r} applies to image batches (B, C, H, W); got shape "
            f"{tuple(x.shape)}"
        )


@AUGMENTATIONS.register("random_resized_crop")
def random_resized_crop(
    scale: Annotated[tuple[Fraction, Fraction], AfterValidator(_ordered)] = (0.08, 1.0),
    ratio: Annotated[tuple[Positive, Positive], AfterValidator(_ordered)] = (3 / 4, 4 / 3),
) -> Augment:
    """Crop a random box (area fraction in ``scale``, aspect ratio in ``ratio``, log-uniform)
    of each image and resize it back to the image's size (bilinear).

    The box is drawn once per image (no rejection loop: a box larger than the image is
    clipped to it), so a batch costs one ``grid_sample``."""
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _need_images(x, "random_resized_crop")
        b, _, h, w = x.shape
        u = torch.rand(b, 4, generator=g, dtype=torch.float64)
        area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
        r = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
        # box width and height as fractions of the image's (area fraction = fw * fh)
        fw = torch.sqrt(area * r * h / w).clamp(max=1.0)
        fh = torch.sqrt(area / r * w / h).clamp(max=1.0)
        cx = (1 - fw) * (2 * u[:, 2] - 1)  # box centre in [-1, 1] grid units, box inside
        cy = (1 - fh) * (2 * u[:, 3] - 1)
        theta = torch.zeros(b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = fw, cx
        theta[:, 1, 1], theta[:, 1, 2] = fh, cy
        grid = F.affine_grid(
            theta.to(x.device, x.dtype), [b, x.shape[1], h, w], align_corners=False
        )
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    return apply


@AUGMENTATIONS.register("horizontal_flip")
def horizontal_flip(p: Annotated[float, Field(ge=0, le=1)] = 0.5) -> Augment:
    """Mirror each image left-right with probability ``p``."""

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _need_images(x, "horizontal_flip")
        pick = torch.rand(x.shape[0], generator=g) < p
        return torch.where(pick.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)

    return apply


def _spec(spec: Any, where: str) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` of a spec given as a config ``Spec``, a name, ``{name: params}`` or a
    ``(name, params)`` pair."""
    if hasattr(spec, "as_tuple"):
        return spec.as_tuple()
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and len(spec) == 1:
        ((name, params),) = spec.items()
        return str(name), dict(params or {})
    if isinstance(spec, tuple) and len(spec) == 2:
        return str(spec[0]), dict(spec[1] or {})
    raise ConfigError(
        f"{where}: an augmentation is `name` or {{name: {{arg: value}}}}, got {spec!r}"
    )


def build_augment(specs: Sequence[Any], where: str = "training.augment") -> Augment:
    """One transform ``(x, generator) -> x`` applying ``specs`` in order (each validated
    against :data:`AUGMENTATIONS`), all drawing from the one generator; the identity when
    ``specs`` is empty."""
    fns = []
    for i, spec in enumerate(specs):
        name, params = _spec(spec, f"{where}[{i}]")
        AUGMENTATIONS.entry(name, f"{where}[{i}]")  # unknown: the choices, did you mean
        fns.append(AUGMENTATIONS.build(name, where=f"{where}[{i}]", **params))

    def apply(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for fn in fns:
            x = fn(x, g)
        return x

    return apply
