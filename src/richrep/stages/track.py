"""The tracking stage: logs a run to the experiment tracker ``runtime.track`` names.

What one tracker run holds:

* params: the resolved config (``config.yaml``, but ``runtime.track``) flattened to dotted
  keys (``training.lr``, ``evaluation.suite.0.protocol.name``); a value longer than 6000
  characters is cut with a marker, and ``config.yaml`` is an artifact too;
* tags: ``richrep.run_id``, ``richrep.version``, ``richrep.results_hash``, the source commit
  (``mlflow.source.git.commit``, ``richrep.git_dirty``) when there is one;
* each member's training curve: ``member/<member>/<loss|train_acc|…>`` with step = epoch;
* the results: per cell of richrep's tables, ``<cell>/mean`` with
  ``<cell> = <entry>/<column>/<metric>/size-<n|all>`` (then ``variant-…``, ``group-…``,
  ``env-…``, ``shift-…`` where its rows have them): the mean over seeds or seed subsets, draws
  and episodes (the number the table shows) at step 0; where a cell averages several rows,
  ``<cell>/values`` holds each row's value, step i the cell's i-th row in ``results.jsonl``.
  Characters other than letters, digits, ``_ - .`` and space become ``_``;
* artifacts: ``report.html``, ``config.yaml``, ``env.json`` (the environment record),
  ``results.jsonl`` and the figures under ``plots/``.

A rerun is idempotent: ``tracking.json`` in the run folder remembers, per target (tracking URI
and experiment), the tracker run logged and a hash of what it holds (the results identity,
rows, curves, files and richrep version; not the environment or the runtime section). The
same hash at the same target with its run still there logs nothing; anything else logs a new
tracker run.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

import richrep
from richrep.config import Spec, stable_hash
from richrep.errors import StoreError
from richrep.plugins import TRACKERS
from richrep.report.tables import CELL_KEYS
from richrep.results.stats import aggregate
from richrep.run import Run
from richrep.stages.evaluate import read_results
from richrep.stages.report import members_info
from richrep.stages.trackers import Record, Tracker
from richrep.store import read_json, write_json

MAX_PARAM = 6000  # MLflow's longest param value
CUT = " …[cut: the whole value is in config.yaml]"
FIGURES = (".png", ".svg", ".pdf")


def open_tracker(spec: Spec | None) -> Tracker | None:
    """The tracker ``runtime.track`` names (None: no tracking); a missing library fails here."""
    if spec is None:
        return None
    return TRACKERS.build(spec.name, where="runtime.track", **spec.params)


def key(*parts: Any, sep: str = "/") -> str:
    """A key every tracker accepts: ``parts`` joined by ``sep``, each made of letters,
    digits, ``_ - .`` and space (never empty, ``.`` or ``..``), at most 240 characters."""
    clean = []
    for p in parts:
        s = re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(p)).strip() or "_"
        clean.append("_" + s if set(s) == {"."} else s)
    out = sep.join(clean)
    return out if len(out) <= 240 else out[:229] + "_" + stable_hash(out)


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """A config as dotted keys -> text; lists of scalars stay one value (JSON)."""
    if isinstance(obj, dict) and obj:
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and any(isinstance(v, dict | list) for v in obj):
        return {k: v for i, v in enumerate(obj) for k, v in flatten(v, f"{prefix}.{i}").items()}
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    if len(text) > MAX_PARAM:
        text = text[: MAX_PARAM - len(CUT)] + CUT
    return {key(*prefix.split("."), sep="."): text}


def curve_metrics(run: Run) -> list[tuple[str, float, int]]:
    """Each member's training history, one metric per recorded number, step = epoch."""
    out = []
    for m in members_info(run):
        history = m.get("history") if isinstance(m.get("history"), list) else []
        for i, h in enumerate(history):
            if not isinstance(h, dict):
                continue
            step = h.get("epoch", i + 1)
            step = step if isinstance(step, int) and not isinstance(step, bool) else i + 1
            for name, v in h.items():
                if name != "epoch" and _finite(v):
                    out.append((key("member", m["name"], name), float(v), step))
        if _finite(m.get("val_acc")) and not any("val_acc" in h for h in history):
            out.append((key("member", m["name"], "val_acc"), float(m["val_acc"]), len(history)))
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def row_metrics(rows: list[Any]) -> list[tuple[str, float, int]]:
    """One metric per table cell (its mean), and every row's value where a cell has several."""
    shifts: dict[str, set[str]] = {}
    for r in rows:
        shifts.setdefault(r.entry, set()).add(r.shift)
    out, used = [], set()
    for a in aggregate(rows, CELL_KEYS, metric=None):
        parts = [a["entry"], a["column"], a["metric"], f"size-{a['size']}"]
        for field, label in (("variant", "variant"), ("group", "group"), ("environment", "env")):
            if a[field] is not None:
                parts.append(f"{label}-{a[field]}")
        if len(shifts.get(a["entry"], ())) > 1:
            parts.append(f"shift-{a['shift']}")
        name = base = key(*parts)
        i = 1
        while name in used:  # two cells alike once cleaned: the later gets a number
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        out.append((f"{name}/mean", float(a["mean"]), 0))
        if len(a["values"]) > 1:
            out += [(f"{name}/values", float(v), i) for i, v in enumerate(a["values"])]
    return out


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def gather(run: Run) -> Record:
    """What ``run`` logs to a tracker (see the module's docstring)."""
    root = run.store.root
    env = run.store.read_env()
    git = env.get("git") if isinstance(env.get("git"), dict) else {}
    rows = read_results(run)
    metrics = curve_metrics(run) + row_metrics(rows)
    names = {m[0] for m in metrics}
    for name in sorted(names):  # a file store keeps a metric as a file: none inside another
        parent = next((n for n in _parents(name) if n in names), None)
        if parent:
            raise StoreError(
                f"{root}: metric {name!r} would sit under metric {parent!r}; "
                f"rename the suite entry {name.split('/')[0]!r} to track this run"
            )
    store = run.store
    files = [store.report, store.config, store.env, store.results]
    artifacts = [(p, "") for p in files if p.is_file()]
    if run.store.plots.is_dir():
        figures = sorted(p for p in run.store.plots.iterdir() if p.suffix in FIGURES)
        artifacts += [(p, "plots") for p in figures if p.is_file() and not p.is_symlink()]
    tags = {
        "richrep.run_id": root.name,
        "richrep.version": richrep.__version__,
        "richrep.results_hash": stable_hash(run.exp.results_identity()),
    }
    if git.get("commit"):
        tags |= {
            "mlflow.source.git.commit": str(git["commit"]),
            "richrep.git_dirty": str(git.get("dirty")),
        }
    digest = stable_hash(
        [tags["richrep.results_hash"], richrep.__version__, metrics, [p.name for p, _ in artifacts]]
    )
    return Record(
        run_id=root.name,
        experiment=run.exp.name,
        runs_dir=root.parent,
        params=flatten(run.exp.model_dump(mode="json", exclude={"runtime": {"track"}})),
        tags=tags,
        metrics=metrics,
        artifacts=artifacts,
        digest=digest,
    )


def track(run: Run, tracker: Tracker, *, log: Callable[[str], None] = print) -> str:
    """Log ``run`` with ``tracker`` unless this state of it was logged there already; return
    the tracker's run id."""
    name = run.exp.runtime.track.name if run.exp.runtime.track else "tracker"
    record = gather(run)
    target = tracker.target(record)
    seen: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, StoreError):  # unreadable: log again
        found = read_json(run.store.tracking)
        seen = found if isinstance(found, dict) else {}
    before = seen.get(target)
    if isinstance(before, dict) and before.get("digest") == record.digest:
        ref = str(before.get("run"))
        if tracker.logged(ref, record):
            log(f"{name}: already logged as run {ref} ({target})")
            return ref
    ref = tracker.log(record)
    seen[target] = {"run": ref, "digest": record.digest}
    write_json(run.store.tracking, seen)
    log(
        f"{name}: logged run {ref} ({target}): {len(record.metrics)} metric values, "
        f"{len(record.params)} params, {len(record.artifacts)} files"
    )
    return ref
