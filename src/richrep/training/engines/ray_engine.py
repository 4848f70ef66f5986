"""Train a run's members as Ray tasks, into the same run store; :meth:`RayEngine.map` runs
other work there too (the evaluate stage's suite entries, ``stages/remote.py``).

By default a task is one of the local engine's work units (:func:`work_units`: the same members
folded together or not, on the same number of threads, planned from the experiment and the
thread budget ``runtime.threads``), with as many CPUs as the unit has threads, which the task
applies at its start: the weights are bit-identical to the local engine's for the same file. Setting ``cpus_per_task`` (or
``gpus_per_task``) sizes tasks for a cluster instead: one member per task.

Members run in waves, teachers before students. A task trains its members with the local
engine's code and writes their checkpoints into the store (shared filesystem) or returns them
for the driver to write (``shared_storage: false``; then a student's task also receives its
teachers' checkpoints). Ray retries a task whose worker dies (``max_retries``); the retry
resumes from each member's last epoch checkpoint.

Before joining a cluster (``address``), the engine checks that a gRPC server (Ray's GCS, or
its client server for ``ray://``) answers there within ``connect_timeout`` seconds: Ray itself
would retry for minutes.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from richrep.config import Experiment
from richrep.data import Task
from richrep.errors import ConfigError, TrainingError
from richrep.members import Member, waves
from richrep.plugins import ENGINES, load_plugins
from richrep.runtime.threads import ThreadBudget
from richrep.store import RunStore, load_tensors, save_tensors
from richrep.store.ledger import Ledger, State, Status
from richrep.training.engines.local import Progress, WorkUnit, sort_wave, work_units


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the Ray engine needs Ray, which is not installed: `pip install 'richrep[ray]'` "
            "(or use the default local engine)"
        ) from None
    return ray


H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HOW = (
    "check runtime.engine.ray.address (--address), start the cluster (`ray start --head`) or "
    "raise runtime.engine.ray.connect_timeout"
)


def check_address(address: str, timeout: float) -> None:
    """Refuse ``address`` (``host:port``, ``ray://host:port``) when no gRPC server answers an
    HTTP/2 greeting there within ``timeout`` seconds; ``auto`` and ``local`` are Ray's."""
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, "10001" if client else "6379"  # Ray's default ports
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"runtime.engine.ray.address: {address!r} is not host:port, ray://host:port or auto"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(H2_HELLO)
            frame = s.recv(9)
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(
            f"cannot reach a Ray cluster at {address} within {timeout:g} s ({why}); {HOW}"
        ) from None
    if len(frame) < 9 or frame[3] != 4:  # a server's first HTTP/2 frame is its SETTINGS
        raise ConfigError(f"{address} answers, but not as a Ray cluster (no gRPC server); {HOW}")


def _worker(
    exp_json: dict[str, Any],
    task: Task,
    members: list[dict[str, Any]],
    strategy: str,
    threads: int,
    root: str,
    shared: bool,
    teachers: dict[str, tuple[dict[str, Any], dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Runs inside a Ray worker: train one unit of members with the local engine's code, on
    ``threads`` threads (applied for the task: Ray reuses its worker processes); return each
    member's sidecar (and tensors if storage is not shared)."""
    from safetensors.torch import load_file

    from richrep.config import Experiment
    from richrep.training.engines.local import train_local

    load_plugins()  # a fresh worker process has imported none of the registries' entries
    exp = Experiment.model_validate(exp_json)
    runtime = exp.runtime.model_copy(
        update={"strategy": strategy, "threads": threads, "engine": {"name": "local"}}
    )
    exp = exp.model_copy(update={"runtime": runtime})
    unit = [Member.from_dict(m) for m in members]
    if not shared:  # the run folder is not visible here: train into a scratch folder
        root = tempfile.mkdtemp(prefix="richrep-")
    store = RunStore(Path(root))
    ledger = Ledger(store)
    for name, (tensors, meta) in teachers.items():
        save_tensors(ledger.final(name), tensors, {k: v for k, v in meta.items() if k != "sha256"})
    if shared:
        for m in unit:
            ledger.mark_worker(m.name)
    status = train_local(exp, task, unit, store, budget=ThreadBudget(threads))
    out: dict[str, dict[str, Any]] = {}
    for m in unit:
        s = status[m.name]
        if not s.ok:
            out[m.name] = {"failed": s.error}
        elif shared:
            out[m.name] = {"meta": s.meta}
        else:
            out[m.name] = {"meta": s.meta, "tensors": load_file(ledger.final(m.name))}
    return out


@ENGINES.register("ray", description="train as Ray tasks, on a local Ray instance or a cluster")
class RayEngine:
    """Train the members as Ray tasks: the local engine's work units by default (bit-identical
    weights), or one member per task with ``cpus_per_task`` / ``gpus_per_task`` CPUs/GPUs.
    ``address``: None starts a local Ray instance (with ``num_cpus``), ``auto`` or
    ``ray://host:port`` joins a cluster. ``max_retries``: retries of a task whose worker died.
    ``shared_storage``: whether workers see the run folder (else checkpoints travel back).
    ``connect_timeout``: seconds to wait for the cluster at ``address`` to answer."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus: Annotated[int, Field(ge=1)] | None = None,
        cpus_per_task: Annotated[int, Field(ge=1)] | None = None,
        gpus_per_task: Annotated[float, Field(ge=0)] = 0,
        max_retries: Annotated[int, Field(ge=0)] = 2,
        shared_storage: bool = True,
        connect_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.max_retries = max_retries
        self.shared_storage = shared_storage
        self.connect_timeout = connect_timeout

    def train(
        self,
        exp: Experiment,
        task: Task,
        members: Sequence[Member],
        store: RunStore,
        progress: Progress | None = None,
        budget: ThreadBudget | None = None,
    ) -> dict[str, Status]:
        """Train every unfinished member as a Ray task; return each member's status. The units
        are planned for ``runtime.threads`` as set: the Ray nodes, not this machine, bound it
        (a task larger than every node is refused); 0 takes ``budget`` (default: this
        machine's cores)."""
        with self.session() as ray:
            threads = exp.runtime.threads
            plan = ThreadBudget(threads) if threads else budget or ThreadBudget.resolve(0)
            status: dict[str, Status] = {}
            for wave in waves(members):
                status.update(self._wave(ray, exp, task, wave, store, status, plan, progress))
            return {m.name: status[m.name] for m in members}

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Ray, joined at ``address`` (checked first) or started locally with ``num_cpus``;
        a Ray started here is shut down on exit, one already running is left as it is."""
        if self.address:
            check_address(self.address, self.connect_timeout)
        ray = _import_ray()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            try:
                if self.address:
                    ray.init(address=self.address, **kw)
                else:
                    ray.init(num_cpus=self.num_cpus, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                raise ConfigError(f"cannot start or join {where}: {e}; {HOW}") from None
            started = True
        try:
            yield ray
        finally:
            if started:
                ray.shutdown()

    def map(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        cpus: Sequence[int],
        done: Callable[[int, Any], None] | None = None,
    ) -> list[tuple[Any, str | None]]:
        """``fn(*args)`` for each ``args`` of ``calls`` as Ray tasks of ``cpus[i]`` CPUs (and
        ``gpus_per_task`` GPUs), each retried ``max_retries`` times if its worker dies; for
        each call, in order, its result and None, or None and why it was lost after all
        retries. ``done(i, result)`` is called as each task returns. An exception raised by
        ``fn`` itself is raised here (after the other tasks finish: their work is kept)."""
        with self.session() as ray:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            biggest = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
            if nodes and cpus and max(cpus) > biggest:
                raise ConfigError(
                    f"runtime: a Ray task needs {max(cpus)} CPUs but the largest Ray node has "
                    f"{biggest:g}; set runtime.threads to at most {biggest:g}"
                )
            remote = ray.remote(fn)
            refs = {
                remote.options(
                    num_cpus=c,
                    num_gpus=self.gpus_per_task,
                    max_retries=self.max_retries,
                    retry_exceptions=False,
                ).remote(*args): i
                for i, (args, c) in enumerate(zip(calls, cpus, strict=True))
            }
            out: list[tuple[Any, str | None]] = [(None, None)] * len(calls)
            failed: BaseException | None = None
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = refs[ready[0]]
                try:
                    out[i] = (ray.get(ready[0]), None)
                except ray.exceptions.RayTaskError as e:  # fn raised: the caller's error
                    failed = failed or getattr(e, "cause", None) or e.as_instanceof_cause()
                    continue
                except Exception as e:  # noqa: BLE001  (a worker that died after all retries)
                    out[i] = (
                        None,
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    )
                    continue
                if done:
                    done(i, out[i][0])
            if failed is not None:
                raise failed
            return out

    def _wave(
        self,
        ray: Any,
        exp: Experiment,
        task: Task,
        wave: Sequence[Member],
        store: RunStore,
        done: dict[str, Status],
        budget: ThreadBudget,
        progress: Progress | None,
    ) -> dict[str, Status]:
        ledger = Ledger(store)
        status, todo = sort_wave(wave, ledger, done, progress)
        if not todo:
            return status
        units = self._units(ray, exp, task, wave, todo, budget)
        remote = ray.remote(_worker)
        task_ref = ray.put(task)
        exp_json = exp.model_dump(mode="json")
        pending = {}
        for u in units:
            teachers: dict[str, Any] = {}
            if not self.shared_storage:
                for m in u.members:
                    for t in m.requires:
                        tensors, meta = load_tensors(ledger.final(t))
                        teachers[t] = (tensors, meta)
            ref = remote.options(
                num_cpus=u.threads,
                num_gpus=self.gpus_per_task,
                max_retries=self.max_retries,
                retry_exceptions=False,
            ).remote(
                exp_json,
                task_ref,
                [m.to_dict() for m in u.members],
                u.strategy,
                u.threads,
                str(store.root.resolve()),
                self.shared_storage,
                teachers,
            )
            pending[ref] = u
        lost = self._collect(ray, pending, ledger, status, progress)
        if lost:
            listing = "; ".join(f"{k} ({v})" for k, v in lost.items())
            raise TrainingError(
                f"Ray lost {len(lost)} member(s) after {self.max_retries} retries: {listing}. "
                f"Finished members are kept; rerun to resume the others."
            )
        return status

    def _units(
        self,
        ray: Any,
        exp: Experiment,
        task: Task,
        wave: Sequence[Member],
        todo: list[Member],
        budget: ThreadBudget,
    ) -> list[WorkUnit]:
        """The work units of the members ``todo`` of ``wave``: those the local engine plans
        (bit-identical weights), or one member each for tasks sized for a cluster; a unit
        needing more CPUs than any node has is a :class:`ConfigError`."""
        if self.cpus_per_task is None and not self.gpus_per_task:
            names = {m.name for m in todo}
            units = []
            for u in work_units(exp, task, wave, budget):
                left = tuple(m for m in u.members if m.name in names)
                if left:
                    units.append(WorkUnit(left, u.strategy, u.threads))
        else:  # tasks sized for a cluster: one member each
            n = max(1, int(self.cpus_per_task or 1))
            units = [WorkUnit((m,), "sequential", n) for m in todo]
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        biggest = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
        need = max(u.threads for u in units)
        if nodes and need > biggest:  # such a task would wait forever for a node
            raise ConfigError(
                f"runtime: a Ray task needs {need} CPUs but the largest Ray node has {biggest:g}; "
                f"set runtime.threads (the thread budget the work units are planned for) or "
                f"runtime.engine.ray.cpus_per_task to at most {biggest:g}"
            )
        return units

    def _collect(
        self,
        ray: Any,
        pending: dict[Any, WorkUnit],
        ledger: Ledger,
        status: dict[str, Status],
        progress: Progress | None,
    ) -> dict[str, str]:
        """Record each unit's members as its task returns (into ``status``); return the members
        lost with a task that died after all retries, with why."""
        lost: dict[str, str] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                outs = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001  (a worker that died after all retries)
                why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                lost.update({m.name: why for m in unit.members})
                continue
            finally:
                for m in unit.members:
                    ledger.unmark_worker(m.name)
            for m in unit.members:
                out = outs[m.name]
                if "failed" in out:
                    ledger.record_failure(m.name, out["failed"], m.to_dict())
                    status[m.name] = Status(m.name, State.FAILED, error=out["failed"])
                else:
                    if "tensors" in out:
                        meta = {k: v for k, v in out["meta"].items() if k != "sha256"}
                        save_tensors(ledger.final(m.name), out["tensors"], meta)
                    ledger.clear_failure(m.name)
                    status[m.name] = ledger.status(m.name)
                if progress:
                    progress(m.name, 1, 1)
        return lost
