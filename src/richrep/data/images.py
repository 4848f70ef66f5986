"""Streamed images: :class:`ImageSource`, a lazy stand-in for a split's input tensor.

``Split.x`` is either a tensor (in memory) or an :class:`ImageSource`: image files decoded on
demand with Pillow, resized to ``size`` × ``size``, as ``channels`` channels in [0, 1]. A
source behaves like the tensor where richrep reads inputs: ``len``, ``shape`` ``(N, C, H,
W)``, ``ndim``, indexing by an index tensor, a slice or an int (a decoded float32 batch),
``subset`` (rows, no decoding), ``split(batch)`` (decoded batches in order, through a torch
``DataLoader`` with worker processes), ``map`` (a per-batch transform, e.g. a shift) and
``fingerprint`` (for split hashes). Anything else needing the whole tensor gets a
:class:`DataError` naming what needs in-memory inputs.

Rows are a matrix ``pos`` (N, 1 + layers): column 0 is the row's file, column ``l + 1`` its
position when transform ``l`` was applied (-1: not under it), so a transform sees the same
index for an example however the split is later subset or concatenated, and its randomness
can be a function of (seed, shift, split, index).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from richrep.errors import ConfigError, DataError
from richrep.runtime.threads import ThreadBudget

STATS_SAMPLE = 4096  # images read for the channel statistics and value checks
Layer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (batch, positions) -> batch


class Transform(NamedTuple):
    key: str  # what identifies the transform in fingerprints (shift, arguments, split, task)
    fn: Layer


def is_lazy(x: Any) -> bool:
    return isinstance(x, ImageSource)


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as float32 ``(channels, size, size)`` in [0, 1]: 8-bit images divided by
    255, 16-bit ones (Pillow modes ``I;16*``) by 65535. :class:`DataError` naming the file
    when it is not a regular file, cannot be decoded, is larger than Pillow's decompression-bomb
    limit, or holds 32-bit pixels (whose range is unknown)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _open_regular(path) as fh, Image.open(fh) as im:
            a = _pixels(im, size, channels, path)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot decode image {path}: {e} Resize it below that limit") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None
    if a.ndim == 2:
        return np.repeat(a[None], channels, axis=0)
    return a.transpose(2, 0, 1)


def _open_regular(path: Path) -> Any:
    """``path`` opened for reading; a :class:`DataError` if it is not a regular file (a FIFO is
    opened without blocking and never read)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"cannot decode image {path}: it is not a regular file")
    return os.fdopen(fd, "rb")


def _pixels(im: Any, size: int, channels: int, path: Path) -> np.ndarray:
    """The pixels of the opened image ``im``, resized, in [0, 1]: ``(H, W)`` or ``(H, W, 3)``."""
    from PIL import Image

    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        im, top = im.convert("F"), 65535.0  # 16 bits (an older Pillow opens PNGs as "I")
    elif im.mode in ("I", "F"):
        kind = "integer" if im.mode == "I" else "float"
        raise DataError(
            f"image {path} holds 32-bit {kind} pixels, whose range richrep cannot know; save "
            "it with 8 or 16 bits per channel, or use the npz dataset (its `scale` argument)"
        )
    else:
        mode = "L" if channels == 1 else "RGB"
        if im.mode != mode:  # converting costs as much as decoding a small PNG
            im = im.convert(mode)
        top = 255.0
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    return a / np.float32(top)


DATA_WORKERS = "RICHREP_DATA_WORKERS"
MAX_WORKERS = 64


def data_workers() -> int | None:
    """``$RICHREP_DATA_WORKERS`` (decoding worker processes, 0: decode in the main process) or
    None when unset; a :class:`ConfigError` naming the variable for anything but a whole number
    from 0 to :data:`MAX_WORKERS`."""
    env = os.environ.get(DATA_WORKERS)
    if env is None:
        return None
    try:
        n = int(env.strip())
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_WORKERS:
        raise ConfigError(
            f"{DATA_WORKERS}={env!r}: set it to a whole number from 0 to {MAX_WORKERS} (decoding "
            "worker processes; 0 decodes in the main process), or unset it for the default"
        )
    return n


