"""One run folder's paths, its format marker and its lock (:class:`RunStore`): no code outside
the store spells a file or folder name of a run (the ledger names the checkpoints)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from richrep.errors import StoreError
from richrep.store.files import (
    CONFIG,
    QUARANTINE,
    TMP_PREFIX,
    _disk_errors,
    quarantine,
    read_json,
    write_json,
)

FORMAT = 2  # the run folder's layout; folders of another format are refused, never mixed
WORK, KEPT = "finetune_work", "finetuned"  # a protocol's resume files; weights kept on request
RUN_FOLDERS = ("checkpoints", "features", "results", "plots", QUARANTINE, "analysis", WORK, KEPT)


class RunStore:
    """Paths and atomic I/O of one run folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def sweep_temporaries(self) -> list[Path]:
        """Remove richrep's temporary files left by killed writers (``.richrep-tmp-*.tmp``,
        never a user's file, never through a link); call it only while holding the run's
        lock, when no writer of this run can be alive."""
        gone = []
        for dirpath, _, names in os.walk(self.root):  # links to folders are not followed
            for n in sorted(names):
                p = Path(dirpath) / n
                ours = n.startswith(TMP_PREFIX) and n.endswith(".tmp")
                if ours and p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)
                    gone.append(p)
        return sorted(gone)

    def refuse_links(self) -> None:
        """Raise :class:`StoreError` naming the first folder of the run that is a symbolic link
        (``checkpoints/`` pointing elsewhere would have richrep write through it)."""
        if self.root.is_dir():
            for name in RUN_FOLDERS:  # a dangling link too
                if (self.root / name).is_symlink():
                    self._linked(self.root / name)
        for dirpath, dirnames, _ in os.walk(self.root):
            for d in sorted(dirnames):
                if (Path(dirpath) / d).is_symlink():
                    self._linked(Path(dirpath) / d)

    def _linked(self, path: Path) -> None:
        raise StoreError(
            f"{path} is a symbolic link inside the run folder {self.root}; richrep will not "
            f"write through it (replace the link by a folder and run again)"
        )

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
    def extra_entries(self) -> Path:  # suite entries added by richrep evaluate, kept
        return self.root / "extra_entries.yaml"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def tracking(self) -> Path:  # what was logged to experiment trackers (runtime.track)
        return self.root / "tracking.json"

    @property
    def config(self) -> Path:
        """The resolved experiment (registry defaults filled in)."""
        return self.root / CONFIG

    @property
    def env(self) -> Path:
        """Versions, device, git commit and task hashes of the last run."""
        return self.root / "env.json"

    @property
    def analysis(self) -> Path:
        """The seed analysis's summary."""
        return self.root / "analysis" / "summary.json"

    def work(self, name: str) -> Path:
        """The resume files of one suite entry's protocol (``finetune_work/<name>/``)."""
        return self.root / WORK / name

    def kept(self, entry: str) -> Path:
        """The weights a suite entry's protocol was asked to keep (``finetuned/<entry>/``)."""
        return self.root / KEPT / entry

    def exists(self) -> bool:
        return self.config.exists()

    # -- format ---------------------------------------------------------------------------
    @property
    def _marker(self) -> Path:
        return self.root / "richrep.json"

    def check_format(self) -> None:
        """Refuse a folder written in another format (no marker: format 1, richrep 0.1)."""
        info = read_json(self._marker) if self._marker.exists() else {"format": 1}
        if not isinstance(info, dict):
            raise StoreError(
                f"{self._marker} is not a run folder marker: it holds a JSON "
                f'{type(info).__name__}, not an object like {{"format": {FORMAT}}}; was it '
                "edited by hand?"
            )
        fmt = info.get("format")
        if fmt != FORMAT:
            raise StoreError(
                f"{self.root} was written by another version of richrep (run folder format "
                f"{fmt}; this richrep reads format {FORMAT}); rerun its experiment into a new "
                f"folder (richrep run EXPERIMENT.yaml --out NEW_DIR) rather than mixing the two"
            )

    def mark_format(self, version: str) -> None:
        """Record the folder's format and the richrep ``version`` that wrote it."""
        write_json(self._marker, {"format": FORMAT, "richrep": version})

    def read_env(self) -> dict[str, Any]:
        """The environment recorded by the last run (empty when there is none)."""
        return read_json(self.env) if self.env.exists() else {}

    def quarantine(self, path: Path, reason: str) -> Path:
        """:func:`quarantine` into this run's ``quarantine/`` folder."""
        return quarantine(path, reason, root=self.root)

    def _open_lock(self) -> int:
        """``run.lock`` opened without following a symbolic link (refused: writing the holder's
        pid through it would overwrite whatever it points to)."""
        path = self.root / "run.lock"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        with _disk_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, flags, 0o666)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink():
                    raise StoreError(
                        f"{path} is a symbolic link; richrep will not write through it "
                        f"(remove it and run again)"
                    ) from None
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{path} is not a regular file; remove it and run again")
        return fd

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the run's lock (``run.lock``, fcntl): a second process waits or is told the run
        is busy. The lock dies with its process, so a killed run never leaves it stuck."""
        import fcntl

        f = os.fdopen(self._open_lock(), "r+")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.seek(0)
                holder = f.read(200).strip() or "another process"
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
