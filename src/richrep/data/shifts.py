"""Shifts: registered, parameterized functions from task to task.

Every shift changes what its name says and nothing else: ``classes`` keeps a subset of classes
(relabelled in the order given), the image corruptions change pixels of every split and keep
labels, and the ``mnist1d_*`` shifts regenerate the same draws with one generator argument
changed. Randomness in a shift derives from the task's seed, the shift and the split, so a
shifted task is reproducible. Corruption severities 1–5 follow the spirit of ImageNet-C
(Hendrycks & Dietterich, ICLR 2019), scaled for 28×28 images.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from richrep.data.images import is_lazy
from richrep.data.splits import hash_str
from richrep.data.task import Split, Task
from richrep.errors import ConfigError, DataError
from richrep.registry import Registry

SHIFTS: Registry[Callable[..., Task]] = Registry("shift", skip=1)
Severity = Annotated[int, Field(ge=1, le=5, description="1 (mild) to 5 (severe)")]


def apply_shift(
    task: Task, name: str, params: dict[str, Any] | None = None, where: str = ""
) -> Task:
    """Apply the registered shift ``name`` and record it in the task's recipe."""
    params = SHIFTS.validate(name, params or {}, where=where)
    out = SHIFTS.entry(name).fn(task, **params)
    recipe = dict(out.recipe)
    recipe["shifts"] = [*task.recipe.get("shifts", []), {name: params}]
    label = ",".join(f"{k}={v}" for k, v in params.items())
    out = out.with_splits(name=f"{task.name}|{name}({label})")
    object.__setattr__(out, "recipe", recipe)
    return out.check()


def apply_shifts(task: Task, specs: Sequence[tuple[str, dict[str, Any]]], where: str = "") -> Task:
    for i, (name, params) in enumerate(specs):
        task = apply_shift(task, name, params, where=f"{where}[{i}]" if where else "")
    return task


def _map_splits(task: Task, fn: Callable[..., torch.Tensor], *key: object) -> Task:
    """Apply ``fn(x, split, index)`` to every split's inputs: to the whole tensor (``index``
    None), or, for streamed images, to each decoded batch, ``index`` holding the examples'
    positions in the split, so per-example randomness is a function of (seed, shift, split,
    index) whatever the batches."""
    out = {}
    for sname, s in task.splits().items():
        if is_lazy(s.x):
            layer = functools.partial(_batch_layer, fn, sname)
            x = s.x.map(f"{key}|{sname}|{task.recipe.get('seed', 0)}|{task.hash}", layer)
        else:
            x = fn(s.x, sname, None)
        out[sname] = s.with_x(x)
    return task.with_splits(**out)


def _batch_layer(
    fn: Callable[..., torch.Tensor], split: str, x: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    return fn(x, split, index)


def _per_split(task: Task, split: str) -> int:
    return len(task.splits()[split])


def _generator(task: Task, *salt: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash_str(f"{task.recipe.get('seed', 0)}|{task.hash}|{salt}") % (2**63))
    return g


def _need_images(task: Task, shift: str) -> None:
    if task.kind != "image":
        raise ConfigError(
            f"shift {shift!r} applies to image tasks; task {task.name!r} holds {task.kind}s"
        )


# --- tasks -----------------------------------------------------------------------------------


def _distinct(keep: list[int]) -> list[int]:
    if len(set(keep)) != len(keep):
        raise ValueError("it lists a class twice")
    return keep


@SHIFTS.register("classes")
def classes(
    task: Task, keep: Annotated[list[int], Field(min_length=1), AfterValidator(_distinct)]
) -> Task:
    """Keep only the classes ``keep`` (original class ids), relabelled 0..len(keep)-1 in that order."""
    missing = [c for c in keep if c not in task.classes]
    if missing:
        raise ConfigError(
            f"shift 'classes': classes {missing} are not in task {task.name!r} (it has {list(task.classes)})"
        )
    old = torch.tensor([task.classes.index(c) for c in keep])
    lut = torch.full((task.num_classes,), -1, dtype=torch.long)
    lut[old] = torch.arange(len(keep))
    out = {}
    for sname, s in task.splits().items():
        idx = torch.nonzero(lut[s.y] >= 0).flatten()
        if len(idx) == 0:
            raise DataError(
                f"shift 'classes': keeping {keep} leaves the {sname} split of {task.name!r} empty"
            )
        sub = s.subset(idx)
        out[sname] = Split(sub.x, lut[sub.y], sub.groups, sub.env, sub.rows)
    names = tuple(task.class_names[task.classes.index(c)] for c in keep)
    t = task.with_splits(**out)
    object.__setattr__(t, "classes", tuple(keep))
    object.__setattr__(t, "class_names", names)
    return t


# --- image corruptions -----------------------------------------------------------------------

NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)
CONTRAST = (0.6, 0.45, 0.3, 0.2, 0.1)
ROTATION_DEG = (15, 30, 45, 60, 90)
INVERT_FRACTION = (0.2, 0.4, 0.6, 0.8, 1.0)


@SHIFTS.register("gaussian_noise")
def gaussian_noise(task: Task, severity: Severity = 3) -> Task:
    """Add i.i.d. Gaussian pixel noise (σ = 0.08…0.38 by severity), clipped to [0, 1]."""
    _need_images(task, "gaussian_noise")
    sigma = NOISE_SIGMA[severity - 1]

    def f(x: torch.Tensor, split: str, index: torch.Tensor | None) -> torch.Tensor:
        if index is None:
            noise = torch.randn(x.shape, generator=_generator(task, "noise", severity, split))
        else:  # streamed: one generator per example (same distribution, other draws)
            noise = (
                torch.stack(
                    [
                        torch.randn(
                            x.shape[1:], generator=_generator(task, "noise", severity, split, i)
                        )
                        for i in index.tolist()
                    ]
                )
                if len(index)
                else torch.zeros_like(x)
            )
        return (x + sigma * noise).clamp_(0.0, 1.0)

    return _map_splits(task, f, "gaussian_noise", severity)


