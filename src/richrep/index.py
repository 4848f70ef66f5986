"""The runs index: one SQLite file (stdlib) per output folder listing its runs, so
``richrep runs`` can list and compare them without opening every folder.

Rows are upserted when a run finishes; the folders stay the source of truth, and
:func:`rebuild` recreates the index from them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from richrep.store import RunStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, path TEXT, finished TEXT, dataset TEXT, encoder TEXT,
    seeds INTEGER, epochs INTEGER, rows INTEGER, headline TEXT
)
"""


@contextlib.contextmanager
def _db(out: Path) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(out / "index.sqlite", timeout=30)
    try:
        con.execute(SCHEMA)
        yield con
        con.commit()
    finally:
        con.close()


def summarize_run(store: RunStore) -> dict[str, Any] | None:
    """What the index keeps of a finished run: settings and catK's headline gains per target."""
    from richrep.config import load_experiment
    from richrep.evaluation.suite import read_results
    from richrep.report.tables import build_comparison

    if not store.exists() or not store.results.exists():
        return None
    exp = load_experiment(store.root / "config.yaml")
    rows = read_results(store)
    comp = build_comparison(rows, [e.name for e in exp.evaluation.suite])
    headline = {
        label: {
            "cat": cells[comp.cat_max].mean if comp.cat_max in cells else None,
            "single": cells["single"].mean if "single" in cells else None,
            "gain_single": gs,
            "gain_wide": gw,
        }
        for (label, cells), (_, gs, gw) in zip(comp.rows, comp.gains, strict=True)
    }
    done = store.done.stat().st_mtime if store.done.exists() else None
    return {
        "run_id": store.root.name,
        "name": exp.name,
        "path": str(store.root.resolve()),
        "finished": dt.datetime.fromtimestamp(done).isoformat(timespec="seconds") if done else None,
        "dataset": exp.data.dataset,
        "encoder": exp.model.encoder,
        "seeds": len(exp.training.seed_list),
        "epochs": exp.training.epochs,
        "rows": len(rows),
        "headline": json.dumps(headline),
    }


def record(store: RunStore) -> None:
    row = summarize_run(store)
    if row is None:
        return
    with _db(store.root.parent) as con:
        con.execute(
            f"INSERT OR REPLACE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )


def rebuild(out: Path) -> None:
    for d in sorted(Path(out).iterdir()):
        if d.is_dir() and (d / "config.yaml").exists():
            record(RunStore(d))


def list_runs(out: Path) -> list[dict[str, Any]]:
    out = Path(out)
    if not (out / "index.sqlite").exists():
        rebuild(out)
    with _db(out) as con:
        con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY finished")]
    for r in rows:
        r["headline"] = json.loads(r["headline"] or "{}")
    return rows
