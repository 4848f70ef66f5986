"""The local engine: trains a run's members in this process, teachers before students, the
members of one architecture together (:func:`~richrep.training.workers.train_group`), reusing
every finished checkpoint. A member whose loss diverges is recorded as failed and the others
go on; a student whose teacher failed is recorded as failed too."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from richrep.config import Experiment
from richrep.data import Task
from richrep.members import Member, MemberKind, kind_of, waves
from richrep.models import Classifier, count_params
from richrep.plugins import ENGINES
from richrep.runtime.device import resolve_device, resolve_precision
from richrep.runtime.progress import note
from richrep.runtime.threads import ThreadBudget
from richrep.store import RunStore
from richrep.store.ledger import Ledger, State, Status
from richrep.training.checkpoint import load_checkpoint, save_checkpoint
from richrep.training.engines.base import Progress
from richrep.training.plan import Unit, choose_strategy, plan_units
from richrep.training.workers import train_group


def load_member(exp: Experiment, task: Task, member: Member, store: RunStore) -> Classifier:
    """The trained classifier of ``member`` from the store (checked against its sha256)."""
    model = kind_of(member).build(member, exp, task)
    load_checkpoint(Ledger(store).final(member.name), model)
    return model.eval()


def groups_of(members: Sequence[Member]) -> list[list[Member]]:
    """Members that train together: one kind, architecture, arguments and teachers."""
    out: dict[tuple, list[Member]] = {}
    for m in members:
        key = (
            m.kind,
            m.k,
            m.width,
            m.feature_dim,
            json.dumps(m.params, sort_keys=True),
            m.requires,
        )
        out.setdefault(key, []).append(m)
    return list(out.values())


@dataclass(frozen=True)
class WorkUnit:
    """Members the local engine trains together: folded into one module (``fused``) or alone
    (``sequential``), on ``threads`` intra-op threads."""

    members: tuple[Member, ...]
    strategy: str
    threads: int


def resolve_strategy(
    exp: Experiment, task: Task, group: Sequence[Member], budget: ThreadBudget
) -> str:
    """The strategy of a group: ``runtime.strategy``, or for ``auto`` the one
    :func:`~richrep.training.plan.choose_strategy` picks for the whole group."""
    if exp.runtime.strategy != "auto":
        return exp.runtime.strategy
    kind = kind_of(group[0])
    models = [kind.build(m, exp, task) for m in group]
    folds = kind.objective(group[0], exp).folds()
    return choose_strategy(models, resolve_device(exp.runtime.device), budget, folds=folds)


def work_units(
    exp: Experiment, task: Task, members: Sequence[Member], budget: ThreadBudget
) -> list[WorkUnit]:
    """The units of work the local engine runs for ``members`` (one wave, finished members
    included) with the thread ``budget`` (:func:`~richrep.training.plan.plan_units`). Units are
    planned from the experiment alone, so a member retrained later, alone, keeps its unit's
    arithmetic; each unit trained on its own with its strategy and thread count does the same
    arithmetic as inside the local engine, which is how the Ray engine gives bit-identical
    weights."""
    out = []
    for group in groups_of(members):
        strategy = resolve_strategy(exp, task, group, budget)
        for u in plan_units(len(group), strategy, budget):
            out.append(
                WorkUnit(
                    tuple(group[i] for i in u.indices),
                    "fused" if u.fused else "sequential",
                    u.threads,
                )
            )
    return out


def finalize(
    exp: Experiment,
    task: Task,
    member: Member,
    model: Classifier,
    history: list[dict[str, Any]],
    ledger: Ledger,
    device: torch.device,
    dtype: torch.dtype,
    strategy: str,
) -> dict[str, Any]:
    """Save a trained member's final checkpoint with its metrics; drop its epoch checkpoint."""
    val, metric = kind_of(member).objective(member, exp).score(model, task, device, dtype)
    meta = {
        "member": member.to_dict(),
        "encoder_params": count_params(model.encoder),
        "feature_dim": model.encoder.feature_dim,
        "val_acc": val,  # the objective's score (a self-supervised one: k-NN on features)
        "val_metric": metric,
        "history": history,
        "train_seconds": sum(h["seconds"] for h in history),
        "device": str(device),
        "precision": str(dtype).replace("torch.", ""),
        "strategy": strategy,
        "task_hash": task.hash,
    }
    digest = save_checkpoint(ledger.final(member.name), model.cpu(), **meta)
    ledger.drop_partial(member.name)
    ledger.clear_failure(member.name)
    return {"sha256": digest, **meta}


def sort_wave(
    wave: Sequence[Member],
    ledger: Ledger,
    earlier: dict[str, Status],
    progress: Progress | None = None,
) -> tuple[dict[str, Status], list[Member]]:
    """The wave's finished members (reported to ``progress`` as done), students whose teachers
    did not train (recorded as failed, with why), and the members still to train."""
    status: dict[str, Status] = {}
    todo = []
    for m in wave:
        s = ledger.status(m.name)
        if s.ok:
            status[m.name] = s
            if progress:
                progress(m.name, 1, 1)
            continue
        bad = [r for r in m.requires if not (earlier.get(r) or ledger.status(r)).ok]
        if bad:
            why = f"its teacher(s) {', '.join(bad)} did not train"
            ledger.record_failure(m.name, why, m.to_dict())
            status[m.name] = Status(m.name, State.FAILED, error=why)
            continue
        todo.append(m)
    return status, todo