@SHIFTS.register("gaussian_blur")
def gaussian_blur(task: Task, severity: Severity = 3) -> Task:
    """Blur with a Gaussian kernel (σ = 0.5…2 pixels by severity), reflecting at borders."""
    _need_images(task, "gaussian_blur")
    sigma = BLUR_SIGMA[severity - 1]
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()

    def f(x: torch.Tensor, split: str, index: torch.Tensor | None) -> torch.Tensor:
        c = x.shape[1]
        out = []
        for chunk in x.split(8192):
            h = F.pad(chunk, (radius, radius, 0, 0), mode="reflect")
            h = F.conv2d(h, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
            h = F.pad(h, (0, 0, radius, radius), mode="reflect")
            out.append(F.conv2d(h, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c))
        return torch.cat(out).clamp_(0.0, 1.0)

    return _map_splits(task, f, "gaussian_blur", severity)


@SHIFTS.register("contrast")
def contrast(task: Task, severity: Severity = 3) -> Task:
    """Shrink each image's contrast around its mean (factor 0.6…0.1 by severity)."""
    _need_images(task, "contrast")
    c = CONTRAST[severity - 1]

    def f(x: torch.Tensor, split: str, index: torch.Tensor | None) -> torch.Tensor:
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        return ((x - mean) * c + mean).clamp_(0.0, 1.0)

    return _map_splits(task, f, "contrast", severity)


@SHIFTS.register("rotation")
def rotation(task: Task, severity: Severity = 3) -> Task:
    """Rotate each image by ±15…90 degrees (sign drawn per image), bilinear, zero fill."""
    _need_images(task, "rotation")
    deg = ROTATION_DEG[severity - 1]

    signs = {
        s: torch.randint(
            0, 2, (_per_split(task, s),), generator=_generator(task, "rot", severity, s)
        )
        for s in task.splits()
    }

    def f(x: torch.Tensor, split: str, index: torch.Tensor | None) -> torch.Tensor:
        sign = signs[split] if index is None else signs[split][index]
        theta = math.radians(deg) * (2.0 * sign.float() - 1.0)
        cos, sin = torch.cos(theta), torch.sin(theta)
        mats = torch.stack(
            [
                torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                torch.stack([sin, cos, torch.zeros_like(cos)], 1),
            ],
            1,
        )
        out = []
        for xs, ms in zip(x.split(8192), mats.split(8192), strict=True):
            grid = F.affine_grid(ms, list(xs.shape), align_corners=False)
            out.append(
                F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            )
        return torch.cat(out).clamp_(0.0, 1.0)

    return _map_splits(task, f, "rotation", severity)


@SHIFTS.register("inversion")
def inversion(task: Task, severity: Severity = 5) -> Task:
    """Invert intensities (x → 1 − x) of a fraction 0.2…1.0 of the images by severity."""
    _need_images(task, "inversion")
    frac = INVERT_FRACTION[severity - 1]

    picks = {
        s: torch.rand(_per_split(task, s), generator=_generator(task, "invert", severity, s)) < frac
        for s in task.splits()
    }

    def f(x: torch.Tensor, split: str, index: torch.Tensor | None) -> torch.Tensor:
        pick = picks[split].clone() if index is None else picks[split][index]
        if frac >= 1.0:
            pick[:] = True
        out = x.clone()
        out[pick] = 1.0 - out[pick]
        return out

    return _map_splits(task, f, "inversion", severity)


# --- MNIST-1D generator shifts ---------------------------------------------------------------


def _regenerate(task: Task, shift: str, **override: Any) -> Task:
    from richrep.data.datasets import load_task

    r = task.recipe
    if r.get("dataset") != "mnist1d":
        raise ConfigError(
            f"shift {shift!r} applies to mnist1d tasks; task {task.name!r} comes from {r.get('dataset')!r}"
        )
    if r.get("preflight"):  # a dry run on a miniature task: the checks above are the point
        return task
    params = dict(r["params"], **override)
    base = load_task(
        "mnist1d",
        params,
        val_fraction=r["val_fraction"],
        max_train_per_class=r["max_train_per_class"],
        seed=r["seed"],
    )
    base = apply_shifts(base, [next(iter(s.items())) for s in r.get("shifts", [])])
    return base.with_splits(name=task.name)


@SHIFTS.register("mnist1d_noise")
def mnist1d_noise(task: Task, scale: Annotated[float, Field(ge=0)] = 0.1) -> Task:
    """Regenerate MNIST-1D with i.i.d. noise of standard deviation ``scale`` (default data: 0.02)."""
    return _regenerate(task, "mnist1d_noise", iid_noise_scale=scale)


@SHIFTS.register("mnist1d_shear")
def mnist1d_shear(task: Task, scale: Annotated[float, Field(ge=0)] = 1.5) -> Task:
    """Regenerate MNIST-1D with shear scale ``scale`` (default data: 0.75)."""
    return _regenerate(task, "mnist1d_shear", shear_scale=scale)


@SHIFTS.register("mnist1d_translation")
def mnist1d_translation(task: Task, max_translation: Annotated[int, Field(ge=1)] = 60) -> Task:
    """Regenerate MNIST-1D with circular translations up to ``max_translation`` (default data: 48)."""
    return _regenerate(task, "mnist1d_translation", max_translation=max_translation)
