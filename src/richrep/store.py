"""The run store: one folder per run, ``<out>/<name>-<hash>/``, written atomically and resumable.

Layout::

    config.yaml          the resolved experiment (registry defaults filled in)
    env.json             versions, device, git commit, task hashes
    checkpoints/         <member>.safetensors + <member>.json (sha256, metrics, status);
                         <member>.partial.* while a member trains (resume point)
    features/            cached features, one safetensors file per (representation, data)
    results/             <suite entry>-<hash>.jsonl, one file per evaluated suite entry
    results.jsonl        the tidy rows of the current suite, gathered from results/
    plots/, report.html  the report
    done                 written last: the run is complete

The folder's hash covers what determines the trained models (data, model, training), so a
changed evaluation suite reuses the training and evaluates only the new entries (DomainBed's
sweep does the same with its argument hash and ``done`` marker).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from richrep.errors import StoreError


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mkstemp(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` with the permissions a plain ``open`` would give."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())
    return fd, tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename: readers see the old
    file or the new one, never a part."""
    path = Path(path)
    with _disk_errors(path):
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
    """Save tensors as safetensors atomically, then a sidecar ``.json`` holding the file's
    sha256 and ``meta``; return the hash. The sidecar is written last: no sidecar, no file."""
    path = Path(path)
    with _disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _mkstemp(path)
        os.close(fd)
        try:
            clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(clean, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            digest = sha256_file(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    write_json(sidecar(path), {"sha256": digest, **(meta or {})})
    return digest


def sidecar(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file after checking its sha256 against the sidecar.

    Raises :class:`StoreError` when the sidecar is missing or the file is truncated, tampered
    with or unreadable; callers retrain or recompute, never use a bad file.
    """
    path = Path(path)
    try:
        meta = read_json(sidecar(path))
    except FileNotFoundError:
        raise StoreError(
            f"{path} has no sidecar {sidecar(path).name}: it was never finished"
        ) from None
    if not path.exists():
        raise StoreError(f"{path} is missing (its sidecar exists)")
    if sha256_file(path) != meta.get("sha256"):
        raise StoreError(f"{path} does not match its recorded sha256: truncated or modified")
    try:
        return load_file(path), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise StoreError(f"{path} is not a readable safetensors file ({e})") from None


def remove(path: Path) -> None:
    for p in (Path(path), sidecar(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


class RunStore:
    """Paths and atomic I/O of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def results(self) -> Path:
        return self.root / "results.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def done(self) -> Path:
        return self.root / "done"

    def checkpoint(self, member: str, partial: bool = False) -> Path:
        return self.checkpoints / (
            f"{member}.partial.safetensors" if partial else f"{member}.safetensors"
        )

    def exists(self) -> bool:
        return (self.root / "config.yaml").exists()

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the run's lock (``run.lock``, fcntl): a second process waits or is told the run
        is busy. The lock dies with its process, so a killed run never leaves it stuck."""
        import fcntl

        with _disk_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.root / "run.lock", "a+")  # noqa: SIM115
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise StoreError(
                    f"run {self.root} is busy: {holder} is working on it; wait for it to finish "
                    f"(or pass --wait to queue behind it)"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            yield
        finally:
            f.close()
