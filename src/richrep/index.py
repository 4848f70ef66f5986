"""The runs index: one SQLite file (stdlib) per output folder listing its runs, so
``richrep runs`` can list and compare them without summarizing every folder each time.

The folders are the source of truth and the index only a cache of their summaries:

* listing reads the index read-only and writes only when something changed (a run not yet
  indexed, a deleted run); when it cannot write (a read-only folder) it lists from memory;
* a corrupt index is moved aside (``index.sqlite.corrupt-<time>``, with a warning) and rebuilt;
* rows of deleted run folders are dropped;
* a run that cannot be summarized is listed with an ``error`` field, the others as usual;
* only complete runs (with a ``done`` marker) are kept, :func:`record` updating a run that
  completes again; unfinished and failed runs are summarized at each listing, and every run's
  ``state`` (complete, running, failed, stopped: :mod:`richrep.store.progress`) is read live.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from richrep.errors import RichrepError, StoreError
from richrep.report.text import strip_control
from richrep.store import RunStore
from richrep.store.progress import run_state

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, path TEXT, finished TEXT, dataset TEXT, encoder TEXT,
    seeds INTEGER, epochs INTEGER, rows INTEGER, headline TEXT
)
"""
COLUMNS = (
    "run_id",
    "name",
    "path",
    "finished",
    "dataset",
    "encoder",
    "seeds",
    "epochs",
    "rows",
    "headline",
)
INDEX = "index.sqlite"
# What summarizing one broken run may raise: it becomes that run's ``error``, not the listing's.
RUN_ERRORS = (RichrepError, OSError, ValueError, LookupError, TypeError, AttributeError)

Log = Callable[[str], None]


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def _db(out: Path) -> Iterator[sqlite3.Connection]:
    """The index of ``out``, opened for writing (created if missing); commits on success."""
    con = sqlite3.connect(Path(out) / INDEX, timeout=30)
    try:
        con.execute(SCHEMA)
        yield con
        con.commit()
    finally:
        con.close()


def _finished(store: RunStore) -> str | None:
    """When the run's ``done`` marker was written (ISO, seconds), or None."""
    try:
        done = store.done.stat().st_mtime
    except OSError:
        return None
    return dt.datetime.fromtimestamp(done).isoformat(timespec="seconds")


def summarize_run(store: RunStore) -> dict[str, Any] | None:
    """What the index keeps of a run: settings and catK's headline gains per target (none
    before its results exist); ``None`` for a folder that is not a run."""
    from richrep.config import load_experiment

    if not store.exists():
        return None
    exp = load_experiment(store.config)  # a broken config fails before the rest
    row = {
        "run_id": store.root.name,
        "name": exp.name,
        "path": str(store.root.resolve()),
        "finished": _finished(store),
        "dataset": exp.data.dataset,
        "encoder": exp.model.encoder,
        "seeds": len(exp.training.seed_list),
        "epochs": exp.training.epochs,
        "rows": 0,
        "headline": "{}",
    }
    if not store.results.exists():
        return row

    from richrep.report.tables import build_comparison
    from richrep.run import Run
    from richrep.stages.evaluate import read_results

    run = Run.open(store.root)
    rows = read_results(run)
    comp = build_comparison(rows, [e.name for e in run.suite])
    headline = {}
    for label, h in comp.headline().items():
        gains = {k: v for k, v in h.items() if k.startswith("gain_")}
        headline[label] = {
            "k": h.get("k"),
            "cat": h.get("cat"),
            "single": h.get("single"),
            **{k: (None if v is None else v["diff"]) for k, v in gains.items()},
            "significant": {k: bool(v and v["significant"]) for k, v in gains.items()},
        }
    return {**row, "rows": len(rows), "headline": json.dumps(headline)}


