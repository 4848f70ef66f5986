"""Domains as data: ``rotated_domains``, DomainBed's RotatedMNIST construction (Ghifary et al.
2015; Gulrajani & Lopez-Paz, ICLR 2021) on any registered image dataset.

The training pool of the base dataset is shuffled (seeded) and cut into one disjoint slice per
angle (default 0°, 15°, 30°, 45°, 60°, 75°); every image of a slice is rotated by its angle
(bilinear, zero fill, about the centre). The base test set is cut the same way, so each domain
has its own test examples. ``holdout`` (20 %, DomainBed's ``out`` split) of each domain's pool
is the validation split: training-domain validation reads only those. Every example records
its domain (``Split.env``); ``recipe["info"]["environments"]`` names them (``0°``, ``15°``…).
``per_domain`` / ``test_per_domain`` cap each slice (CPU budgets).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.data.datasets import DATASETS, RawData
from richrep.data.splits import rng
from richrep.errors import ConfigError, DataError

ANGLES = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0)


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Images ``(N, C, H, W)`` rotated by ``degrees`` (counter-clockwise), bilinear, zero fill."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if degrees % 360 == 0 or len(t) == 0:
        return t.numpy()
    a = math.radians(degrees)
    mat = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    out = []
    for xs in t.split(8192):
        grid = F.affine_grid(mat.expand(len(xs), 2, 3), list(xs.shape), align_corners=False)
        out.append(
            F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    return torch.cat(out).clamp_(0.0, 1.0).numpy()


def domain_slices(
    n: int, domains: int, cap: int | None, g: np.random.Generator
) -> list[np.ndarray]:
    """``domains`` disjoint random slices of ``range(n)`` (each at most ``cap`` long)."""
    parts = np.array_split(g.permutation(n), domains)
    return [np.sort(p[:cap] if cap is not None else p) for p in parts]


def environments(angles: list[float]) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"{a:g}°", "angle": a, "role": "domain"} for i, a in enumerate(angles)
    ]


@DATASETS.register("rotated_domains")
def rotated_domains(
    base: str = "fashion_mnist",
    base_params: dict[str, Any] | None = None,
    angles: Annotated[list[float], Field(min_length=1)] = list(ANGLES),  # noqa: B006
    per_domain: Annotated[int, Field(ge=2)] | None = None,
    test_per_domain: Annotated[int, Field(ge=1)] | None = None,
    holdout: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    seed: Annotated[int, Field(ge=0)] = 0,
) -> RawData:
    """DomainBed's rotated domains of the image dataset ``base``: one disjoint slice of its
    examples per angle in ``angles``, rotated by it; ``holdout`` of each domain's training
    pool is validation; ``per_domain`` / ``test_per_domain`` cap the slices."""
    if len(set(angles)) != len(angles):
        raise ConfigError(f"rotated_domains: angles repeat ({angles}); each domain needs its own")
    if base == "rotated_domains":
        raise ConfigError("rotated_domains: base must be another dataset")
    raw = DATASETS.build(base, where="rotated_domains.base_params", **(base_params or {}))
    x_pool = np.asarray(raw.x_train)
    if raw.kind != "image" or x_pool.ndim != 4:
        raise DataError(
            f"rotated_domains: base {base!r} holds {raw.kind}s of shape {x_pool.shape[1:]}; "
            f"rotation needs images (N, C, H, W)"
        )
    n_dom = len(angles)
    if len(x_pool) < 2 * n_dom or len(raw.y_test) < n_dom:
        raise DataError(
            f"rotated_domains: {len(x_pool)} training and {len(raw.y_test)} test examples of "
            f"{base!r} are too few for {n_dom} domains"
        )
    g = rng(seed, "rotated_domains", base)
    div = raw.divide_by or 1.0
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "y", "e", "xt", "yt", "et", "val")}
    start = 0
    train_slices = domain_slices(len(x_pool), n_dom, per_domain, g)
    test_slices = domain_slices(len(raw.y_test), n_dom, test_per_domain, g)
    x_test = np.asarray(raw.x_test)
    for i, (a, tr, te) in enumerate(zip(angles, train_slices, test_slices, strict=True)):
        out["x"].append(rotate(x_pool[tr] / div, a))
        out["y"].append(np.asarray(raw.y_train)[tr])
        out["e"].append(np.full(len(tr), i, dtype=np.int64))
        out["val"].append(
            start + np.sort(g.permutation(len(tr))[: max(1, round(holdout * len(tr)))])
        )
        start += len(tr)
        out["xt"].append(rotate(x_test[te] / div, a))
        out["yt"].append(np.asarray(raw.y_test)[te])
        out["et"].append(np.full(len(te), i, dtype=np.int64))
    cat = {k: np.concatenate(v) for k, v in out.items()}
    info = {**raw.info, "environments": environments([float(a) for a in angles])}
    info["domains"] = [e["name"] for e in info["environments"]]
    return RawData(
        cat["x"],
        cat["y"],
        cat["xt"],
        cat["yt"],
        kind="image",
        class_names=raw.class_names,
        e_train=cat["e"],
        e_test=cat["et"],
        val_index=cat["val"],
        info=info,
    )
