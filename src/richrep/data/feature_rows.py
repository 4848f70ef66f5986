"""Feature matrices read by rows, for data larger than memory.

A :class:`RowSource` is an (n, d) matrix that hands out float32 blocks of rows on demand: a
tensor or array in memory (:class:`ArrayRows`, also a ``np.memmap``), a safetensors file on disk
(:class:`FileRows`), the columns of several side by side (:class:`ConcatColumns`: cat-K of K
cached parts) or a selection of rows of another (``source[index]``, :class:`SubsetRows`). The
probes stream a source block by block (:mod:`richrep.evaluation.stream`); nothing here holds
more than the rows asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from richrep.errors import DataError
from richrep.store.tensor_file import TensorFile

GATHER_SPAN = 64  # take(): rows read per row wanted, at most, when reading a covering range
WINDOW = 32 << 20  # take(): bytes of float32 rows in one covering range, by default


class RowSource:
    """An (n, d) matrix read by rows as float32 CPU tensors. Subclasses give ``shape`` and
    :meth:`read`; ``source[index]`` selects rows lazily."""

    shape: tuple[int, int]

    def read(self, start: int, stop: int) -> torch.Tensor:  # pragma: no cover - abstract
        """Rows ``[start, stop)``, float32, contiguous."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """What the whole matrix takes in memory as float32."""
        return self.shape[0] * self.shape[1] * 4

    def take(self, index: np.ndarray, span: int | None = None) -> torch.Tensor:
        """Rows ``index`` (any order, repeats allowed) as one float32 tensor: sorted, then read
        in covering ranges of at most ``span`` rows (default: 32 MB of float32) where the wanted
        rows lie close together, else one by one."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        span = span or max(1, WINDOW // (4 * max(1, self.shape[1])))
        out = torch.empty(index.size, self.shape[1])
        if index.size == 0:
            return out
        order = np.argsort(index, kind="stable")
        rows = index[order]
        i = 0
        while i < rows.size:
            j = i + 1  # extend while the range stays dense enough
            while (
                j < rows.size
                and rows[j] - rows[i] < span
                and rows[j] - rows[i] < GATHER_SPAN * (j - i + 1)
            ):
                j += 1
            block = self.read(int(rows[i]), int(rows[j - 1]) + 1)
            out[torch.as_tensor(order[i:j])] = block[torch.as_tensor(rows[i:j] - rows[i])]
            i = j
        return out

    def blocks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, block)`` over the whole matrix, ``rows`` rows at a time."""
        for start in range(0, self.shape[0], rows):
            yield start, self.read(start, min(self.shape[0], start + rows))

    def to_tensor(self) -> torch.Tensor:
        """The whole matrix in memory (float32)."""
        return self.read(0, self.shape[0])

    def __getitem__(self, index: Any) -> SubsetRows:
        return SubsetRows(self, _as_index(index, self.shape[0]))


def _as_index(index: Any, n: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(n)[index]
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    index = np.asarray(index)
    if index.dtype == bool:
        if index.shape != (n,):
            raise DataError(f"a boolean row mask needs {n} entries, got shape {index.shape}")
        return np.flatnonzero(index)
    if index.ndim != 1 or index.dtype.kind not in "iu":
        raise DataError(f"rows are selected by a slice, a mask or integer positions, got {index!r}")
    if index.size and (index.min() < -n or index.max() >= n):
        raise DataError(f"row positions out of range for {n} rows")
    return np.where(index < 0, index + n, index).astype(np.int64)


class ArrayRows(RowSource):
    """A tensor or array in memory (or memory-mapped) as a row source."""

    def __init__(self, array: torch.Tensor | np.ndarray) -> None:
        if array.ndim != 2:
            raise DataError(
                f"features must be 2-D (n_samples, n_features), got {tuple(array.shape)}"
            )
        self.array = array
        self.shape = (int(array.shape[0]), int(array.shape[1]))

    def read(self, start: int, stop: int) -> torch.Tensor:
        block = self.array[start:stop]
        if isinstance(block, np.ndarray):
            block = torch.from_numpy(np.array(block, dtype=np.float32))  # a copy: the map may go
        return block.detach().to("cpu", torch.float32, copy=True).contiguous()


class FileRows(RowSource):
    """The ``features`` tensor of a safetensors file (checked against its sidecar once)."""

    def __init__(self, path: Path, name: str = "features", check: bool = True) -> None:
        self.file = TensorFile(path, name, check=check)
        self.shape = self.file.shape

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.file.read(start, stop).float()


class ConcatColumns(RowSource):
    """Sources with the same rows side by side (cat-K)."""

    def __init__(self, parts: Sequence[RowSource]) -> None:
        rows = {p.shape[0] for p in parts}
        if len(rows) != 1:
            raise DataError(f"cannot put features side by side: row counts {sorted(rows)} differ")
        self.parts = list(parts)
        self.shape = (rows.pop(), sum(p.shape[1] for p in parts))

    def read(self, start: int, stop: int) -> torch.Tensor:
        return torch.cat([p.read(start, stop) for p in self.parts], 1)

    def take(self, index: np.ndarray, span: int | None = None) -> torch.Tensor:
        return torch.cat([p.take(index, span) for p in self.parts], 1)


class SubsetRows(RowSource):
    """Rows ``index`` of ``base``, in that order."""

    def __init__(self, base: RowSource, index: np.ndarray) -> None:
        self.base, self.index = base, index
        self.shape = (int(index.size), base.shape[1])

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.base.take(self.index[start:stop], stop - start)

    def take(self, index: np.ndarray, span: int | None = None) -> torch.Tensor:
        return self.base.take(self.index[np.asarray(index, dtype=np.int64)], span)

    def __getitem__(self, index: Any) -> SubsetRows:
        return SubsetRows(self.base, self.index[_as_index(index, self.shape[0])])


def is_row_source(x: object) -> bool:
    return isinstance(x, RowSource)


def concat_columns(parts: Sequence[Any]) -> torch.Tensor | RowSource:
    """``torch.cat(parts, 1)`` for tensors; a lazy :class:`ConcatColumns` when any part is a
    row source."""
    if not any(is_row_source(p) for p in parts):
        return torch.cat(list(parts), 1)
    return ConcatColumns([p if is_row_source(p) else ArrayRows(p) for p in parts])