def loader_workers(batches: int, threads: ThreadBudget | None = None) -> int:
    """Decoding worker processes: ``$RICHREP_DATA_WORKERS`` if set (:func:`data_workers`), else
    half the thread budget ``threads`` (default: the one the calling thread's edge applied; at
    least 1: one worker beside two training threads on 2 cores; 1 outside any edge); none for a
    source of at most two batches, where starting a process costs more than it saves."""
    n = data_workers()
    if n is not None:
        return n
    if batches <= 2:
        return 0
    budget = threads or ThreadBudget.here()
    return max(1, min(8, budget.threads // 2)) if budget else 1


def _init_worker(_: int) -> None:
    ThreadBudget(1).apply()  # a decoding process's edge: one thread beside the training


class _Batches(Dataset):
    """Item ``i``: the decoded rows ``index[i]`` (any shape of indices; rows decoded once)."""

    def __init__(self, source: ImageSource, index: Sequence[torch.Tensor]) -> None:
        self.source, self.index = source, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        idx = self.index[i]
        uniq, inverse = torch.unique(idx.flatten(), return_inverse=True)
        x = self.source[uniq][inverse]
        return x.view(*idx.shape, *x.shape[1:])


def stream(
    source: ImageSource,
    index: Sequence[torch.Tensor],
    pin_memory: bool = False,
    threads: ThreadBudget | None = None,
) -> Iterator[torch.Tensor]:
    """Decoded batches ``source[index[i]]`` in order, decoded by :func:`loader_workers`
    processes for the budget ``threads`` (one torch thread each, forked) ahead of their use; ``pin_memory`` (for a CUDA
    device) puts them in page-locked memory, so their copy to the device can overlap compute.
    Decoding draws no random numbers, and the loader's own seed comes from a private generator,
    so streaming never moves torch's global RNG (a model built after it is initialized as
    without it)."""
    workers = loader_workers(len(index), threads)
    loader = DataLoader(
        _Batches(source, index),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_init_worker if workers else None,
        prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers else None,
        generator=torch.Generator().manual_seed(0),  # leaves torch's global RNG untouched
        pin_memory=pin_memory,
    )
    return _batches(iter(loader))


def _batches(it: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``it``'s batches; on an error (a bad file) its workers are stopped at once, not when
    the traceback holding the iterator is collected (5 s later), and a worker's
    :class:`DataError` is raised with its own message, without the worker's traceback."""
    try:
        yield from it
    except BaseException as e:
        shutdown = getattr(it, "_shutdown_workers", None)  # torch's DataLoader iterator
        if shutdown is not None:
            shutdown()
        if isinstance(e, DataError) and "Original Traceback" in str(e):
            raise DataError(str(e).rsplit("DataError: ", 1)[-1].strip()) from None
        raise


class ImageSource:
    """Image files under ``root`` decoded on demand (see the module docstring)."""

    dtype = torch.float32

    def __init__(
        self,
        root: Path,
        files: Sequence[str],
        size: int,
        channels: int,
        manifest: str,
        pos: torch.Tensor | None = None,
        layers: Sequence[Transform] = (),
    ) -> None:
        self.root, self.files = Path(root), tuple(files)
        self.size, self.channels, self.manifest = int(size), int(channels), manifest
        self.pos = torch.arange(len(self.files))[:, None] if pos is None else pos
        self.layers = tuple(layers)

    # --- the tensor-like surface ------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.pos.shape[0])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.channels, self.size, self.size))

    @property
    def ndim(self) -> int:
        return 4

    def __getitem__(self, index: Any) -> torch.Tensor:
        """Decoded float32 images in [0, 1] (then the transforms) of the rows ``index``."""
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = self.pos[idx]
        arrays = [
            decode(self.root / self.files[int(f)], self.size, self.channels) for f in rows[:, 0]
        ]
        if arrays:
            x = torch.from_numpy(np.stack(arrays))
        else:
            x = torch.zeros(0, self.channels, self.size, self.size)
        for col, layer in enumerate(self.layers, start=1):
            at = rows[:, col]
            on = at >= 0
            if bool(on.all()):
                x = layer.fn(x, at)
            elif bool(on.any()):
                x[on] = layer.fn(x[on], at[on])
        return x

    def split(self, batch: int) -> Iterator[torch.Tensor]:
        """Decoded batches of ``batch`` rows, in order (as ``Tensor.split``)."""
        return stream(self, list(torch.arange(len(self)).split(batch)))

    def subset(self, index: torch.Tensor | np.ndarray) -> ImageSource:
        return self._with(pos=self.pos[torch.as_tensor(index, dtype=torch.long)])

    def map(self, key: str, fn: Layer) -> ImageSource:
        """This source with ``fn(batch, positions)`` applied after decoding; ``positions`` are
        the rows' indices in this source (stable under later ``subset``/``cat``)."""
        col = torch.arange(len(self))[:, None]
        return self._with(
            pos=torch.cat([self.pos, col], 1), layers=(*self.layers, Transform(key, fn))
        )

    def cat(self, other: ImageSource) -> ImageSource:
        """The rows of ``self`` then those of ``other`` (as ``torch.cat``)."""
        if (self.root, self.size, self.channels) != (other.root, other.size, other.channels):
            raise DataError(
                "cannot concatenate streamed images of different folders, sizes or channels"
            )
        files, manifest, b = self.files, self.manifest, other.pos.clone()
        if other.files != self.files:
            files = self.files + other.files
            manifest = _digest(self.manifest, other.manifest)
            b[:, 0] += len(self.files)
        keys, layers = [t.key for t in self.layers], list(self.layers)
        cols = {0: b[:, 0]}  # column of the result -> the other's rows
        for j, t in enumerate(other.layers):
            if t.key not in keys:  # a transform only the other's rows are under
                layers.append(t)
                keys.append(t.key)
            cols[1 + keys.index(t.key)] = b[:, 1 + j]
        pa = torch.full((len(self), 1 + len(layers)), -1, dtype=torch.long)
        pa[:, : self.pos.shape[1]] = self.pos
        pb = torch.full((len(other), 1 + len(layers)), -1, dtype=torch.long)
        for col, v in cols.items():
            pb[:, col] = v
        pos = torch.cat([pa, pb])
        return ImageSource(self.root, files, self.size, self.channels, manifest, pos, layers)

    @cached_property
    def fingerprint(self) -> str:
        """Manifest of the files, rows and transforms: changes when any of them does."""
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self.manifest}|{self.size}|{self.channels}|".encode())
        h.update("|".join(t.key for t in self.layers).encode())
        h.update(self.pos.contiguous().numpy().tobytes())
        return h.hexdigest()

    # --- statistics ---------------------------------------------------------------------------
    @cached_property
    def summary(self) -> dict[str, torch.Tensor]:
        """Per-channel sums (float64) over a seeded sample of at most :data:`STATS_SAMPLE`
        images (all of them for a smaller source): ``n``, ``sum``, ``sumsq``, ``min``, ``max``."""
        n = len(self)
        rows = torch.arange(n)
        if n > STATS_SAMPLE:
            g = torch.Generator().manual_seed(int(self.fingerprint, 16) >> 1)
            rows = torch.randperm(n, generator=g)[:STATS_SAMPLE].sort().values
        c = self.channels
        s, sq = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        lo, hi = torch.full((c,), float("inf")), torch.full((c,), float("-inf"))
        for xb in stream(self, list(rows.split(256))):
            x = xb.double().transpose(0, 1).reshape(c, -1)
            s += x.sum(1)
            sq += (x * x).sum(1)
            lo, hi = (
                torch.minimum(lo, x.min(1).values.float()),
                torch.maximum(hi, x.max(1).values.float()),
            )
        count = float(len(rows) * self.size * self.size)
        return {"n": torch.tensor(count), "sum": s, "sumsq": sq, "min": lo, "max": hi}

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation (float64) of the sampled images."""
        t = self.summary
        mean = t["sum"] / t["n"]
        var = (t["sumsq"] / t["n"] - mean**2).clamp(min=0) * t["n"] / max(float(t["n"]) - 1, 1.0)
        return mean, var.sqrt()

    # --- what needs the whole tensor ---------------------------------------------------------
    def _with(self, **kw: Any) -> ImageSource:
        args = {"pos": self.pos, "layers": self.layers, **kw}
        return ImageSource(self.root, self.files, self.size, self.channels, self.manifest, **args)

    def _in_memory(self, what: str) -> DataError:
        return DataError(
            f"{what} needs the inputs in memory, and this split streams {len(self)} images "
            f"from {self.root} (the image_folder dataset); streamed data supports training, "
            "feature extraction and the protocols on features (transfer, few_shot, ood in "
            "head mode, ...). Use a dataset held in memory (e.g. npz) for this step"
        )

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise self._in_memory(
            "fine-tuning a network on all inputs (the finetune protocol, ood with mode finetune)"
        )

    def float(self) -> torch.Tensor:
        raise self._in_memory("this step")

    double = float

    def __repr__(self) -> str:
        return (
            f"ImageSource({self.root}, {len(self)} images, {self.channels}×{self.size}×"
            f"{self.size}, {len(self.layers)} transforms)"
        )


def concat(a: torch.Tensor | ImageSource, b: torch.Tensor | ImageSource) -> Any:
    """``torch.cat([a, b])`` for tensors; the concatenated source for streamed images."""
    if is_lazy(a) and is_lazy(b):
        return a.cat(b)
    if is_lazy(a) or is_lazy(b):
        raise DataError("cannot concatenate streamed images with in-memory inputs")
    return torch.cat([a, b])


def require_in_memory(x: Any, what: str) -> torch.Tensor:
    """``x`` if it is a tensor; else a :class:`DataError` saying ``what`` needs it in memory."""
    if is_lazy(x):
        raise x._in_memory(what)
    return x


def _digest(*parts: str) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()
