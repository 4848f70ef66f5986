"""Colored environments: a spurious feature that predicts the label in training and not at test,
built the way Arjovsky et al. (2019, "Invariant Risk Minimization") built ColoredMNIST.

From any grey image (or 1-D signal) dataset:

1. a binary label from a class grouping: ``1`` for the classes in ``positive`` (default: the
   class ids below 5), ``0`` for the others; flipped with probability ``label_noise``
   (default 0.25), so the shape predicts the label at most 75 % of the time;
2. a colour equal to the label XOR Bernoulli(e), with e the environment's parameter: the
   input gets two channels (red, green) and the image is written into the channel of its
   colour, the other left zero (optionally downsampled to 14×14 first, as IRM's code does).

The training pool is split into equal environments, one per ``train_envs`` value (default
e = 0.1 and 0.2: the colour agrees with the label 90 % and 80 % of the time, better than the
shape), and ``holdout`` (20 %) of each is the validation split, for training-domain model
selection. Every test environment (default e = 0.9, as IRM, and the RFC paper's 0.1 and 0.5:
Zhang, Lopez-Paz & Bottou, ICML 2022) recolours the whole test set: the same images and the
same noisy labels, only the colour differs, so environments compare paired.

Each example records its environment (``Split.env``: training environments first, then the
test ones) and its group ``env * 4 + colour * 2 + label``; ``recipe["info"]`` names both.
Everything is a function of the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field

from richrep.data.datasets import DATASETS, RawData
from richrep.data.shifts import SHIFTS
from richrep.data.splits import rng
from richrep.data.task import Split, Task
from richrep.errors import ConfigError, DataError

Probability = Annotated[float, Field(ge=0, le=1)]
Envs = Annotated[list[Probability], Field(min_length=1)]
TRAIN_ENVS = (0.1, 0.2)
TEST_ENVS = (0.9, 0.1, 0.5)


@dataclass(frozen=True)
class Colored:
    """The recipe's parameters (see the module docstring)."""

    positive: tuple[int, ...] | None = None
    label_noise: float = 0.25
    train_envs: tuple[float, ...] = TRAIN_ENVS
    test_envs: tuple[float, ...] = TEST_ENVS
    holdout: float = 0.2
    downsample: bool = False

    def binary(self, classes: np.ndarray) -> np.ndarray:
        """The clean binary label of original class ids."""
        if self.positive is None:
            return (classes < 5).astype(np.int64)
        return np.isin(classes, np.asarray(self.positive)).astype(np.int64)

    def environments(self) -> list[dict[str, Any]]:
        train = [{"name": f"train e={e:g}", "e": e, "role": "train"} for e in self.train_envs]
        test = [{"name": f"test e={e:g}", "e": e, "role": "test"} for e in self.test_envs]
        return [{"id": i, **d} for i, d in enumerate(train + test)]

    def info(self) -> dict[str, Any]:
        envs = self.environments()
        groups = [
            f"{env['name']}, colour {c}, label {y}" for env in envs for c in (0, 1) for y in (0, 1)
        ]
        return {"environments": envs, "groups": groups, "label_noise": self.label_noise}


def paint(x: np.ndarray, colour: np.ndarray, downsample: bool) -> np.ndarray:
    """Grey inputs ``(N, 1, ...)`` (or ``(N, ...)``) as two channels, the input written into
    channel ``colour`` and the other zero; every second pixel kept with ``downsample``."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim < 2:
        raise DataError(f"colored: inputs need a sample axis and features, got shape {x.shape}")
    if x.ndim == 2:  # (N, L) or (N, D): one channel
        x = x[:, None]
    if x.shape[1] != 1:
        x = x.mean(1, keepdims=True)  # colour replaces whatever channels there were
    if downsample:
        if x.ndim != 4:
            raise ConfigError(f"colored: downsample applies to images, got shape {x.shape}")
        x = x[:, :, ::2, ::2]
    out = np.zeros((x.shape[0], 2, *x.shape[2:]), dtype=np.float32)
    out[np.arange(len(x)), colour] = x[:, 0]
    return out


def label_and_colour(
    y_clean: np.ndarray, flips: np.ndarray, e: float, g: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy labels (clean XOR ``flips``) and colours (label XOR Bernoulli(e))."""
    y = y_clean ^ flips
    colour = y ^ (g.random(len(y)) < e).astype(np.int64)
    return y, colour


def build(
    x_pool: np.ndarray,
    cls_pool: np.ndarray,
    x_test: np.ndarray,
    cls_test: np.ndarray,
    recipe: Colored,
    seed: int,
    *salt: object,
) -> dict[str, np.ndarray]:
    """The environments' arrays: ``x``, ``y``, ``groups``, ``env`` of the pool (train and
    validation, ``val_index`` marking the held-out part) and of the test set (``*_test``)."""
    if len(x_pool) < 2 * len(recipe.train_envs) or len(x_test) == 0:
        raise DataError(
            f"colored: {len(x_pool)} training and {len(x_test)} test examples are too few for "
            f"{len(recipe.train_envs)} training environments"
        )
    g = rng(seed, "colored", *salt)
    n_train = len(recipe.train_envs)
    order = g.permutation(len(x_pool))
    flips = (g.random(len(x_pool)) < recipe.label_noise).astype(np.int64)
    y_clean = recipe.binary(np.asarray(cls_pool))
    y, colour, env = (np.empty(len(x_pool), np.int64) for _ in range(3))
    held = []
    for i, (idx, e) in enumerate(
        zip(np.array_split(order, n_train), recipe.train_envs, strict=True)
    ):
        y[idx], colour[idx] = label_and_colour(y_clean[idx], flips[idx], e, g)
        env[idx] = i
        held.append(idx[: int(round(recipe.holdout * len(idx)))])
    out = {
        "x": paint(x_pool, colour, recipe.downsample),
        "y": y,
        "env": env,
        "groups": env * 4 + colour * 2 + y,
        "val_index": np.sort(np.concatenate(held)),
    }
    flips_t = (g.random(len(x_test)) < recipe.label_noise).astype(np.int64)
    yc_t = recipe.binary(np.asarray(cls_test))
    parts: dict[str, list[np.ndarray]] = {"x": [], "y": [], "env": [], "groups": []}
    for j, e in enumerate(recipe.test_envs):
        yt, ct = label_and_colour(yc_t, flips_t, e, g)
        et = np.full(len(yt), n_train + j, dtype=np.int64)
        parts["x"].append(paint(x_test, ct, recipe.downsample))
        parts["y"].append(yt)
        parts["env"].append(et)
        parts["groups"].append(et * 4 + ct * 2 + yt)
    out.update({f"{k}_test": np.concatenate(v) for k, v in parts.items()})
    return out


