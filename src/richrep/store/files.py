"""Atomic files with sha256 sidecars, the quarantine and the link refusals: the file-level
half of the run store (:mod:`richrep.store`), on paths.

Files are created with the mode a plain ``open`` gives (``0o666 & ~umask``), never through a
symbolic link (neither the file nor a folder of the run it sits in); a file with a sidecar is
vouched for by it (:func:`verify`). Temporary files are named ``.richrep-tmp-*.tmp``
(:data:`TMP_PREFIX`): only those are ever swept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from richrep.errors import StoreError

TMP_PREFIX = ".richrep-tmp-"  # richrep's own temporary files and folders; nothing else is swept
CONFIG = "config.yaml"  # a folder holding one is a run folder
QUARANTINE = "quarantine"  # where files found corrupt are moved (never deleted)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if isinstance(e, StoreError):
            raise
        why = {
            errno.ENOSPC: "the disk is full",
            errno.EACCES: "permission denied",
            errno.EROFS: "the file system is read-only",
            errno.EDQUOT: "disk quota exceeded",
        }.get(e.errno or 0, e.strerror or str(e))
        raise StoreError(f"cannot write {path}: {why}; earlier results are untouched") from None


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it (``/proc/self/status``). Elsewhere it is set
    and restored under a lock, briefly to the strict 0o077 (never 0): a file another thread
    creates meanwhile is at worst too private, never world-writable."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise StoreError(
            f"{path} is a symbolic link; richrep will not write through it (remove the link "
            f"and run again)"
        )


def _refuse_links(path: Path) -> None:
    """Refuse ``path`` if it, or a folder between it and the run folder holding it, is a
    symbolic link."""
    _refuse_symlink(Path(path))
    _refuse_linked_folders(Path(path).parent)


def _refuse_linked_folders(folder: Path) -> None:
    """Refuse ``folder`` if it or a folder above it, up to the run folder holding it (the
    nearest with a ``config.yaml``), is a symbolic link. Outside a run nothing is checked."""
    link = None
    for d in (folder, *folder.parents):
        if (d / CONFIG).is_file():
            if link is not None:
                raise StoreError(
                    f"{link} is a symbolic link inside the run folder {d}; richrep will not "
                    f"write through it (replace the link by a folder and run again)"
                )
            return
        if link is None and d.is_symlink():
            link = d


def _mkstemp(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` (``O_EXCL``: never an existing file or link) with the
    permissions a plain ``open`` would give."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd, tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename: readers see the old
    file or the new one, never a part. A ``path`` that is a symbolic link, or sits in a folder of
    a run that is one, is refused."""
    path = Path(path)
    with _disk_errors(path):
        _refuse_links(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _mkstemp(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} is unreadable or corrupt ({e})") from None


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None
) -> str:
    """Save tensors as safetensors atomically, then a sidecar ``.json`` holding ``meta``, the
    file's ``sha256`` and size (``bytes``); return the hash. The sidecar is written last: no
    sidecar, no file.

    The bytes are serialized in memory and written through :func:`write_atomic` (safetensors'
    ``save_file`` would recreate the file itself, mode 0600, following no umask)."""
    path = _with_sidecar(path)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = save_bytes(clean)
    write_atomic(path, data)
    digest = hashlib.sha256(data).hexdigest()
    write_json(sidecar(path), {**(meta or {}), "sha256": digest, "bytes": len(data)})
    return digest


def sidecar(path: Path) -> Path:
    """The integrity sidecar of ``path``: the same name with suffix ``.json`` (``x.safetensors``
    and ``x.jsonl`` both have ``x.json``)."""
    return Path(path).with_suffix(".json")


