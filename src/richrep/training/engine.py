"""Train a run's members into its store, reusing every finished checkpoint.

The local engine trains members one after another in this process; a member whose loss
diverges is recorded as failed (``<member>.failed.json``) and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from richrep.config import Experiment
from richrep.data import Task
from richrep.errors import StoreError, TrainingError
from richrep.models import count_params
from richrep.store import RunStore, load_tensors, remove, write_json
from richrep.training.checkpoint import save_checkpoint
from richrep.training.device import resolve_device, resolve_precision, set_threads
from richrep.training.loop import accuracy, train_member
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


def train_one(exp: Experiment, task: Task, member: Member, store: RunStore,
              progress: Progress | None = None) -> dict[str, Any]:  # fmt: skip
    """Train ``member`` (resuming from its epoch checkpoint) and save its final checkpoint."""
    device = resolve_device(exp.training.device)
    dtype = resolve_precision(exp.training.precision, device)
    model = build_model(member, exp, task)
    t0 = time.perf_counter()
    out = train_member(
        model, task.train, exp.training, member.seed, device=device, dtype=dtype,
        partial_path=store.checkpoint(member.name, partial=True), member=member.name,
        on_step=(lambda d, t: progress(member.name, d, t)) if progress else None,
    )  # fmt: skip
    meta = {
        "member": member.to_dict(),
        "encoder_params": count_params(model.encoder),
        "feature_dim": model.encoder.feature_dim,
        "val_acc": accuracy(model, task.val, device, dtype),
        "history": out["history"],
        "train_seconds": time.perf_counter() - t0,
        "device": str(device),
        "precision": str(dtype).replace("torch.", ""),
        "task_hash": task.hash,
    }
    digest = save_checkpoint(store.checkpoint(member.name), model.cpu(), **meta)
    remove(store.checkpoint(member.name, partial=True))
    return {"sha256": digest, **meta}


def train_local(exp: Experiment, task: Task, members: Sequence[Member], store: RunStore,
                progress: Progress | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Train every unfinished member in this process; return member name -> sidecar metadata."""
    set_threads(exp.training.threads)
    results: dict[str, dict[str, Any]] = {}
    for m in members:
        meta = finished(store, m.name)
        if meta is None:
            try:
                meta = train_one(exp, task, m, store, progress)
                remove(failed_path(store, m.name))
            except TrainingError as e:
                write_json(failed_path(store, m.name), {"member": m.to_dict(), "error": str(e)})
                results[m.name] = {"failed": str(e)}
                continue
        elif progress:
            progress(m.name, 1, 1)
        results[m.name] = meta
    return results


def failed_path(store: RunStore, member: str):  # noqa: ANN201
    return store.checkpoints / f"{member}.failed.json"


def load_member(exp: Experiment, task: Task, member: Member, store: RunStore) -> torch.nn.Module:
    """The trained classifier of ``member`` from the store (checked against its sha256)."""
    from richrep.training.checkpoint import load_checkpoint

    model = build_model(member, exp, task)
    load_checkpoint(store.checkpoint(member.name), model)
    return model.eval()


def train_with_engine(exp: Experiment, task: Task, members: Sequence[Member], store: RunStore,
                      progress: Progress | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Dispatch to the engine the experiment asks for (``training.engine``)."""
    if exp.training.engine == "ray":
        from richrep.training.ray_engine import train_ray

        return train_ray(exp, task, members, store, progress)
    return train_local(exp, task, members, store, progress)
