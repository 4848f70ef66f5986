"""Tasks: labelled train / validation / test splits with a content hash.

A :class:`Task` holds tensors in their natural units (images in [0, 1], signals as generated);
encoders standardize their own input with statistics of the task they were trained on, so a
shift that moves the input distribution is never hidden by re-standardizing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from richrep.data.images import ImageSource, is_lazy
from richrep.errors import DataError


def hash_tensors(*tensors: torch.Tensor | None, extra: str = "") -> str:
    """Short content hash (blake2b) of tensors' dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=8)
    h.update(extra.encode())
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def unseen_classes(unseen: list[int], train: list[int]) -> str:
    """Why a task whose test split holds classes ``unseen`` absent from its training split
    (classes ``train``) is refused."""
    return (
        f"the test split holds class(es) {_listing(unseen)} that the training split lacks (it has "
        f"{_listing(train)}); nothing can learn a class it never sees, so its test examples "
        f"could only be scored wrong. Give training examples of every test class, or drop "
        f"those test examples"
    )


def _listing(ids: list[int]) -> str:
    return "[" + ", ".join(map(str, ids[:12])) + (", …]" if len(ids) > 12 else "]")


@dataclass(frozen=True)
class Rows:
    """Rows ``index`` of a root split (identified by ``root``, of ``size`` examples)."""

    root: str
    size: int
    index: torch.Tensor

    def take(self, index: torch.Tensor) -> Rows:
        return Rows(self.root, self.size, self.index[index])

    def cat(self, other: Rows | None) -> Rows | None:
        """These rows then ``other``'s, when both are rows of the same root (else None)."""
        if other is None or other.root != self.root:
            return None
        return Rows(self.root, self.size, torch.cat([self.index, other.index]))


@dataclass(frozen=True)
class Split:
    """One split: inputs ``x`` (N, ...), integer labels ``y`` (N,), optional ``groups`` (N,)
    and environments ``env`` (N,): integer ids, named in the task's ``recipe["info"]``
    (``groups`` / ``environments``) when a dataset or shift made them. ``x`` is a tensor or,
    for images streamed from files, an :class:`~richrep.data.images.ImageSource`."""

    x: torch.Tensor | ImageSource
    y: torch.Tensor
    groups: torch.Tensor | None = None
    env: torch.Tensor | None = None
    # where these examples sit in a larger split they were cut from, inputs unchanged (a class
    # selection, a pool of train and validation): a split's features can be gathered from the
    # features of others cut from the same root (see Featurizer)
    rows: Rows | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        for name in ("groups", "env"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != self.y.shape[0]:
                raise DataError(f"{name} has {t.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor | np.ndarray) -> Split:
        index = torch.as_tensor(index, dtype=torch.long)
        g = None if self.groups is None else self.groups[index]
        e = None if self.env is None else self.env[index]
        x = self.x.subset(index) if is_lazy(self.x) else self.x[index]
        return Split(x, self.y[index], g, e, self.root_rows().take(index))

    def root_rows(self) -> Rows:
        """:attr:`rows`, or this split as its own root."""
        if self.rows is not None:
            return self.rows
        return Rows(self.hash, len(self), torch.arange(len(self)))

    def with_x(self, x: torch.Tensor | ImageSource) -> Split:
        """The same examples (labels, groups, environments) with inputs ``x``."""
        return Split(x, self.y, self.groups, self.env)

    @cached_property
    def hash(self) -> str:
        extra = () if self.env is None else (self.env,)  # hashes of splits without env unchanged
        if is_lazy(self.x):  # the files' manifest, rows and transforms stand for the pixels
            return hash_tensors(self.y, self.groups, *extra, extra=f"images|{self.x.fingerprint}")
        return hash_tensors(self.x, self.y, self.groups, *extra)


@dataclass(frozen=True)
class Task:
    """A classification task: three splits, the class ids it holds, and where it came from.

    ``classes[i]`` is the dataset's original id of label ``i``; ``recipe`` records the dataset,
    its arguments and the shifts applied, so any task can be rebuilt.
    """

    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    kind: str  # "image" (N, C, H, W) or "signal" (N, C, L) or "vector" (N, D)
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @cached_property
    def hash(self) -> str:
        return hash_tensors(
            extra=f"{self.classes}|{self.train.hash}|{self.val.hash}|{self.test.hash}"
        )

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def with_splits(self, name: str | None = None, **splits: Split) -> Task:
        out = replace(self, **splits, name=name or self.name)
        out.__dict__.pop("hash", None)
        return out

    def miniature(self, per_class: int = 2) -> Task:
        """The same task with at most ``per_class`` examples of each class per split, marked
        ``preflight`` in its recipe: shifts run on it to find config errors at once."""
        out = {}
        for name, s in self.splits().items():
            idx = torch.cat(
                [torch.nonzero(s.y == c).flatten()[:per_class] for c in range(self.num_classes)]
            )
            out[name] = s.subset(idx.sort().values)
        mini = self.with_splits(**out)
        object.__setattr__(mini, "recipe", {**self.recipe, "preflight": True})
        return mini

    def check(self) -> Task:
        """Validate shapes, finiteness and labels; raise :class:`DataError` naming the problem."""
        for sname, s in self.splits().items():
            if len(s) == 0:
                raise DataError(f"task {self.name!r}: the {sname} split is empty")
            if s.x.shape[1:] != self.train.x.shape[1:]:
                raise DataError(
                    f"task {self.name!r}: {sname} inputs have shape {tuple(s.x.shape[1:])}, "
                    f"train inputs {tuple(self.train.x.shape[1:])}"
                )
            # streamed images are decoded to [0, 1] on demand; a bad file fails naming itself
            if not is_lazy(s.x) and not torch.is_floating_point(s.x):
                raise DataError(f"task {self.name!r}: {sname} inputs must be floating point")
            bad = 0 if is_lazy(s.x) else (~torch.isfinite(s.x)).sum().item()
            if bad:
                raise DataError(f"task {self.name!r}: {sname} inputs hold {bad} NaN/inf values")
            if s.y.dtype != torch.long:
                raise DataError(
                    f"task {self.name!r}: {sname} labels must be int64, got {s.y.dtype}"
                )
            lo, hi = int(s.y.min()), int(s.y.max())
            if lo < 0 or hi >= self.num_classes:
                raise DataError(
                    f"task {self.name!r}: {sname} labels span [{lo}, {hi}] but the task has "
                    f"{self.num_classes} classes (labels must be in [0, {self.num_classes - 1}])"
                )
        seen = torch.unique(self.train.y).tolist()
        unseen = sorted(set(torch.unique(self.test.y).tolist()) - set(seen))
        if unseen:
            ids = [self.classes[i] for i in unseen]
            raise DataError(
                f"task {self.name!r}: {unseen_classes(ids, [self.classes[i] for i in seen])}"
            )
        return self