def train_local(
    exp: Experiment,
    task: Task,
    members: Sequence[Member],
    store: RunStore,
    progress: Progress | None = None,
    *,
    budget: ThreadBudget | None = None,
) -> dict[str, Status]:
    """Train every unfinished member of ``members`` in this process, wave by wave (teachers
    before students); return each member's status. ``budget`` (default ``runtime.threads``)
    is planned for and applied here, this process's edge, for the call (restored after)."""
    budget = budget or ThreadBudget.resolve(exp.runtime.threads)
    device = resolve_device(exp.runtime.device)
    dtype = resolve_precision(exp.training.precision, device)
    ledger = Ledger(store)
    status: dict[str, Status] = {}
    with budget.applied():
        for wave in waves(members):
            done, todo = sort_wave(wave, ledger, status, progress)
            status.update(done)
            names = {m.name for m in todo}
            for group in groups_of(wave):
                if any(m.name in names for m in group):
                    status.update(
                        train_members(
                            exp, task, group, names, store, device, dtype, budget, progress
                        )
                    )
    return {m.name: status[m.name] for m in members}


def train_members(
    exp: Experiment,
    task: Task,
    planned: Sequence[Member],
    todo: set[str],
    store: RunStore,
    device: torch.device,
    dtype: torch.dtype,
    budget: ThreadBudget,
    progress: Progress | None = None,
) -> dict[str, Status]:
    """Train the members named in ``todo`` of one group (one kind and architecture), in the
    units planned for the whole group with ``budget``."""
    ledger = Ledger(store)
    strategy = resolve_strategy(exp, task, planned, budget)
    group = [m for m in planned if m.name in todo]
    index = {m.name: i for i, m in enumerate(group)}
    units = []
    for u in plan_units(len(planned), strategy, budget):
        left = tuple(index[planned[i].name] for i in u.indices if planned[i].name in index)
        if left:
            units.append(Unit(left, u.fused, u.threads))
    kind = kind_of(group[0])
    models = [kind.build(m, exp, task) for m in group]
    loaded: dict[str, Classifier] = {}

    def teachers_of(m: Member) -> list[Classifier]:
        for t in _members(m.requires, exp, task):
            if t.name not in loaded:
                loaded[t.name] = load_member(exp, task, t, store)
        return [loaded[n] for n in m.requires]

    if type(kind).prepare is not MemberKind.prepare:
        for m, model in zip(group, models, strict=True):
            kind.prepare(m, model, teachers_of(m) if m.requires else [])

    def targets_of(m: Member) -> Callable[[], dict[str, torch.Tensor]]:
        def compute() -> dict[str, torch.Tensor]:
            return kind.targets(m, task, teachers_of(m), device=device, dtype=dtype)

        return compute

    outs = train_group(
        models,
        kind.training_data(group[0], task),
        kind.training(group[0], exp),
        [m.seed for m in group],
        device=device,
        dtype=dtype,
        budget=budget,
        partial_paths=[ledger.partial(m.name) for m in group],
        members=[m.name for m in group],
        strategy=strategy,
        objectives=[kind.objective(m, exp) for m in group],
        targets=[targets_of(m) if m.requires else {} for m in group],
        units=None if strategy == "processes" else units,
        on_step=(lambda k, d, t: progress(group[k].name, d, t)) if progress else None,
        on_epoch=(
            (lambda k, e, n, loss: note(progress, group[k].name, epoch=e, epochs=n, loss=loss))
            if progress
            else None
        ),
    )
    status = {}
    for m, model, out in zip(group, models, outs, strict=True):
        if "failed" in out:
            ledger.record_failure(m.name, out["failed"], m.to_dict())
            status[m.name] = Status(m.name, State.FAILED, error=out["failed"])
            continue
        finalize(exp, task, m, model, out["history"], ledger, device, dtype, out["strategy"])
        status[m.name] = ledger.status(m.name)
    return status


def _members(names: Sequence[str], exp: Experiment, task: Task) -> list[Member]:
    from richrep.members import plan_members

    by_name = {m.name: m for m in plan_members(exp, task.input_shape)}
    return [by_name[n] for n in names]


@ENGINES.register("local", description="train in this process (CPU threads or one GPU)")
class LocalEngine:
    """Train in this process: the seeds of one architecture together, on the thread budget
    (``runtime.threads``, handed down by the train stage) and ``runtime.device``."""

    def train(
        self,
        exp: Experiment,
        task: Task,
        members: Sequence[Member],
        store: RunStore,
        progress: Progress | None = None,
        budget: ThreadBudget | None = None,
    ) -> dict[str, Status]:
        return train_local(exp, task, members, store, progress, budget=budget)