def error_row(root: Path, error: BaseException | str) -> dict[str, Any]:
    """The row of a run that cannot be summarized: its id and path, ``headline`` ``{}``, the
    other columns ``None`` and ``error`` naming the problem."""
    if isinstance(error, BaseException) and not isinstance(error, RichrepError):
        error = f"{type(error).__name__}: {error}"
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(run_id=root.name, path=str(Path(root).absolute()), headline="{}")
    row["error"] = strip_control(str(error), keep="\n")
    return row


def summarize_safely(store: RunStore) -> dict[str, Any] | None:
    """:func:`summarize_run`, with a broken run turned into its :func:`error_row`."""
    try:
        return summarize_run(store)
    except RUN_ERRORS as e:
        return error_row(store.root, e)


def run_folders(out: Path) -> list[Path]:
    """The run folders of ``out`` (folders holding a ``config.yaml``), sorted by name."""
    out = Path(out)
    try:
        entries = sorted(out.iterdir())
    except OSError as e:
        raise StoreError(f"cannot list the runs in {out}: {e.strerror or e}") from None
    found = []
    for d in entries:
        with contextlib.suppress(OSError):  # an unreadable entry is not a run we can list
            if d.is_dir() and RunStore(d).exists():
                found.append(d)
    return found


def _read_index(out: Path) -> dict[str, dict[str, Any]] | None:
    """The index's rows by run id, read without writing; ``{}`` when there is no index or it
    cannot be opened (the listing then comes from the folders), ``None`` when it is corrupt."""
    path = Path(out) / INDEX
    if not path.exists():
        return {}
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except (sqlite3.Error, OSError):
        return {}
    try:
        if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            return None
        columns = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
        if not columns:
            return {}
        if not set(COLUMNS) <= columns:
            return None  # another schema: rebuild it
        con.row_factory = sqlite3.Row
        return {r["run_id"]: dict(r) for r in con.execute("SELECT * FROM runs")}
    except sqlite3.OperationalError:  # locked, unreadable: not corrupt
        return {}
    except (sqlite3.DatabaseError, OSError):  # "file is not a database", "malformed"
        return None
    finally:
        con.close()


def _move_aside(path: Path, log: Log) -> OSError | None:
    """Move a corrupt index (and its journal files) aside; the error that prevented it."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None  # another process moved it first
    except OSError as e:
        return e
    for suffix in ("-journal", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.rename(f"{path}{suffix}", f"{dest}{suffix}")
    log(f"{path} was corrupt: moved it to {dest.name} and rebuilt the index from the run folders")
    return None


def _upsert(con: sqlite3.Connection, row: dict[str, Any]) -> None:
    values = tuple(row[c] for c in COLUMNS)
    con.execute(
        f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
        values,
    )


def _write_index(
    out: Path,
    rows: Sequence[dict[str, Any]],
    drop: Sequence[str] = (),
    *,
    replace_all: bool = False,
    corrupt: bool = False,
    log: Log = _warn,
) -> Exception | None:
    """Upsert ``rows`` (error rows and unfinished runs are skipped) and delete the ``drop`` run
    ids (or every row
    first, ``replace_all``). A corrupt index is moved aside first and the index recreated.
    Returns the error that kept the index from being written, or ``None``."""
    path = Path(out) / INDEX
    for attempt in range(2):
        if corrupt and (why := _move_aside(path, log)) is not None:
            return StoreError(f"it is corrupt and cannot be moved aside: {why.strerror or why}")
        try:
            with _db(out) as con:
                if replace_all:
                    con.execute("DELETE FROM runs")
                con.executemany("DELETE FROM runs WHERE run_id = ?", [(r,) for r in drop])
                for row in rows:
                    if _cacheable(row):
                        _upsert(con, row)
            return None
        except sqlite3.OperationalError as e:  # read-only, locked, cannot create
            return e
        except sqlite3.DatabaseError as e:  # corrupt: move aside, retry once
            if attempt:
                return e
            corrupt = True
        except OSError as e:
            return e
    return None


def _cacheable(row: dict[str, Any]) -> bool:
    """A complete run's summary (unfinished ones change: they are read at each listing)."""
    return "error" not in row and bool(row.get("finished"))


