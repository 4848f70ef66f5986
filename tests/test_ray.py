"""The Ray engine: same weights as the local engine, kills retried, clear error without Ray."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from richrep.config import parse_experiment
from richrep.errors import ConfigError
from richrep.pipeline import source_task
from richrep.store import RunStore, load_tensors
from richrep.training.engine import train_local
from richrep.training.members import plan_members

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'richrep[ray]'")


@pytest.fixture(scope="module")
def ray_session():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _exp(tiny, **training):
    tiny["training"].update(
        {"threads": 1, "engine": "ray", "ray": {"cpus_per_task": 1}, **training}
    )
    return parse_experiment(tiny)


def _weights(store, name):
    return load_tensors(store.checkpoint(name))[0]


def test_ray_equals_local_bit_for_bit(tiny, tmp_path, ray_session):
    exp = _exp(tiny, baselines=[{"kind": "joint", "k": 2}])
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    local, remote = RunStore(tmp_path / "local"), RunStore(tmp_path / "ray")
    train_local(exp, task, members, local)
    from richrep.training.ray_engine import train_ray

    out = train_ray(exp, task, members, remote)
    assert set(out) == {m.name for m in members}
    for m in members:
        a, b = _weights(local, m.name), _weights(remote, m.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), m.name


def test_ray_runs_the_local_units_bit_for_bit_by_default(tiny, tmp_path, ray_session):
    """Default settings: 2 threads, strategy auto (MLP seeds folded in two groups, one thread
    each) and cpus_per_task unset: Ray runs the local engine's units, same weights."""
    tiny["training"].update({"seeds": 3, "engine": "ray", "threads": 2})
    exp = parse_experiment(tiny)
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    from richrep.training.engine import work_units

    units = work_units(exp, task, members, 2)
    assert [(len(u.members), u.strategy, u.threads) for u in units] == [
        (2, "fused", 1),
        (1, "fused", 1),
    ]
    local, remote = RunStore(tmp_path / "local"), RunStore(tmp_path / "ray")
    train_local(exp, task, members, local)
    from richrep.training.ray_engine import train_ray

    train_ray(exp, task, members, remote)
    for m in members:
        a, b = _weights(local, m.name), _weights(remote, m.name)
        assert all(torch.equal(a[k], b[k]) for k in a), m.name


def test_ray_without_shared_storage_returns_checkpoints(tiny, tmp_path, ray_session):
    exp = _exp(tiny, ray={"cpus_per_task": 1, "shared_storage": False})
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    from richrep.training.ray_engine import train_ray

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
        pid_file = store.checkpoint("single-s0").with_suffix(".worker")
        partial = store.checkpoint("single-s0", partial=True)
        deadline = time.time() + 60
        while time.time() < deadline and not (pid_file.exists() and partial.exists()):
            time.sleep(0.05)
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    t = threading.Thread(target=killer)
    t.start()
    from richrep.training.ray_engine import train_ray

    out = train_ray(exp, task, members, store)
    t.join()
    assert killed, "the worker was never seen training"
    assert "val_acc" in out["single-s0"]
    local = RunStore(tmp_path / "local")
    train_local(exp, task, members, local)
    a, b = _weights(local, "single-s0"), _weights(store, "single-s0")
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed from its epoch checkpoint, same result


def test_unknown_ray_option(tiny):
    exp = _exp(tiny, ray={"cpu_per_task": 1})
    from richrep.training.ray_engine import ray_options

    with pytest.raises(ConfigError, match="unknown option"):
        ray_options(exp)


def test_task_bigger_than_any_node_is_a_clear_error(tiny, tmp_path, ray_session):
    tiny["training"].update({"engine": "ray", "threads": 8})  # 2 seeds: units of 4 threads
    exp = parse_experiment(tiny)
    task = source_task(exp)
    from richrep.training.ray_engine import train_ray

    with pytest.raises(ConfigError, match="largest Ray node has 2"):
        train_ray(exp, task, plan_members(exp, task.input_shape), RunStore(tmp_path / "r"))
