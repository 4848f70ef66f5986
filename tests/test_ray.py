"""The Ray engine: same weights as the local engine, kills retried, clear error without Ray."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from richrep.config import parse_experiment
from richrep.errors import ConfigError
from richrep.members import plan_members
from richrep.pipeline import run_experiment
from richrep.plugins import ENGINES
from richrep.run import source_task
from richrep.runtime.threads import ThreadBudget
from richrep.stages.evaluate import read_results
from richrep.store import RunStore, load_tensors
from richrep.store.ledger import Ledger, State
from richrep.training.engines import train_local, work_units

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'richrep[ray]'")
pytestmark = pytest.mark.slow  # a real Ray instance and its worker processes


@pytest.fixture(scope="module")
def ray_session():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _exp(tiny, ray=None, **training):
    tiny["training"].update(training)
    tiny["runtime"] = {"threads": 1, "engine": {"ray": ray or {"cpus_per_task": 1}}}
    return parse_experiment(tiny)


def train_ray(exp, task, members, store):
    spec = exp.runtime.engine
    return ENGINES.build(spec.name, **spec.params).train(exp, task, members, store)


def _weights(store, name):
    return load_tensors(Ledger(store).final(name))[0]


def test_ray_equals_local_bit_for_bit(tiny, tmp_path, ray_session):
    exp = _exp(tiny, baselines=[{"kind": "joint", "k": 2}, {"kind": "distill", "k": 2}])
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    assert members[-1].requires == ("single-s0", "single-s1")  # the student after its teachers
    local, remote = RunStore(tmp_path / "local"), RunStore(tmp_path / "ray")
    train_local(exp, task, members, local)
    out = train_ray(exp, task, members, remote)
    assert set(out) == {m.name for m in members}
    for m in members:
        a, b = _weights(local, m.name), _weights(remote, m.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), m.name


def test_ray_runs_the_local_units_bit_for_bit_by_default(tiny, tmp_path, ray_session):
    """Default settings: 2 threads, strategy auto (MLP seeds folded in two groups, one thread
    each) and cpus_per_task unset: Ray runs the local engine's units, same weights."""
    tiny["training"].update({"seeds": 3, "baselines": [{"kind": "distill", "k": 3}]})
    tiny["runtime"] = {"engine": "ray", "threads": 2}
    exp = parse_experiment(tiny)
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    units = work_units(exp, task, members[:3], ThreadBudget(2))
    assert [(len(u.members), u.strategy, u.threads) for u in units] == [
        (2, "fused", 1),
        (1, "fused", 1),
    ]
    local, remote = RunStore(tmp_path / "local"), RunStore(tmp_path / "ray")
    train_local(exp, task, members, local)
    train_ray(exp, task, members, remote)
    for m in members:
        a, b = _weights(local, m.name), _weights(remote, m.name)
        assert all(torch.equal(a[k], b[k]) for k in a), m.name


