"""Where a suite entry's rows are kept in a run folder: one results file per entry in
``results/``, named by a hash of everything its rows depend on (:func:`entry_hash`), its sidecar
recording the entry itself; ``results.jsonl`` gathers the files of the run's entries. Files of
entries the run no longer has are never removed: :func:`left_out` finds them, so that a view
without them says so."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from richrep.config import Experiment, SuiteEntry, stable_hash
from richrep.data import Task
from richrep.data.checks import ValueStats, value_range_warning
from richrep.errors import StoreError
from richrep.representations import Representation
from richrep.results import ROW_VERSION, Row
from richrep.store import read_json, read_jsonl, sidecar, verify, write_jsonl
from richrep.store.ledger import Status


def entry_hash(
    exp: Experiment, entry: SuiteEntry, reps: Sequence[Representation], status: dict[str, Status]
) -> str:
    return stable_hash(
        {
            "entry": entry.model_dump(mode="json"),
            "probe": exp.evaluation.probe.model_dump(mode="json"),
            "reps": [r.id for r in reps],
            "checkpoints": {
                k: v.meta.get("sha256") if v.ok else v.state.value
                for k, v in sorted(status.items())
            },
            "run": exp.run_id(),
            "rows": ROW_VERSION,
        }
    )


def entry_file(
    results_dir: Path,
    exp: Experiment,
    entry: SuiteEntry,
    reps: Sequence[Representation],
    status: dict[str, Status],
) -> Path:
    """The results file of ``entry``'s rows: ``results/<entry>-<hash>.jsonl``."""
    return results_dir / f"{entry.name}-{entry_hash(exp, entry, reps, status)}.jsonl"


def write_entry(path: Path, entry: SuiteEntry, rows: Sequence[Row]) -> None:
    """``entry``'s rows to ``path`` (atomically), the entry itself in its sidecar."""
    write_jsonl(path, [r.to_dict() for r in rows], {"entry": entry.model_dump(mode="json")})


def kept_rows(path: Path, entry: SuiteEntry, compute: Callable[[], list[Row]]) -> list[Row]:
    """The rows kept in ``path`` if it is intact, else ``compute()``'s, written there."""
    try:
        return [Row.from_dict(d) for d in read_jsonl(path)]
    except (StoreError, FileNotFoundError):
        rows = compute()
        write_entry(path, entry, rows)
        return rows


def entry_of(path: Path) -> str:
    """The entry name of a results file (``<entry>-<hash>.jsonl``)."""
    return path.stem.rpartition("-")[0]


def target_facts(source: ValueStats, target: Task, name: str) -> dict[str, Any]:
    """What every row of a target records about it (how its test split was made), and a
    ``warning`` when its inputs' range differs grossly from the source's."""
    facts: dict[str, Any] = {}
    info = target.recipe.get("info") or {}
    for key in ("test_split", "scaled", "reshaped"):
        if key in info:
            facts[key] = info[key]
    warn = value_range_warning(source, target.test.x, name)
    if warn:
        facts["warning"] = warn
    return facts


def put_rows(results: Path, entry: str, path: Path, rows: Sequence[Row]) -> None:
    """``results.jsonl`` with ``entry``'s rows (and source file) replaced by ``rows`` (kept in
    ``path``); the other entries' rows as they were."""
    old: list[dict[str, Any]] = []
    sources: list[str] = []
    if results.exists():
        old = [d for d in read_jsonl(results) if d.get("entry") != entry]
        meta = read_json(sidecar(results))
        sources = [s for s in meta.get("sources", []) if entry_of(Path(s)) != entry]
    rows_out = old + [r.to_dict() for r in rows]
    write_jsonl(results, rows_out, {"sources": [*sources, path.name]})


def left_out(results_dir: Path, names: Collection[str]) -> dict[str, dict[str, Any] | None]:
    """Entries with a finished results file in ``results_dir`` that are not in ``names``: each
    with its entry as recorded in the newest file's sidecar (None if an older richrep wrote
    it)."""
    newest: dict[str, Path] = {}
    files = sorted(results_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    for p in files if results_dir.is_dir() else []:
        if entry_of(p) and entry_of(p) not in names and verify(p, deep=False):
            newest[entry_of(p)] = p
    out: dict[str, dict[str, Any] | None] = {}
    for name, p in sorted(newest.items()):
        try:
            spec = read_json(sidecar(p)).get("entry")
        except (OSError, ValueError):
            spec = None
        out[name] = spec if isinstance(spec, dict) else None
    return out


def left_out_message(left: dict[str, dict[str, Any] | None], run: Path) -> str:
    """What the views leave out and how to bring each entry back (its rows are reused)."""
    how = []
    for name, spec in list(left.items())[:5]:
        text = (
            json.dumps(_short(spec), separators=(", ", ": ")) if spec else "{name: " + name + ", …}"
        )
        how.append(f"richrep evaluate {run} --entry '{text}'")
    more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
    return (
        f"results/ also holds the rows of {len(left)} entr{'y' if len(left) == 1 else 'ies'} "
        f"that are neither in the experiment's suite nor among the run's extra entries, left "
        f"out of results.jsonl and the report: {', '.join(left)}. To bring one back (its rows "
        f"are reused while the run is unchanged): " + "; ".join(how) + more
    )


def _short(spec: dict[str, Any]) -> dict[str, Any]:
    """An entry as recorded, without the fields left at their defaults (``name`` first)."""
    try:
        d = SuiteEntry.model_validate(spec).model_dump(mode="json", exclude_defaults=True)
    except ValueError:
        return spec
    return {"name": d.pop("name"), **d}