CLASS_NAMES = ("label 0", "label 1")


def _recipe(
    positive: list[int] | None,
    label_noise: float,
    train_envs: Sequence[float],
    test_envs: Sequence[float],
    holdout: float,
    downsample: bool,
) -> Colored:
    if not 0 < holdout < 1:
        raise ConfigError(f"colored: holdout must be in (0, 1), got {holdout}")
    return Colored(
        None if positive is None else tuple(positive),
        label_noise,
        tuple(train_envs),
        tuple(test_envs),
        holdout,
        downsample,
    )


@SHIFTS.register("colored")
def colored(
    task: Task,
    positive: list[int] | None = None,
    label_noise: Probability = 0.25,
    train_envs: Envs = list(TRAIN_ENVS),  # noqa: B006
    test_envs: Envs = list(TEST_ENVS),  # noqa: B006
    holdout: Annotated[float, Field(gt=0, lt=1)] = 0.2,
    downsample: bool = False,
) -> Task:
    """Colored environments (Arjovsky et al. 2019) from this task: binary label from the classes
    ``positive`` (default: ids below 5) with ``label_noise``, colour = label XOR Bernoulli(e)
    for each training environment e (``holdout`` of each for validation) and test environment."""
    if task.kind not in ("image", "signal"):
        raise ConfigError(f"shift 'colored' applies to images and signals, not {task.kind}s")
    r = _recipe(positive, label_noise, train_envs, test_envs, holdout, downsample)
    pool = [task.train, task.val]
    cls_pool = np.asarray(task.classes)[torch.cat([s.y for s in pool]).numpy()]
    cls_test = np.asarray(task.classes)[task.test.y.numpy()]
    x_pool = torch.cat([s.x for s in pool]).numpy()
    seed = task.recipe.get("seed", 0)
    a = build(x_pool, cls_pool, task.test.x.numpy(), cls_test, r, seed, task.hash)
    val = np.zeros(len(a["y"]), dtype=bool)
    val[a["val_index"]] = True

    def split(sel: Any, suffix: str = "") -> Split:
        return Split(
            *(
                torch.from_numpy(np.ascontiguousarray(a[k + suffix][sel]))
                for k in ("x", "y", "groups", "env")
            )
        )

    out = task.with_splits(train=split(~val), val=split(val), test=split(slice(None), "_test"))
    object.__setattr__(out, "classes", (0, 1))
    object.__setattr__(out, "class_names", CLASS_NAMES)
    info = {**task.recipe.get("info", {}), **r.info()}
    object.__setattr__(out, "recipe", {**task.recipe, "info": info})
    return out


def colored_dataset(base: str, downsample: bool) -> Any:
    """A registered dataset: ``base`` (a registered dataset) in colored environments."""

    def make(
        positive: list[int] | None = None,
        label_noise: Probability = 0.25,
        train_envs: Envs = list(TRAIN_ENVS),  # noqa: B006
        test_envs: Envs = list(TEST_ENVS),  # noqa: B006
        holdout: Annotated[float, Field(gt=0, lt=1)] = 0.2,
        downsample: bool = downsample,
        seed: Annotated[int, Field(ge=0)] = 0,
        base_params: dict[str, Any] | None = None,
    ) -> RawData:
        r = _recipe(positive, label_noise, train_envs, test_envs, holdout, downsample)
        raw = DATASETS.build(base, where=f"colored_{base}.base_params", **(base_params or {}))
        a = build(raw.x_train, raw.y_train, raw.x_test, raw.y_test, r, seed, base)
        return RawData(
            a["x"],
            a["y"],
            a["x_test"],
            a["y_test"],
            kind=raw.kind,
            class_names=CLASS_NAMES,
            g_train=a["groups"],
            g_test=a["groups_test"],
            e_train=a["env"],
            e_test=a["env_test"],
            val_index=a["val_index"],
            info={**raw.info, **r.info()},
        )

    make.__doc__ = (
        f"{base} in colored environments (Arjovsky et al. 2019): binary label (class < 5 unless "
        f"``positive``) with ``label_noise``, colour = label XOR Bernoulli(e), training "
        f"environments e={list(TRAIN_ENVS)} (``holdout`` of each for validation), test "
        f"environments e={list(TEST_ENVS)}{', 14×14' if downsample else ''}."
    )
    return make


DATASETS.register("colored_fashion_mnist")(colored_dataset("fashion_mnist", downsample=True))
DATASETS.register("colored_mnist1d")(colored_dataset("mnist1d", downsample=False))

__all__ = ["Colored", "build", "colored", "paint"]
