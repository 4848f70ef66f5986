"""The dataset registry and the generic path from raw arrays to a :class:`Task`.

A dataset entry returns :class:`RawData` (a train pool and a test set in natural units); the
validation split and an optional cap on training examples are carved here, the same way for
every dataset, from the data seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from richrep.data.checks import integer_ids
from richrep.data.images import is_lazy
from richrep.data.splits import per_class_sample, stratified_split
from richrep.data.task import Rows, Split, Task, hash_tensors, unseen_classes
from richrep.errors import ConfigError, DataError
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
    e_train: np.ndarray | None = None  # environment ids (e.g. the ``colored`` datasets)
    e_test: np.ndarray | None = None
    val_index: np.ndarray | None = None  # the dataset's own validation examples (of train)
    divide_by: float | None = None  # inputs are divided by it as the splits are cut


def divide(x: np.ndarray, divisor: float | None) -> np.ndarray:
    """``x / divisor`` in floating point (float32 for types up to 16 bits, else float64);
    ``x`` itself without a divisor (the task converts it to float32)."""
    if divisor is None:
        return x
    out = x.astype(np.float32 if x.dtype.itemsize <= 2 else np.float64)
    out /= divisor  # in place: the same values as ``out / divisor``, one copy fewer
    return out


DATASETS: Registry[Callable[..., RawData]] = Registry("dataset")


def load_task(
    dataset: str,
    params: dict[str, Any] | None = None,
    *,
    val_fraction: float = 0.1,
    max_train_per_class: int | None = None,
    seed: int = 0,
    like: Task | None = None,
) -> Task:
    """Load ``dataset`` and split it: train / validation (stratified ``val_fraction`` of the
    training pool) / test. ``seed`` fixes the split; the task records how to rebuild it.
    With ``like`` (a run's source task, for a suite entry's target), a dataset whose ``kind`` is
    left at ``"auto"`` follows ``like``'s input shape (:func:`follow_shape`).

    A dataset with an argument ``split_seed`` (e.g. ``npz``, which may carve its test set) gets
    ``seed`` there unless the user set it. What the dataset reports about itself (``RawData.info``,
    e.g. ``test_split`` and ``scaled``) lands in ``task.recipe["info"]``."""
    if seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed}")
    params = DATASETS.validate(dataset, params or {}, where="data.dataset")
    call = dict(params)
    if "split_seed" in call and call["split_seed"] is None:  # unset: follow ``seed``
        call["split_seed"] = seed
    raw = DATASETS.build(dataset, **call)
    if like is not None and params.get("kind", "auto") == "auto":
        raw = follow_shape(raw, like.input_shape, like.kind)
    recipe = {
        "dataset": dataset,
        "params": params,
        "val_fraction": val_fraction,
        "max_train_per_class": max_train_per_class,
        "seed": seed,
        "shifts": [],
        "info": raw.info,
    }
    return task_from_raw(raw, dataset, recipe)


def follow_shape(raw: RawData, shape: tuple[int, ...], kind: str) -> RawData:
    """``raw`` with its inputs reshaped to ``shape`` per example (and of ``kind``) when they hold
    as many values in the same order, singleton axes aside: MNIST-1D's ``(N, 1, 40)`` (which
    ``kind: auto`` reads as a grey image) or ``(N, 40)`` for a run on ``(1, 40)``."""
    x, xt = raw.x_train, raw.x_test
    if is_lazy(x) or is_lazy(xt) or tuple(x.shape[1:]) == tuple(shape):
        return raw

    def core(s: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(d for d in s if d != 1)

    if not core(x.shape[1:]) == core(xt.shape[1:]) == core(shape):
        return raw
    info = {**raw.info, "reshaped": f"{tuple(x.shape[1:])} to the run's {tuple(shape)}"}
    x, xt = np.reshape(x, (len(x), *shape)), np.reshape(xt, (len(xt), *shape))
    return replace(raw, x_train=x, x_test=xt, kind=kind, info=info)


def task_from_raw(raw: RawData, name: str, recipe: dict[str, Any]) -> Task:
    where = f"dataset {name!r}" + (f" ({raw.info['path']})" if "path" in raw.info else "")
    x_pool, y_pool, g_pool = _check_arrays(raw.x_train, raw.y_train, raw.g_train, where, "train")
    x_test, y_test, g_test = _check_arrays(raw.x_test, raw.y_test, raw.g_test, where, "test")
    labels = np.unique(np.concatenate([y_pool, y_test]))
    classes = _class_ids(labels, where)
    for which, y in (("train", y_pool), ("test", y_test)):
        if len(y) == 0:
            raise DataError(f"{where}: the {which} set holds 0 examples")
    unseen = np.setdiff1d(y_test, y_pool)
    if unseen.size:  # before the labels are renumbered: the error names the dataset's ids
        raise DataError(f"{where}: {unseen_classes(unseen.tolist(), np.unique(y_pool).tolist())}")
    _warn_gaps(labels, where)
    if classes != tuple(range(len(classes))):  # relabel 0..C-1; classes[i] keeps the original id
        y_pool, y_test = np.searchsorted(labels, y_pool), np.searchsorted(labels, y_test)
    if raw.class_names and len(raw.class_names) <= classes[-1]:
        raise DataError(
            f"{where}: {len(raw.class_names)} class names for class ids up to {classes[-1]}"
        )
    names = (
        tuple(raw.class_names[c] for c in classes)
        if raw.class_names
        else tuple(str(c) for c in classes)
    )
    vf = recipe["val_fraction"]
    if not 0.0 < vf < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {vf}")
    if raw.val_index is not None:  # the dataset holds out its own (e.g. per environment)
        held = np.sort(np.asarray(raw.val_index, dtype=np.int64))
        keep = np.setdiff1d(np.arange(len(y_pool)), held)
    else:
        keep, held = stratified_split(y_pool, vf, recipe["seed"], name)
    cap = recipe.get("max_train_per_class")
    if cap is not None:
        keep = keep[per_class_sample(y_pool[keep], cap, recipe["seed"], name, "cap")]

    def ids(a: np.ndarray | None, idx: np.ndarray | None) -> torch.Tensor | None:
        if a is None:
            return None
        return torch.from_numpy(np.asarray(a if idx is None else a[idx]).astype(np.int64))

    def split(x: Any, y: np.ndarray, g: Any, e: Any, idx: np.ndarray | None) -> Split:
        if is_lazy(x):  # streamed images: rows, not pixels
            return Split(x if idx is None else x.subset(idx), ids(y, idx), ids(g, idx), ids(e, idx))
        x = divide(x if idx is None else x[idx], raw.divide_by)
        return Split(torch.from_numpy(_float32(x)), ids(y, idx), ids(g, idx), ids(e, idx))

    e_pool, e_test = raw.e_train, raw.e_test
    task = Task(
        name=name,
        train=split(x_pool, y_pool, g_pool, e_pool, keep),
        val=split(x_pool, y_pool, g_pool, e_pool, held),
        test=split(x_test, y_test, g_test, e_test, None),
        classes=classes,
        class_names=names,
        kind=raw.kind,
        recipe=recipe,
    )
    return pooled(task.check(), keep, held, len(y_pool))


def pooled(task: Task, keep: np.ndarray, held: np.ndarray, size: int) -> Task:
    """``task`` whose train and validation splits say they are rows ``keep`` and ``held`` of
    one pool of ``size`` examples (:class:`~richrep.data.task.Rows`): features of the pool's
    rows then serve every split cut from it, e.g. the train + validation pool of each class
    selection."""
    root = hash_tensors(extra=f"pool|{size}|{task.train.hash}|{task.val.hash}")
    splits = {}
    for name, idx in (("train", keep), ("val", held)):
        s = task.splits()[name]
        splits[name] = replace(s, rows=Rows(root, size, torch.as_tensor(idx, dtype=torch.long)))
        splits[name].__dict__["hash"] = s.hash  # the same content
    return task.with_splits(**splits)


def _class_ids(labels: np.ndarray, where: str) -> tuple[int, ...]:
    """The sorted distinct label ids; refuse negative or absurdly sparse ones."""
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: labels must be non-negative, found {labels.min()}")
    n, top = len(labels), int(labels.max(initial=-1))
    if top > 10 * n + 100:
        raise DataError(
            f"{where}: label ids go up to {top} but only {n} distinct labels occur; labels "
            f"must be class ids 0..C-1: remap them, e.g. "
            "`classes, y = np.unique(y, return_inverse=True)`"
        )
    return tuple(int(c) for c in labels)


def _warn_gaps(labels: np.ndarray, where: str) -> None:
    """Warn when the distinct label ids are not 0..C-1 (they are renumbered)."""
    n = len(labels)
    if int(labels.max(initial=-1)) >= n:
        warnings.warn(
            f"{where}: label ids {_short(labels)} are not 0..{n - 1}; using {n} classes, "
            "label i standing for id classes[i]",
            stacklevel=2,
        )


def _short(a: np.ndarray) -> str:
    items = [str(int(v)) for v in a[:8]]
    return "{" + ", ".join(items) + (", …}" if len(a) > 8 else "}")


def _float32(x: np.ndarray) -> np.ndarray:
    """``x`` as a writeable, C-ordered float32 array (copied only when needed)."""
    out = np.asarray(x, dtype=np.float32, order="C")
    return out if out.flags.writeable else out.copy()


def _check_arrays(
    x: Any, y: Any, g: Any, where: str, which: str
) -> tuple[Any, np.ndarray, np.ndarray | None]:
    x = x if is_lazy(x) else np.asarray(x)  # streamed images: decoded (checked) on demand
    y = np.asarray(y)
    if x.ndim < 2:
        raise DataError(
            f"{where}: {which} inputs must have a sample axis and features, got shape {x.shape}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{where}: {which} labels must have shape ({x.shape[0]},), got {y.shape}")
    y = integer_ids(y, f"{which} labels", where)
    if not is_lazy(x) and x.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: {which} inputs must be real numbers (bool, int or float), "
            f"got dtype {x.dtype}"
        )
    if not is_lazy(x) and x.dtype.kind == "f":
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise DataError(f"{where}: {which} inputs hold {bad} NaN/inf values")
        big = float(np.finfo(np.float32).max)
        if x.dtype.itemsize > 4 and x.size and max(-float(x.min()), float(x.max())) > big:
            raise DataError(f"{where}: {which} inputs exceed the float32 range (±{big:.3g})")
    if g is not None:
        g = np.asarray(g)
        if g.shape != y.shape:
            raise DataError(f"{where}: {which} groups must have shape {y.shape}, got {g.shape}")
        g = integer_ids(g, f"{which} groups", where)
    return x, y, g
