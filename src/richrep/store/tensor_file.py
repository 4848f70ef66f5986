"""One 2-D tensor in a safetensors file, written and read by rows, never whole in memory.

:class:`TensorFileWriter` writes the file in chunks of rows (the header first: the shape and
dtype are known up front), hashing as it goes, then renames it into place and writes the sha256
sidecar last, as :func:`richrep.store.files.save_tensors` does: the file is an ordinary
safetensors file that :func:`~richrep.store.files.load_tensors` reads. :class:`TensorFile`
reads ranges of rows with ``pread`` into fresh buffers (no memory map, so a pass over a file
larger than memory holds one chunk at a time, and what the process holds is what it reads).

Safetensors layout: an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the raw little-endian data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from richrep.errors import StoreError
from richrep.store.files import (
    _disk_errors,
    _mkstemp,
    _read_sidecar,
    _refuse_links,
    _with_sidecar,
    sidecar,
    verify,
    write_json,
)

CODES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
}
DTYPES = {code: dtype for dtype, code in CODES.items()}


def _header(name: str, shape: tuple[int, int], dtype: torch.dtype, meta: dict[str, str]) -> bytes:
    size = shape[0] * shape[1] * torch.empty(0, dtype=dtype).element_size()
    head: dict[str, Any] = {
        name: {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [0, size]}
    }
    if meta:
        head["__metadata__"] = {str(k): str(v) for k, v in meta.items()}
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text


class TensorFileWriter:
    """Write a (rows, cols) tensor ``name`` of ``dtype`` to ``path`` chunk by chunk
    (:meth:`write`, in order), then :meth:`close` (rename into place, sidecar with ``meta``);
    an exception inside ``with`` removes the temporary file and leaves no sidecar."""

    def __init__(
        self,
        path: Path,
        name: str,
        shape: tuple[int, int],
        dtype: torch.dtype,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if dtype not in CODES:
            raise StoreError(
                f"{path}: cannot store {dtype} rows (one of {sorted(map(str, CODES))})"
            )
        self.path, self.shape, self.dtype = _with_sidecar(Path(path)), tuple(shape), dtype
        self.meta = meta or {}
        self.rows = 0
        self.hash = hashlib.sha256()
        with _disk_errors(self.path):
            _refuse_links(self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = _mkstemp(self.path)
        self.file = os.fdopen(fd, "wb")
        self._put(_header(name, self.shape, dtype, {}))

    def _put(self, data: bytes | memoryview) -> None:
        with _disk_errors(self.path):
            self.file.write(data)
        self.hash.update(data)
        self.bytes = self.file.tell()

    def write(self, rows: torch.Tensor) -> None:
        """Append ``rows`` (r, cols), converted to the file's dtype."""
        if rows.ndim != 2 or rows.shape[1] != self.shape[1]:
            raise StoreError(
                f"{self.path}: rows of shape {tuple(rows.shape)} do not fit {self.shape}"
            )
        if self.rows + rows.shape[0] > self.shape[0]:
            raise StoreError(f"{self.path}: more than the {self.shape[0]} rows declared")
        data = rows.detach().to("cpu", self.dtype).contiguous()
        self._put(memoryview(data.view(torch.uint8).numpy()))
        self.rows += rows.shape[0]

    def close(self) -> str:
        """Finish: every declared row written, fsync, rename, then the sidecar; the sha256."""
        if self.rows != self.shape[0]:
            self.abort()
            raise StoreError(f"{self.path}: {self.rows} of {self.shape[0]} rows were written")
        with _disk_errors(self.path):
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        digest = self.hash.hexdigest()
        write_json(sidecar(self.path), {**self.meta, "sha256": digest, "bytes": self.bytes})
        return digest

    def abort(self) -> None:
        """Drop the temporary file (nothing was renamed into place)."""
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def __enter__(self) -> TensorFileWriter:
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is not None:
            self.abort()


class TensorFile:
    """Rows of the 2-D tensor ``name`` in the safetensors file ``path``, read on demand.

    ``check``: verify the file against its sidecar first (size and sha256: one sequential read
    of the file, remembered per inode in this process); a bad file is a :class:`StoreError`."""

    def __init__(self, path: Path, name: str = "features", check: bool = True) -> None:
        self.path = Path(path)
        if check:
            _read_sidecar(self.path)  # a clear error when there is none
            if not verify(self.path):
                raise StoreError(f"{self.path} does not match its recorded sha256")
        try:
            with open(self.path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > 100 << 20:
                    raise ValueError("header too large")
                head = json.loads(f.read(length))
            info = head[name]
            self.dtype = DTYPES[info["dtype"]]
            rows, cols = (int(v) for v in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise StoreError(
                f"{self.path} is not a safetensors file with a 2-D {name!r} ({e})"
            ) from None
        self.shape = (rows, cols)
        self.itemsize = torch.empty(0, dtype=self.dtype).element_size()
        self.row_bytes = cols * self.itemsize
        self.offset = 8 + length + begin
        if (
            end - begin != rows * self.row_bytes
            or self.offset + rows * self.row_bytes > self.path.stat().st_size
        ):
            raise StoreError(f"{self.path}: its header does not match its size")

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as a fresh tensor of the file's dtype."""
        start, stop = max(0, start), min(self.shape[0], stop)
        n = max(0, stop - start)
        buf = np.empty(n * self.row_bytes, dtype=np.uint8)
        at, view = 0, memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * self.row_bytes)
            while at < buf.size:  # one read call returns at most ~2 GB on Linux
                got = f.readinto(view[at:])
                if not got:
                    raise StoreError(f"{self.path}: rows {start}:{stop} are cut short (truncated?)")
                at += got
        return torch.from_numpy(buf).view(self.dtype).view(n, self.shape[1])
