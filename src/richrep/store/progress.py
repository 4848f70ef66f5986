"""Where a run folder stands, read without writing anything: ``complete`` (its ``done``
marker), ``running`` (a process holds its lock), ``failed`` (the run's own failure record, or a
member's) or ``stopped`` (interrupted or killed: the same command resumes it), each with the
stage it reached (training and how many members are trained, evaluation).

``failed.json`` in the run folder records why the last ``richrep run`` of it failed; the next
run that gets to work clears it (:func:`recording`)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import Any

from richrep.errors import RichrepError, StoreError
from richrep.store import RunStore, read_json, write_json
from richrep.store.ledger import Ledger, State

FAILURE = "failed.json"
LOCK = "run.lock"  # RunStore.lock's file


def holder(store: RunStore) -> str | None:
    """Who holds the run's lock (``pid 1234``), or None when nobody does; the lock file is only
    read (a shared, non-blocking probe that is released at once)."""
    import fcntl

    flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK
    try:
        fd = os.open(store.root / LOCK, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 200).decode("utf-8", "replace").strip()
            return text or "another process"
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def failure(store: RunStore) -> str | None:
    """Why the last run of the folder failed, from its failure record; None without one."""
    path = store.root / FAILURE
    if not path.exists():
        return None
    try:
        return str(read_json(path).get("error") or "failed")
    except (StoreError, AttributeError) as e:
        return f"failed ({FAILURE} unreadable: {e})"


def _config_stamp(store: RunStore) -> tuple[int, int, int] | None:
    try:
        st = (store.root / "config.yaml").stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def recording(store: RunStore) -> Iterator[None]:
    """Run the body; once it has begun work on the folder (rewritten its ``config.yaml``),
    record the error it raises, or clear the record when it ends otherwise (an interruption is
    a stop, not a failure). A body that fails before that (a pre-flight check) leaves the
    folder as it was. Writing the record never hides the error."""
    before = _config_stamp(store)
    path = store.root / FAILURE
    try:
        yield
    except Exception as e:
        if _config_stamp(store) != before:
            why = str(e) if isinstance(e, RichrepError) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(OSError, StoreError):
                write_json(path, {"error": why})
        raise
    except BaseException:
        if _config_stamp(store) != before:
            path.unlink(missing_ok=True)
        raise
    if _config_stamp(store) != before:
        path.unlink(missing_ok=True)


def stage(store: RunStore) -> str:
    """Where a run got to: ``in evaluation`` (results gathered), ``evaluating``, ``in training,
    3 members trained, 1 partly`` or ``before training``."""
    if store.results.exists():
        return "after evaluation"
    with contextlib.suppress(OSError):
        if store.results_dir.is_dir() and any(store.results_dir.iterdir()):
            return "in evaluation"
    members = Ledger(store).scan()
    done = sum(s.state is State.FINISHED for s in members)
    partly = sum(s.state is State.PARTIAL for s in members)
    if not done and not partly:
        return "before training"
    what = f"{done} member{'s' * (done != 1)} trained"
    return f"in training, {what}" + (f", {partly} partly" if partly else "")


def run_state(store: RunStore) -> dict[str, Any]:
    """``{"state": running|complete|failed|stopped, "detail": ...}``, the detail reading on
    from the state: ``running (pid 12): in training, 3 members trained``, ``failed in
    evaluation: why``, ``stopped in training, … (the same command resumes it)``."""
    who = holder(store)
    if who is not None:
        return {"state": "running", "detail": f"({who}): {stage(store)}"}
    if store.done.exists():
        return {"state": "complete", "detail": ""}
    why = failure(store)
    if why is None:
        failed = [s for s in Ledger(store).scan() if s.state is State.FAILED]
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            why = f"member {failed[0].name}{more}: {failed[0].error}"
    if why is not None:
        return {"state": "failed", "detail": f"{stage(store)}: {why}"}
    return {"state": "stopped", "detail": f"{stage(store)} (the same command resumes it)"}
