"""Train a run's members into its store, reusing every finished checkpoint.

The local engine trains, in this process, the seeds of one architecture together (see
:mod:`richrep.training.multiseed` for the strategies); a member whose loss diverges is recorded
as failed (``<member>.failed.json``) and the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from richrep.config import Experiment
from richrep.data import Task
from richrep.errors import StoreError
from richrep.models import count_params
from richrep.store import RunStore, load_tensors, remove, write_json
from richrep.training.checkpoint import save_checkpoint
from richrep.training.device import resolve_device, resolve_precision, set_threads
from richrep.training.loop import accuracy
from richrep.training.members import Member, build_model

Progress = Callable[[str, int, int], None]  # (member, done, total)


def finished(store: RunStore, member: str) -> dict[str, Any] | None:
    """The sidecar of ``member``'s final checkpoint if it exists and its hash checks out."""
    path = store.checkpoint(member)
    if not path.exists():
        return None
    try:
        return load_tensors(path)[1]
    except StoreError:
        remove(path)  # truncated or tampered: retrain, never use
        return None


def finalize(
    exp: Experiment,
    task: Task,
    member: Member,
    model: torch.nn.Module,
    history: list[dict[str, Any]],
    store: RunStore,
    device: torch.device,
    dtype: torch.dtype,
    strategy: str,
) -> dict[str, Any]:
    """Save a trained member's final checkpoint with its metrics; drop its epoch checkpoint."""
    meta = {
        "member": member.to_dict(),
        "encoder_params": count_params(model.encoder),
        "feature_dim": model.encoder.feature_dim,
        "val_acc": accuracy(model, task.val, device, dtype),
        "history": history,
        "train_seconds": sum(h["seconds"] for h in history),
        "device": str(device),
        "precision": str(dtype).replace("torch.", ""),
        "strategy": strategy,
        "task_hash": task.hash,
    }
    digest = save_checkpoint(store.checkpoint(member.name), model.cpu(), **meta)
    remove(store.checkpoint(member.name, partial=True))
    return {"sha256": digest, **meta}


def groups_of(members: Sequence[Member]) -> list[list[Member]]:
    """Members of one architecture (same kind, K, width, feature size) train together."""
    out: dict[tuple, list[Member]] = {}
    for m in members:
        out.setdefault((m.kind, m.k, m.width, m.feature_dim), []).append(m)
    return list(out.values())


@dataclass(frozen=True)
class WorkUnit:
    """Members the local engine trains together: folded into one module (``strategy`` ``fused``)
    or alone (``sequential``), on ``threads`` intra-op threads."""

    members: tuple[Member, ...]
    strategy: str
    threads: int


def work_units(
    exp: Experiment, task: Task, members: Sequence[Member], budget: int
) -> list[WorkUnit]:
    """The units of work the local engine runs for ``members`` with ``budget`` threads (see
    :func:`~richrep.training.multiseed.plan_units`). Each unit trained on its own with its
    strategy and thread count does the same arithmetic as inside the local engine, which is
    how the Ray engine gives bit-identical weights."""
    from richrep.training.multiseed import choose_strategy, plan_units

    device = resolve_device(exp.training.device)
    out = []
    for group in groups_of(members):
        strategy = exp.training.strategy
        if strategy == "auto":
            models = [build_model(m, exp, task) for m in group]
            strategy = choose_strategy(models, device, threads=budget)
        for u in plan_units(len(group), strategy, budget):
            out.append(
                WorkUnit(
                    tuple(group[i] for i in u.indices),
                    "fused" if u.fused else "sequential",
                    u.threads,
                )
            )
    return out


def train_local(
    exp: Experiment,
    task: Task,
    members: Sequence[Member],
    store: RunStore,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every unfinished member in this process, seeds of one architecture together
    through :func:`~richrep.training.multiseed.train_group` (its strategy from
    ``training.strategy``); return member name -> sidecar metadata. A member whose loss
    diverges is recorded as failed and the others go on."""
    from richrep.training.multiseed import train_group

    set_threads(exp.training.threads)
    device = resolve_device(exp.training.device)
    dtype = resolve_precision(exp.training.precision, device)
    results, todo = split_finished(store, members, progress)
    for group in groups_of(todo):
        models = [build_model(m, exp, task) for m in group]
        outs = train_group(
            models,
            task.train,
            exp.training,
            [m.seed for m in group],
            device=device,
            dtype=dtype,
            partial_paths=[store.checkpoint(m.name, partial=True) for m in group],
            members=[m.name for m in group],
            strategy=exp.training.strategy,
            on_step=(lambda k, d, t, g=group: progress(g[k].name, d, t)) if progress else None,
        )
        for m, model, out in zip(group, models, outs, strict=True):
            if "failed" in out:
                results[m.name] = record_failure(store, m, out["failed"])
                continue
            remove(failed_path(store, m.name))
            results[m.name] = finalize(
                exp, task, m, model, out["history"], store, device, dtype, out["strategy"]
            )
    return {m.name: results[m.name] for m in members}


def failed_path(store: RunStore, member: str):  # noqa: ANN201
    return store.checkpoints / f"{member}.failed.json"


def split_finished(
    store: RunStore, members: Sequence[Member], progress: Progress | None = None
) -> tuple[dict[str, dict[str, Any]], list[Member]]:
    """Sidecars of the members already finished (reported to ``progress`` as done) and the
    members still to train."""
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for m in members:
        meta = finished(store, m.name)
        if meta is None:
            todo.append(m)
            continue
        results[m.name] = meta
        if progress:
            progress(m.name, 1, 1)
    return results, todo


def record_failure(store: RunStore, member: Member, error: str) -> dict[str, str]:
    """Record that ``member`` diverged (``<member>.failed.json``); its status entry."""
    write_json(failed_path(store, member.name), {"member": member.to_dict(), "error": error})
    return {"failed": error}


def load_member(exp: Experiment, task: Task, member: Member, store: RunStore) -> torch.nn.Module:
    """The trained classifier of ``member`` from the store (checked against its sha256)."""
    from richrep.training.checkpoint import load_checkpoint

    model = build_model(member, exp, task)
    load_checkpoint(store.checkpoint(member.name), model)
    return model.eval()


def train_with_engine(
    exp: Experiment,
    task: Task,
    members: Sequence[Member],
    store: RunStore,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Dispatch to the engine the experiment asks for (``training.engine``)."""
    if exp.training.engine == "ray":
        from richrep.training.ray_engine import train_ray

        return train_ray(exp, task, members, store, progress)
    return train_local(exp, task, members, store, progress)
