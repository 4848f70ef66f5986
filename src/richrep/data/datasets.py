"""The dataset registry and the generic path from raw arrays to a :class:`Task`.

A dataset entry returns :class:`RawData` (a train pool and a test set in natural units); the
validation split and an optional cap on training examples are carved here, the same way for
every dataset, from the data seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from richrep.data.splits import per_class_sample, stratified_split
from richrep.data.task import Split, Task
from richrep.errors import DataError
from richrep.registry import Registry


@dataclass
class RawData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    kind: str
    class_names: tuple[str, ...]
    g_train: np.ndarray | None = None
    g_test: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


DATASETS: Registry[Callable[..., RawData]] = Registry("dataset")


def load_task(
    dataset: str,
    params: dict[str, Any] | None = None,
    *,
    val_fraction: float = 0.1,
    max_train_per_class: int | None = None,
    seed: int = 0,
) -> Task:
    """Load ``dataset`` and split it: train / validation (stratified ``val_fraction`` of the
    training pool) / test. ``seed`` fixes the split; the task records how to rebuild it."""
    params = DATASETS.validate(dataset, params or {}, where="data.dataset")
    raw = DATASETS.build(dataset, **params)
    recipe = {
        "dataset": dataset,
        "params": params,
        "val_fraction": val_fraction,
        "max_train_per_class": max_train_per_class,
        "seed": seed,
        "shifts": [],
    }
    return task_from_raw(raw, dataset, recipe)


def task_from_raw(raw: RawData, name: str, recipe: dict[str, Any]) -> Task:
    x_pool, y_pool, g_pool = _check_arrays(raw.x_train, raw.y_train, raw.g_train, "train")
    x_test, y_test, g_test = _check_arrays(raw.x_test, raw.y_test, raw.g_test, "test")
    labels = np.unique(np.concatenate([y_pool, y_test]))
    if labels.min() < 0:
        raise DataError(f"dataset {name!r}: labels must be non-negative, found {labels.min()}")
    classes = tuple(range(int(labels.max()) + 1))
    names = raw.class_names or tuple(str(c) for c in classes)
    if len(names) < len(classes):
        raise DataError(f"dataset {name!r}: {len(names)} class names for {len(classes)} classes")
    vf = recipe["val_fraction"]
    if not 0.0 < vf < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {vf}")
    keep, held = stratified_split(y_pool, vf, recipe["seed"], name)
    cap = recipe.get("max_train_per_class")
    if cap is not None:
        keep = keep[per_class_sample(y_pool[keep], cap, recipe["seed"], name, "cap")]

    def split(x: np.ndarray, y: np.ndarray, g: np.ndarray | None, idx: np.ndarray | None) -> Split:
        if idx is not None:
            x, y, g = x[idx], y[idx], (None if g is None else g[idx])
        return Split(
            torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=not x.flags.writeable)),
            torch.from_numpy(y.astype(np.int64)),
            None if g is None else torch.from_numpy(g.astype(np.int64)),
        )

    task = Task(
        name=name,
        train=split(x_pool, y_pool, g_pool, keep),
        val=split(x_pool, y_pool, g_pool, held),
        test=split(x_test, y_test, g_test, None),
        classes=classes,
        class_names=tuple(names[: len(classes)]),
        kind=raw.kind,
        recipe=recipe,
    )
    return task.check()


def _check_arrays(
    x: Any, y: Any, g: Any, which: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise DataError(f"{which} inputs must have a sample axis and features, got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{which} labels must have shape ({x.shape[0]},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.all(np.isfinite(y))
            and np.all(y == np.round(y))
        ):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{which} labels must be integers, got dtype {y.dtype}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{which} inputs must be numeric, got dtype {x.dtype}")
    bad = int((~np.isfinite(x)).sum()) if np.issubdtype(x.dtype, np.floating) else 0
    if bad:
        raise DataError(f"{which} inputs hold {bad} NaN/inf values")
    if g is not None:
        g = np.asarray(g)
        if g.shape != y.shape:
            raise DataError(f"{which} groups must have shape {y.shape}, got {g.shape}")
    return x, y, g