def _usable(row: dict[str, Any]) -> bool:
    if not all(c in row for c in COLUMNS):
        return False
    try:
        return isinstance(json.loads(row["headline"] or "{}"), dict)
    except (TypeError, ValueError):
        return False


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {c: row.get(c) for c in COLUMNS}
    out["headline"] = json.loads(row.get("headline") or "{}")
    for extra in ("error", "state", "detail"):
        if extra in row:
            out[extra] = row[extra]
    return out


def _with_state(row: dict[str, Any], store: RunStore) -> dict[str, Any]:
    """``row`` with the run's live ``state`` and ``detail`` (see :mod:`richrep.store.progress`)."""
    try:
        return {**row, **run_state(store)}
    except OSError as e:  # an unreadable folder: listed, with why
        return {**row, "state": "unknown", "detail": str(e)}


def _sorted(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Public rows, oldest first (unfinished and broken runs, ``finished`` None, first)."""
    return sorted((_public(r) for r in rows), key=lambda r: (r["finished"] or "", r["run_id"]))


def record(store: RunStore, log: Log | None = None) -> None:
    """Add (or update) a finished run in its output folder's index. The index is a cache: when
    it cannot be written the problem is logged (``log``, default a warning), not raised, and
    :func:`list_runs` lists the run from its folder."""
    row = summarize_run(store)
    if row is None:
        return
    out = store.root.parent
    err = _write_index(out, [row], log=log or _warn)
    if err is not None:
        (log or _warn)(
            f"could not record {store.root.name} in {out / INDEX} ({err}); "
            f"`richrep runs` lists it from its folder"
        )


def rebuild(out: Path, log: Log | None = None) -> list[dict[str, Any]]:
    """Recreate the index of ``out`` from its run folders (a corrupt one is moved aside) and
    return every run's row, broken runs as :func:`error_row`. Raises StoreError when the index
    cannot be written."""
    out = Path(out)
    stores = [RunStore(d) for d in run_folders(out)]
    rows = [(r, s) for s in stores if (r := summarize_safely(s)) is not None]
    err = _write_index(
        out,
        [r for r, _ in rows],
        replace_all=True,
        corrupt=_read_index(out) is None,
        log=log or _warn,
    )
    if err is not None:
        raise StoreError(f"cannot write the index {out / INDEX}: {err}")
    return _sorted([_with_state(r, s) for r, s in rows])


def list_runs(out: Path, log: Log | None = None) -> list[dict[str, Any]]:
    """The runs of ``out``, oldest first (unfinished ``finished`` first): the index's columns
    with ``headline`` decoded to a dict, the run's ``state`` and ``detail``, and an ``error``
    key on a run that cannot be summarized (its other columns ``None``, ``headline`` ``{}``).

    Reads the index read-only; summarizes only runs it lacks; writes only when something
    changed, and never fails for an index it cannot write or read (see the module docstring).
    Raises StoreError only when ``out`` itself cannot be listed."""
    out = Path(out)
    log = log or _warn
    folders = run_folders(out)
    cached = _read_index(out)
    rows, fresh = [], []
    for d in folders:
        store = RunStore(d)
        row = (cached or {}).get(d.name)
        if row is None or not _usable(row) or not _finished(store):
            row = summarize_safely(store)
            if row is None:
                continue
            fresh.append(row)
        rows.append(_with_state(row, store))
    names = {d.name for d in folders}
    stale = [d.name for d in folders if d.name in (cached or {}) and not _finished(RunStore(d))]
    drop = sorted({r for r in (cached or {}) if r not in names} | set(stale))
    if cached is None or drop or any(_cacheable(r) for r in fresh):
        err = _write_index(out, fresh, drop, corrupt=cached is None, log=log)
        if err is not None:
            log(f"{out / INDEX} not updated ({err}); listed the runs from their folders")
    return _sorted(rows)
