"""Train members as Ray tasks (one task per member), into the same run store.

Each task builds its member from the experiment (deterministic from the seed), trains it with
the same loop as the local engine and a fixed thread budget, and writes its checkpoint into
the store (shared filesystem) or returns it for the driver to write. Ray retries a task whose
worker dies (``max_retries``); the retry resumes from the member's last epoch checkpoint.
A member whose loss diverges is reported as failed, like the local engine does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from richrep.config import Experiment
from richrep.data import Task
from richrep.errors import ConfigError, TrainingError
from richrep.store import RunStore, remove, write_json
from richrep.training.engine import Progress, failed_path, finished, train_one
from richrep.training.members import Member

RAY_DEFAULTS: dict[str, Any] = {
    "address": None,  # None: start a local Ray instance; "auto" or "ray://host:port": join a cluster
    "num_cpus": None,  # CPUs of a local instance (None: all)
    "cpus_per_task": 1,
    "gpus_per_task": 0,
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
    member: dict[str, Any],
    root: str,
    threads: int,
    shared: bool,
) -> dict[str, Any]:
    """Runs inside a Ray worker: train one member; return its sidecar (and tensors if not shared)."""
    from richrep.config import Experiment
    from richrep.training.device import set_threads

    set_threads(threads)
    exp = Experiment.model_validate(exp_json)
    m = Member(**member)
    if not shared:  # the run folder is not visible here: train into a scratch folder
        import tempfile

        root = tempfile.mkdtemp(prefix="richrep-")
    store = RunStore(Path(root))
    if shared:
        (store.checkpoints / f"{m.name}.worker").parent.mkdir(parents=True, exist_ok=True)
        (store.checkpoints / f"{m.name}.worker").write_text(f"{os.getpid()}\n")
    try:
        meta = train_one(exp, task, m, store)
    except TrainingError as e:
        return {"failed": str(e)}
    if shared:
        return {"meta": meta}
    from safetensors.torch import load_file

    return {"meta": meta, "tensors": load_file(store.checkpoint(m.name))}


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
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for m in members:
        meta = finished(store, m.name)
        if meta is not None:
            results[m.name] = meta
            if progress:
                progress(m.name, 1, 1)
        else:
            todo.append(m)
    if not todo:
        return results
    remote = ray.remote(_worker).options(
        num_cpus=opts["cpus_per_task"],
        num_gpus=opts["gpus_per_task"],
        max_retries=opts["max_retries"],
        retry_exceptions=False,
    )
    task_ref = ray.put(task)
    exp_json = exp.model_dump(mode="json")
    threads = max(1, int(opts["cpus_per_task"]))
    pending = {
        remote.remote(
            exp_json,
            task_ref,
            m.to_dict(),
            str(store.root.resolve()),
            threads,
            opts["shared_storage"],
        ): m
        for m in todo
    }
    lost: dict[str, str] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        m = pending.pop(done[0])
        try:
            out = ray.get(done[0])
        except Exception as e:  # noqa: BLE001  (a worker that died after all retries)
            lost[m.name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        finally:
            (store.checkpoints / f"{m.name}.worker").unlink(missing_ok=True)
        if "failed" in out:
            write_json(failed_path(store, m.name), {"member": m.to_dict(), "error": out["failed"]})
            results[m.name] = {"failed": out["failed"]}
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
