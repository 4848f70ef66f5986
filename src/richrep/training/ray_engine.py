"""Train members as Ray tasks, into the same run store.

By default a task is one of the local engine's work units (:func:`work_units`: the same seeds
folded together or not, on the same number of threads, planned from the experiment and the
thread budget ``training.threads``, or the driver's cores), with as many CPUs as the unit has
threads: the weights are bit-identical to the local engine's for the same file. Setting
``cpus_per_task`` sizes tasks for a cluster instead: one member per task on that many threads
(bit-identical to the local engine where it also trains each seed alone on as many threads,
e.g. ``training.threads: 1`` with ``cpus_per_task: 1``).

Each task builds its members from the experiment (deterministic from the seeds), trains them
with the local engine's code and writes their checkpoints into the store (shared filesystem)
or returns them for the driver to write. Ray retries a task whose worker dies
(``max_retries``); the retry resumes from each member's last epoch checkpoint. A member whose
loss diverges is reported as failed, like the local engine does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richrep.config import Experiment
from richrep.data import Task
from richrep.errors import ConfigError, TrainingError
from richrep.store import RunStore, remove
from richrep.training.device import set_threads
from richrep.training.engine import (
    Progress,
    WorkUnit,
    failed_path,
    finished,
    record_failure,
    split_finished,
    work_units,
)
from richrep.training.members import Member

RAY_DEFAULTS: dict[str, Any] = {
    "address": None,  # None: start a local Ray instance; "auto" or "ray://host:port": join a cluster
    "num_cpus": None,  # CPUs of a local instance (None: all)
    "cpus_per_task": None,  # None: the local engine's work units; N: one member per task, N threads
    "gpus_per_task": 0,  # > 0: one member per task (with cpus_per_task CPUs, default 1)
    "max_retries": 2,  # retries of a task whose worker process died
    "shared_storage": True,  # workers write checkpoints into the run folder themselves
}


def ray_options(exp: Experiment) -> dict[str, Any]:
    unknown = sorted(set(exp.training.ray) - set(RAY_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"training.ray: unknown option(s) {unknown}; allowed: {sorted(RAY_DEFAULTS)}"
        )
    return {**RAY_DEFAULTS, **exp.training.ray}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray engine needs Ray, which is not installed: `pip install 'richrep[ray]'` "
            "(or use the default local engine)"
        ) from None
    return ray


def _worker(
    exp_json: dict[str, Any],
    task: Task,
    members: list[dict[str, Any]],
    strategy: str,
    threads: int,
    root: str,
    shared: bool,
) -> dict[str, dict[str, Any]]:
    """Runs inside a Ray worker: train one unit of members with the local engine's code, on
    ``threads`` threads; return each member's sidecar (and tensors if storage is not shared)."""
    from richrep.config import Experiment
    from richrep.training.engine import train_local

    exp = Experiment.model_validate(exp_json)
    training = exp.training.model_copy(
        update={"strategy": strategy, "threads": threads, "engine": "local"}
    )
    exp = exp.model_copy(update={"training": training})
    unit = [Member(**m) for m in members]
    if not shared:  # the run folder is not visible here: train into a scratch folder
        import tempfile

        root = tempfile.mkdtemp(prefix="richrep-")
    store = RunStore(Path(root))
    if shared:
        store.checkpoints.mkdir(parents=True, exist_ok=True)
        for m in unit:
            (store.checkpoints / f"{m.name}.worker").write_text(f"{os.getpid()}\n")
    metas = train_local(exp, task, unit, store)
    out: dict[str, dict[str, Any]] = {}
    for m in unit:
        meta = metas[m.name]
        if "failed" in meta:
            out[m.name] = {"failed": meta["failed"]}
        elif shared:
            out[m.name] = {"meta": meta}
        else:
            from safetensors.torch import load_file

            out[m.name] = {"meta": meta, "tensors": load_file(store.checkpoint(m.name))}
    return out


def train_ray(
    exp: Experiment,
    task: Task,
    members: Sequence[Member],
    store: RunStore,
    progress: Progress | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every unfinished member as a Ray task; return member name -> sidecar metadata."""
    opts = ray_options(exp)
    ray = _import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if opts["address"]:
            ray.init(address=opts["address"], **kw)
        else:
            ray.init(num_cpus=opts["num_cpus"], **kw)
        started = True
    try:
        return _run(ray, exp, task, members, store, opts, progress)
    finally:
        if started:
            ray.shutdown()


def _run(
    ray: Any,
    exp: Experiment,
    task: Task,
    members: Sequence[Member],
    store: RunStore,
    opts: dict[str, Any],
    progress: Progress | None,
) -> dict[str, dict[str, Any]]:
    results, todo = split_finished(store, members, progress)
    if not todo:
        return results
    if opts["cpus_per_task"] is None and not opts["gpus_per_task"]:
        units = work_units(exp, task, todo, set_threads(exp.training.threads))
    else:  # tasks sized for a cluster: one member each
        n = max(1, int(opts["cpus_per_task"] or 1))
        units = [WorkUnit((m,), "sequential", n) for m in todo]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    biggest = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
    need = max(u.threads for u in units)
    if nodes and need > biggest:  # such a task would wait forever for a node
        raise ConfigError(
            f"training: a Ray task needs {need} CPUs but the largest Ray node has {biggest:g}; "
            f"set training.threads (the thread budget the work units are planned for) or "
            f"training.ray.cpus_per_task to at most {biggest:g}"
        )
    remote = ray.remote(_worker)
    task_ref = ray.put(task)
    exp_json = exp.model_dump(mode="json")
    pending = {
        remote.options(
            num_cpus=u.threads,
            num_gpus=opts["gpus_per_task"],
            max_retries=opts["max_retries"],
            retry_exceptions=False,
        ).remote(
            exp_json,
            task_ref,
            [m.to_dict() for m in u.members],
            u.strategy,
            u.threads,
            str(store.root.resolve()),
            opts["shared_storage"],
        ): u
        for u in units
    }
    lost: dict[str, str] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(done[0])
        try:
            outs = ray.get(done[0])
        except Exception as e:  # noqa: BLE001  (a worker that died after all retries)
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            lost.update({m.name: why for m in unit.members})
            continue
        finally:
            for m in unit.members:
                (store.checkpoints / f"{m.name}.worker").unlink(missing_ok=True)
        for m in unit.members:
            out = outs[m.name]
            if "failed" in out:
                results[m.name] = record_failure(store, m, out["failed"])
            else:
                if "tensors" in out:
                    from richrep.store import save_tensors

                    meta = {k: v for k, v in out["meta"].items() if k != "sha256"}
                    save_tensors(store.checkpoint(m.name), out["tensors"], meta)
                remove(failed_path(store, m.name))
                results[m.name] = finished(store, m.name) or out["meta"]
            if progress:
                progress(m.name, 1, 1)
    if lost:
        listing = "; ".join(f"{k} ({v})" for k, v in lost.items())
        raise TrainingError(
            f"Ray lost {len(lost)} member(s) after {opts['max_retries']} retries: {listing}. "
            f"Finished members are kept; rerun to resume the others."
        )
    return results
