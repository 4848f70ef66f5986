"""Evaluate a run's representations over its suite, one results file per suite entry.

An entry's file name carries a hash of everything its rows depend on (the entry, the probe,
the representations and the checkpoints' sha256), so a rerun evaluates only what changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from richrep.config import Experiment, SuiteEntry, stable_hash
from richrep.data import Task, apply_shifts
from richrep.errors import StoreError
from richrep.evaluation.protocols import PROTOCOLS, Context, Row
from richrep.representations import FeatureCache, Featurizer, Representation, plan_representations
from richrep.store import RunStore, read_json, write_atomic
from richrep.training.device import resolve_device, resolve_precision
from richrep.training.engine import failed_path, finished
from richrep.training.members import Member, build_model

Log = Callable[[str], None]


def member_status(store: RunStore, members: Sequence[Member]) -> dict[str, dict[str, Any]]:
    """Sidecar metadata of each finished member; ``{"failed": why}`` for members that diverged."""
    out: dict[str, dict[str, Any]] = {}
    for m in members:
        meta = finished(store, m.name)
        if meta is not None:
            out[m.name] = meta
        elif failed_path(store, m.name).exists():
            out[m.name] = {"failed": read_json(failed_path(store, m.name)).get("error", "failed")}
    return out


def representations(
    exp: Experiment, source: Task, members: Sequence[Member], status: dict[str, dict[str, Any]]
) -> list[Representation]:
    input_dim = 1
    for s in source.input_shape:
        input_dim *= s
    return plan_representations(
        members,
        status,
        input_dim=input_dim,
        subsets=exp.evaluation.subsets,
        floors=exp.evaluation.floors,
        seed=exp.seed,
    )


def load_encoders(
    exp: Experiment,
    source: Task,
    members: Sequence[Member],
    store: RunStore,
    status: dict[str, dict[str, Any]],
) -> dict[str, torch.nn.Module]:
    """Trained encoders by member name, and ``random-s<seed>`` untrained encoders of each seed."""
    from richrep.training.checkpoint import load_checkpoint

    encoders: dict[str, torch.nn.Module] = {}
    for m in members:
        if m.name not in status or "failed" in status[m.name]:
            continue
        model = build_model(m, exp, source)
        if m.kind == "single":
            encoders[f"random-s{m.seed}"] = build_model(m, exp, source).encoder.eval()
        load_checkpoint(store.checkpoint(m.name), model)
        encoders[m.name] = model.encoder.eval()
    return encoders


def entry_hash(
    exp: Experiment,
    entry: SuiteEntry,
    reps: Sequence[Representation],
    status: dict[str, dict[str, Any]],
) -> str:
    return stable_hash(
        {
            "entry": entry.model_dump(mode="json"),
            "probe": exp.evaluation.probe.model_dump(mode="json"),
            "reps": [r.id for r in reps],
            "checkpoints": {k: v.get("sha256", v.get("failed")) for k, v in sorted(status.items())},
            "run": exp.run_id(),
            "version": 1,
        }
    )


def evaluate_run(
    exp: Experiment,
    source: Task,
    members: Sequence[Member],
    store: RunStore,
    log: Log = print,
    base: Task | None = None,
) -> list[Row]:
    """Evaluate every suite entry not yet evaluated; gather all rows into ``results.jsonl``."""
    from richrep.pipeline import base_task

    status = member_status(store, members)
    if not any(
        m.kind == "single" and m.name in status and "failed" not in status[m.name] for m in members
    ):
        raise StoreError(
            f"{store.root} has no trained seeds to evaluate; run the train stage first"
        )
    reps = representations(exp, source, members, status)
    device = resolve_device(exp.evaluation.device)
    dtype = resolve_precision(exp.training.precision, device)
    ctx: Context | None = None
    base = base
    files = []
    for entry in exp.evaluation.suite:
        path = store.results_dir / f"{entry.name}-{entry_hash(exp, entry, reps, status)}.jsonl"
        files.append(path)
        if path.exists():
            log(f"{entry.name}: reused {path.name}")
            continue
        if ctx is None:
            encoders = load_encoders(exp, source, members, store, status)
            ctx = Context(
                Featurizer(encoders, device=device, dtype=dtype, cache=FeatureCache()),
                source,
                exp.evaluation.probe,
                exp.seed,
                device=str(device),
            )
            base = base if base is not None else base_task(exp)
        t0 = time.perf_counter()
        target = apply_shifts(
            base, [s.as_tuple() for s in entry.shifts], where=f"evaluation.suite.{entry.name}"
        )
        protocol = PROTOCOLS.entry(entry.protocol).fn
        shift = "|".join(s.label() for s in entry.shifts) or "none"
        rows = []
        for rep in reps:
            for r in protocol(ctx, rep, target, entry):
                rows.append({"run": exp.run_id(), "entry": entry.name, "shift": shift, **r})
        write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
        log(f"{entry.name}: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    all_rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line]
    write_atomic(
        store.results, "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rows).encode()
    )
    return all_rows


def read_results(store: RunStore) -> list[Row]:
    if not store.results.exists():
        raise StoreError(
            f"{store.root} has no results.jsonl yet; run `richrep run` (or --only evaluate) first"
        )
    return [json.loads(line) for line in store.results.read_text().splitlines() if line.strip()]