def _with_sidecar(path: Path) -> Path:
    path = Path(path)
    if sidecar(path) == path:
        raise StoreError(f"{path}: a file with a sidecar cannot itself end in .json")
    return path


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        meta = read_json(sidecar(path))
    except FileNotFoundError:
        raise StoreError(
            f"{path} has no sidecar {sidecar(path).name}: it was never finished"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise StoreError(f"{sidecar(path)} is not a valid sidecar (no sha256)")
    return meta


def _read_checked(path: Path, meta: dict[str, Any]) -> bytes:
    """The bytes of ``path`` once their size and sha256 match ``meta`` (read once, so what is
    checked is what is used)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path} is missing (its sidecar exists)") from None
    except OSError as e:
        raise StoreError(f"{path} is unreadable ({e.strerror or e})") from None
    size_ok = meta.get("bytes", len(data)) == len(data)
    if not size_ok or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise StoreError(f"{path} does not match its recorded sha256: truncated or modified")
    return data


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file after checking its sha256 against the sidecar.

    Raises :class:`StoreError` when the sidecar is missing or the file is truncated, tampered
    with or unreadable; callers retrain or recompute, never use a bad file.
    """
    path = Path(path)
    meta = _read_sidecar(path)
    data = _read_checked(path, meta)
    try:
        return load_bytes(data), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise StoreError(f"{path} is not a readable safetensors file ({e})") from None


def write_jsonl(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """Write ``rows`` as JSON lines (keys sorted) atomically, then the sidecar
    ``{**meta, "sha256", "bytes", "rows"}`` (:func:`sidecar`, written last); return the sha256.

    The old sidecar is removed first, so a crash in between leaves a file without a sidecar
    ("never finished"), never a stale sidecar vouching for new data."""
    path = _with_sidecar(path)
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    with _disk_errors(path), contextlib.suppress(FileNotFoundError):
        _refuse_links(sidecar(path))
        sidecar(path).unlink()
    write_atomic(path, data)
    digest = hashlib.sha256(data).hexdigest()
    record = {**(meta or {}), "sha256": digest, "bytes": len(data), "rows": len(rows)}
    write_json(sidecar(path), record)
    return digest


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a file written by :func:`write_jsonl`, after checking size, sha256 and row
    count against its sidecar. Raises :class:`StoreError` (never a JSON error) when the file or
    its sidecar is missing, truncated, modified or not JSON lines of objects."""
    path = Path(path)
    meta = _read_sidecar(path)
    data = _read_checked(path, meta)
    bad = f"{path} is truncated or modified"
    try:
        rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{bad}: not JSON lines ({e})") from None
    if len(rows) != meta.get("rows", len(rows)):
        raise StoreError(f"{bad}: {len(rows)} rows, its sidecar records {meta['rows']}")
    if not all(isinstance(r, dict) for r in rows):
        raise StoreError(f"{bad}: a line is not a JSON object")
    return rows


_HASHES: dict[tuple[int, int], tuple[int, int, int, str]] = {}
_HASHES_LOCK = threading.Lock()
_RACY_NS = 2_000_000_000  # a file changed this recently is hashed every time (coarse clocks)


def _sha256_cached(path: Path, st: os.stat_result) -> str:
    """:func:`sha256_file`, remembered in this process for the file's (device, inode) while
    its size, mtime and ctime (which any write changes, and no one can set) stay the same;
    a file whose ctime is within ``_RACY_NS`` of now is not remembered (git's "racy" rule)."""
    key, when = (st.st_dev, st.st_ino), (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _HASHES_LOCK:
        seen = _HASHES.get(key)
    if seen is not None and seen[:3] == when:
        return seen[3]
    digest = sha256_file(path)
    after = path.lstat()
    same = (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)
    if same == (*key, *when) and time.time_ns() - st.st_ctime_ns > _RACY_NS:
        with _HASHES_LOCK:
            _HASHES[key] = (*when, digest)
    return digest


def verify(path: Path, deep: bool = True) -> bool:
    """Whether ``path`` is intact: a regular file whose size (and, if ``deep``, sha256) match
    its sidecar. Never raises; a missing file or sidecar is ``False``. A file unchanged since
    this process last hashed it (same inode, size, mtime and ctime) is not hashed again."""
    path = Path(path)
    try:
        meta = _read_sidecar(path)
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            return False
        if "bytes" in meta and st.st_size != meta["bytes"]:
            return False
        return not deep or _sha256_cached(path, st) == meta["sha256"]
    except OSError:  # StoreError included
        return False


def remove(path: Path) -> None:
    """Delete ``path`` and its sidecar: only for richrep's own temporary or partial files;
    a user's file, or one found corrupt, goes to :func:`quarantine`. Never inside a folder of
    a run that is a symbolic link."""
    _refuse_linked_folders(Path(path).parent)
    for p in (Path(path), sidecar(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _run_root(path: Path) -> Path:
    for d in path.parents:
        if (d / CONFIG).is_file():
            return d
    return path.parent


def quarantine(path: Path, reason: str, root: Path | None = None) -> Path:
    """Move ``path`` (and its sidecar) into ``<root>/quarantine/<UTC time>-<name>`` by an atomic
    rename, write ``<that>.reason`` holding ``reason``, and return the new path so the caller
    can log "moved X to Y: reason". ``root`` defaults to the run folder holding ``path`` (the
    nearest parent with a ``config.yaml``), else ``path``'s folder. Raises StoreError."""
    path = Path(path)
    qdir = Path(root if root is not None else _run_root(path)) / QUARANTINE
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    dest = qdir / f"{stamp}-{path.name}"
    _refuse_linked_folders(path.parent)
    _refuse_linked_folders(qdir)
    try:
        qdir.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            if not dest.exists() and not dest.is_symlink():
                break
            dest = qdir / f"{stamp}-{i}-{path.name}"
        os.rename(path, dest)
        side = sidecar(path)
        if side != path and (side.exists() or side.is_symlink()):
            os.rename(side, sidecar(dest))
    except OSError as e:
        why = "it is on another file system" if e.errno == errno.EXDEV else e.strerror or str(e)
        raise StoreError(f"cannot move {path} to {qdir}: {why}") from None
    with contextlib.suppress(OSError):
        write_atomic(dest.with_name(dest.name + ".reason"), f"{path}\n{reason}\n".encode())
    return dest