def test_ray_without_shared_storage_returns_checkpoints(tiny, tmp_path, ray_session):
    exp = _exp(
        tiny,
        ray={"cpus_per_task": 1, "shared_storage": False},
        baselines=[{"kind": "distill", "k": 2}],
    )
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    store = RunStore(tmp_path / "ray")
    train_ray(exp, task, members, store)
    local = RunStore(tmp_path / "local")
    train_local(exp, task, members, local)
    for m in members:
        a, b = _weights(local, m.name), _weights(store, m.name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_worker_is_retried_and_resumes(tiny, tmp_path, ray_session):
    tiny["data"]["params"]["num_samples"] = 3000
    exp = _exp(tiny, seeds=1, epochs=25)
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    store = RunStore(tmp_path / "ray")
    killed = []

    def killer():
        pid_file = Ledger(store).worker("single-s0")
        partial = Ledger(store).partial("single-s0")
        deadline = time.time() + 60
        while time.time() < deadline and not (pid_file.exists() and partial.exists()):
            time.sleep(0.05)
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    t = threading.Thread(target=killer)
    t.start()
    out = train_ray(exp, task, members, store)
    t.join()
    assert killed, "the worker was never seen training"
    assert out["single-s0"].state is State.FINISHED and "val_acc" in out["single-s0"].meta
    local = RunStore(tmp_path / "local")
    train_local(exp, task, members, local)
    a, b = _weights(local, "single-s0"), _weights(store, "single-s0")
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed from its epoch checkpoint, same result


def test_unknown_ray_option_fails_at_parse_time(tiny):
    with pytest.raises(
        ConfigError,
        match=r"engine 'ray' has no argument 'cpu_per_task' \(did you mean 'cpus_per_task'\?\)",
    ):
        _exp(tiny, ray={"cpu_per_task": 1})


def test_task_bigger_than_any_node_is_a_clear_error(tiny, tmp_path, ray_session, monkeypatch):
    monkeypatch.setattr(
        "richrep.runtime.threads.available_cores", lambda: 8
    )  # a driver with more cores than Ray's
    tiny["runtime"] = {"engine": "ray", "threads": 8}  # 2 seeds: units of 4 threads
    exp = parse_experiment(tiny)
    task = source_task(exp)

    with pytest.raises(ConfigError, match="largest Ray node has 2"):
        train_ray(exp, task, plan_members(exp, task.input_shape), RunStore(tmp_path / "r"))


# -- evaluation on Ray ---------------------------------------------------------------------------

SUITE = [
    {"name": "new", "shifts": [{"classes": {"keep": [5, 6, 7, 8, 9]}}], "sizes": [20, "all"]},
    {"name": "same", "shifts": [{"classes": {"keep": [0, 1, 2, 3, 4]}}], "sizes": ["all"]},
    {
        "name": "shots",
        "shifts": [{"classes": {"keep": [5, 6, 7, 8, 9]}}],
        "protocol": {"few_shot": {"shots": [1], "queries": 5, "episodes": 3}},
    },
]


def _rows(rows):
    """Rows without what differs between any two evaluations (wall-clock seconds)."""
    drop = {"seconds", "fit_seconds", "time_s"}
    return sorted(
        (json.dumps({k: v for k, v in r.to_dict().items() if k not in drop}, sort_keys=True))
        for r in rows
    )


def _eval_exp(tiny, engine):
    tiny["evaluation"] = {"suite": SUITE, "floors": []}
    tiny["runtime"] = {"threads": 2, "engine": engine}
    return parse_experiment(tiny)


def test_ray_evaluation_rows_equal_local_ones(tiny, tmp_path, ray_session):
    """Suite entries as Ray tasks (two transfer entries side by side on a thread each, the
    few-shot entry on both): the same rows as the local evaluate stage."""
    local = _eval_exp(copy.deepcopy(tiny), "local")
    remote = _eval_exp(copy.deepcopy(tiny), {"ray": {}})
    run_experiment(local, tmp_path / "a", only="train", log=lambda m: None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same members for both
    logs: list[str] = []
    rows_local = read_results(run_experiment(local, tmp_path / "a", only="evaluate", log=print))
    rows_ray = read_results(
        run_experiment(remote, tmp_path / "b", only="evaluate", log=logs.append)
    )
    assert any("as tasks of runtime.engine ray" in m for m in logs), logs
    assert len(rows_ray) == len(rows_local) > 0
    assert _rows(rows_ray) == _rows(rows_local)


def _kill_first_task(name: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first process whose title is Ray's for a running task ``name``."""
    title = f"ray::{name}".encode()
    while not stop.is_set() and not killed:
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(title):
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                    return
            except OSError:
                continue
        time.sleep(0.01)


def test_ray_evaluation_retries_a_killed_worker(tiny, tmp_path, ray_session):
    """A worker killed while it evaluates an entry: Ray runs the task again, every entry's
    rows are written, nothing is lost."""
    exp = _eval_exp(tiny, {"ray": {"max_retries": 2}})
    run_experiment(exp, tmp_path, only="train", log=lambda m: None)
    killed: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=_kill_first_task, args=("entry_task", killed, stop))
    t.start()
    try:
        rows = read_results(run_experiment(exp, tmp_path, only="evaluate", log=lambda m: None))
    finally:
        stop.set()
        t.join()
    assert killed, "no worker was seen evaluating"
    assert {r.entry for r in rows} == {"new", "same", "shots"}
