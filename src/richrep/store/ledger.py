"""The member ledger of a run folder: which members are finished, failed, partially trained,
missing or corrupt. The only code that knows how checkpoint files are named::

    checkpoints/<member>.safetensors + .json   finished (sidecar: sha256, metrics, history)
    checkpoints/<member>.partial.safetensors   the epoch checkpoint training resumes from
    checkpoints/<member>.failed.json           why the member failed (e.g. its loss diverged)
    checkpoints/<member>.worker                a Ray worker is training it (pid)

Reading a finished member checks its sha256; a file that does not match, or has lost its
sidecar, is moved to the run's ``quarantine/`` folder (never deleted) and reported as corrupt.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from richrep.errors import StoreError
from richrep.store import (
    RunStore,
    quarantine,
    read_json,
    remove,
    sidecar,
    verify,
    write_atomic,
    write_json,
)


class State(enum.Enum):
    FINISHED = "finished"
    FAILED = "failed"
    PARTIAL = "partial"  # an epoch checkpoint exists: training resumes from it
    MISSING = "missing"
    CORRUPT = "corrupt"  # its checkpoint did not match its sha256 (now in quarantine/)


@dataclass(frozen=True)
class Status:
    name: str
    state: State
    meta: dict[str, Any] = field(default_factory=dict)  # the finished sidecar
    error: str = ""  # why it failed / what was wrong

    @property
    def ok(self) -> bool:
        return self.state is State.FINISHED


class Ledger:
    """Member states of one run folder."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    # -- paths ----------------------------------------------------------------------------
    def final(self, member: str) -> Path:
        return self.store.checkpoints / f"{member}.safetensors"

    def partial(self, member: str) -> Path:
        return self.store.checkpoints / f"{member}.partial.safetensors"

    def failure(self, member: str) -> Path:
        return self.store.checkpoints / f"{member}.failed.json"

    def worker(self, member: str) -> Path:
        return self.store.checkpoints / f"{member}.worker"

    # -- states ---------------------------------------------------------------------------
    def looks_finished(self, member: str) -> bool:
        """Whether ``member`` has a finished checkpoint and its sidecar, neither verified nor
        moved (an estimate of the work left; :meth:`status` is the verdict)."""
        return self.final(member).exists() and sidecar(self.final(member)).exists()

    def status(self, member: str) -> Status:
        """The member's state; a finished checkpoint is verified (sha256) on the way, and one
        that fails (or has no sidecar) is moved to quarantine/ and reported as corrupt."""
        path, side = self.final(member), sidecar(self.final(member))
        if path.exists() and not side.exists():  # killed before its sidecar, or it was deleted
            why = f"checkpoint {path.name} has no sidecar {side.name} to vouch for it"
            moved = quarantine(path, why, root=self.store.root)
            return Status(member, State.CORRUPT, error=f"{why}; moved to {moved}")
        if side.exists():
            if verify(path):
                try:
                    return Status(member, State.FINISHED, read_json(side))
                except StoreError:
                    pass
            why = f"checkpoint {path.name} does not match its recorded sha256 (truncated, modified or missing)"
            moved = quarantine(side if not path.exists() else path, why, root=self.store.root)
            return Status(member, State.CORRUPT, error=f"{why}; moved to {moved}")
        if self.failure(member).exists():
            try:
                why = read_json(self.failure(member)).get("error", "failed")
            except StoreError as e:
                why = str(e)
            return Status(member, State.FAILED, error=str(why))
        if self.partial(member).exists():
            return Status(member, State.PARTIAL)
        return Status(member, State.MISSING)

    def scan(self) -> list[Status]:
        """The members ``checkpoints/`` holds files of, by file name alone (no plan, no sha256
        check, nothing moved): finished (a checkpoint with its sidecar), failed (with why),
        partial; sorted by name."""
        try:
            names = sorted(p.name for p in self.store.checkpoints.iterdir())
        except OSError:
            return []
        have = set(names)
        out: dict[str, Status] = {}
        for n in names:
            if n.endswith(".failed.json"):
                m = n.removesuffix(".failed.json")
                try:
                    why = str(read_json(self.failure(m)).get("error", "failed"))
                except (StoreError, AttributeError) as e:
                    why = str(e) or "failed"
                out[m] = Status(m, State.FAILED, error=why)
            elif n.endswith(".partial.safetensors"):
                m = n.removesuffix(".partial.safetensors")
                out.setdefault(m, Status(m, State.PARTIAL))
            elif n.endswith(".safetensors"):
                m = n.removesuffix(".safetensors")
                if sidecar(self.final(m)).name in have:
                    out[m] = Status(m, State.FINISHED)
        return [out[m] for m in sorted(out)]

    def statuses(self, members: Iterable[str]) -> dict[str, Status]:
        return {m: self.status(m) for m in members}

    def finished(self, members: Iterable[str]) -> list[str]:
        return [m for m, s in self.statuses(members).items() if s.ok]

    def strays(self, members: Iterable[str]) -> list[Path]:
        """Files in ``checkpoints/`` that belong to no planned member (ignored, never read)."""
        if not self.store.checkpoints.is_dir():
            return []
        own = set()
        for m in members:
            own |= {
                self.final(m),
                sidecar(self.final(m)),
                self.partial(m),
                sidecar(self.partial(m)),
            }
            own |= {self.failure(m), self.worker(m)}
        return sorted(
            p
            for p in self.store.checkpoints.iterdir()
            if p not in own and not p.name.startswith(".")
        )

    # -- records --------------------------------------------------------------------------
    def record_failure(self, member: str, error: str, info: dict[str, Any] | None = None) -> None:
        write_json(self.failure(member), {"member": info or {"name": member}, "error": error})

    def clear_failure(self, member: str) -> None:
        self.failure(member).unlink(missing_ok=True)

    def mark_worker(self, member: str) -> None:
        write_atomic(self.worker(member), f"{os.getpid()}\n".encode())

    def unmark_worker(self, member: str) -> None:
        self.worker(member).unlink(missing_ok=True)

    def drop_partial(self, member: str) -> None:
        remove(self.partial(member))

    def sidecars(self, members: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The finished sidecar of each finished member (the run's members table)."""
        return {m: s.meta for m, s in self.statuses(members).items() if s.ok}

    def records(self) -> dict[str, dict[str, Any]]:
        """The sidecar of every finished checkpoint in ``checkpoints/``, by member name (the
        planned members or not), read without hashing the weights: only the file's size is
        checked. What each member cost to train, without building the run's data."""
        out: dict[str, dict[str, Any]] = {}
        if not self.store.checkpoints.is_dir():
            return out
        for path in sorted(self.store.checkpoints.glob("*.safetensors")):
            name = path.name.removesuffix(".safetensors")
            if path != self.final(name) or name.endswith(".partial"):
                continue
            if not verify(path, deep=False):
                continue
            try:
                meta = read_json(sidecar(path))
            except (OSError, StoreError):
                continue
            if isinstance(meta, dict):
                out[name] = meta
        return out
