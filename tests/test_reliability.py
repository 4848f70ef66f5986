"""Reliability: SIGKILL at random points, concurrent runs, disk errors, fuzzed configs, no pickle."""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from richrep.config import parse_experiment
from richrep.errors import ConfigError, RichrepError, StoreError
from richrep.pipeline import run_experiment
from richrep.store import RunStore, load_tensors, write_atomic

SRC = Path(__file__).resolve().parent.parent / "src" / "richrep"


def _small(tiny) -> dict:
    tiny["training"]["epochs"] = 3
    tiny["evaluation"] = {
        "subsets": 1,
        "floors": ["input"],
        "probe": {"Cs": [0.01, 1.0]},
        "suite": [
            {
                "name": "new",
                "shifts": [{"classes": {"keep": [5, 6, 7]}}],
                "sizes": [10, "all"],
                "draws": 1,
            },
            {
                "name": "noisy",
                "shifts": [
                    {"classes": {"keep": [0, 1, 2, 3, 4]}},
                    {"mnist1d_noise": {"scale": 0.2}},
                ],
                "protocol": "robustness",
            },
        ],
    }
    return tiny


def _cli(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "richrep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def _rows(run: Path) -> list[str]:
    return sorted((run / "results.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(tiny, tmp_path):
    cfg = tmp_path / "small.yaml"
    tiny = _small(tiny)
    tiny["runtime"] = {"threads": 1}
    cfg.write_text(yaml.safe_dump(tiny))
    ref = _cli(["run", str(cfg), "--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    (ref_run,) = (p for p in (tmp_path / "ref").iterdir() if p.is_dir())
    rng = random.Random(0)
    out = tmp_path / "killed"
    kills = 0
    for delay in [rng.uniform(0.5, 6.0) for _ in range(4)]:
        p = _cli(["run", str(cfg), "--out", str(out)])
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=300)
    assert kills >= 2
    final = _cli(["run", str(cfg), "--out", str(out)])
    assert final.wait(timeout=300) == 0, final.stdout.read()
    (run,) = (p for p in out.iterdir() if p.is_dir())
    assert (run / "done").exists() and (run / "report.html").exists()
    assert _rows(run) == _rows(ref_run)  # the same results as an uninterrupted run
    for ck in (run / "checkpoints").glob("*.safetensors"):
        a, b = load_tensors(ck)[0], load_tensors(ref_run / "checkpoints" / ck.name)[0]
        assert all((a[k] == b[k]).all() for k in a)
    leftovers = [p.name for p in run.rglob("*.tmp")]
    assert not leftovers  # a killed writer's temporary file is swept by the next run


@pytest.mark.slow
def test_sigkill_while_the_student_trains_then_resume(tiny, tmp_path):
    """A run with a distilled student, killed while the student trains (after its teachers),
    resumes from the student's epoch checkpoint and ends with the uninterrupted run's results."""
    cfg = tmp_path / "distill.yaml"
    tiny = _small(tiny)
    tiny["data"]["params"]["num_samples"] = 3000
    tiny["training"]["epochs"] = 6
    tiny["training"]["baselines"] = [{"kind": "distill", "k": 2}]
    tiny["runtime"] = {"threads": 1}
    cfg.write_text(yaml.safe_dump(tiny))
    ref = _cli(["run", str(cfg), "--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()
    (ref_run,) = (p for p in (tmp_path / "ref").iterdir() if p.is_dir())
    out = tmp_path / "killed"
    p = _cli(["run", str(cfg), "--out", str(out)])
    deadline = time.time() + 240
    partial = None
    while time.time() < deadline and p.poll() is None:
        found = list(out.glob("*/checkpoints/distill2-s0.partial.safetensors"))
        if found:
            partial = found[0]
            break
        time.sleep(0.02)
    assert partial is not None, "the student was never seen training"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    run = partial.parent.parent
    assert not (run / "checkpoints" / "distill2-s0.safetensors").exists()
    final = _cli(["run", str(cfg), "--out", str(out)])
    assert final.wait(timeout=300) == 0, final.stdout.read()
    assert _rows(run) == _rows(ref_run)
    for ck in (run / "checkpoints").glob("*.safetensors"):
        a, b = load_tensors(ck)[0], load_tensors(ref_run / "checkpoints" / ck.name)[0]
        assert all((a[k] == b[k]).all() for k in a), ck.name


@pytest.mark.slow
def test_concurrent_run_is_refused_or_waits(tiny, tmp_path):
    tiny = _small(tiny)
    tiny["data"]["params"]["num_samples"] = 3000
    tiny["training"]["epochs"] = 80  # long enough to still hold the run when the second starts
    tiny["runtime"] = {"threads": 1}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    first = _cli(["run", str(cfg), "--out", str(tmp_path)])
    run = tmp_path / parse_experiment(tiny).run_id()
    deadline = time.time() + 60
    while not (run / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.1)
    second = _cli(["run", str(cfg), "--out", str(tmp_path)])
    out = second.communicate(timeout=120)[0]
    assert first.poll() is None, "the first run ended before the second tried: make it longer"
    assert second.returncode == 2 and "busy" in out, out
    waiter = _cli(["run", str(cfg), "--out", str(tmp_path), "--wait"])
    assert first.wait(timeout=300) == 0
    out = waiter.communicate(timeout=300)[0]
    assert waiter.returncode == 0 and "nothing to do" in out, out


def test_full_disk_is_a_clear_error_and_keeps_earlier_work(tiny, tmp_path, monkeypatch):
    exp = parse_experiment(_small(tiny))
    store = run_experiment(exp, tmp_path, only="train", log=lambda m: None).store
    before = {p: p.read_bytes() for p in store.checkpoints.iterdir()}
    real = os.replace

    def full(src, dst):
        if str(dst).endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StoreError, match="disk is full; earlier results are untouched"):
        run_experiment(exp, tmp_path, log=lambda m: None)
    assert {p: p.read_bytes() for p in store.checkpoints.iterdir()} == before
    assert not list(store.root.rglob("*.tmp"))


def test_read_only_output_is_a_clear_error(tmp_path, monkeypatch):
    def ro(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", ro)
    with pytest.raises(StoreError, match="read-only"):
        write_atomic(tmp_path / "x.json", b"{}")
    with pytest.raises(StoreError, match="not a directory|cannot write"):
        (tmp_path / "afile").write_text("")
        RunStore(tmp_path / "afile" / "run").lock().__enter__()


def test_bad_suite_fails_before_training(tiny, tmp_path):
    tiny["evaluation"] = {
        "suite": [
            {"name": "r", "shifts": [{"classes": {"keep": [5, 6]}}], "protocol": "robustness"}
        ]
    }
    exp = parse_experiment(tiny)
    with pytest.raises(ConfigError, match="source classes"):
        run_experiment(exp, tmp_path, log=lambda m: None)
    assert not list(tmp_path.rglob("*.safetensors"))
    tiny["evaluation"] = {"suite": [{"name": "b", "shifts": [{"gaussian_blur": {"severity": 2}}]}]}
    with pytest.raises(ConfigError, match="applies to image tasks"):
        run_experiment(parse_experiment(tiny), tmp_path, log=lambda m: None)


def test_no_pickle_on_any_load_path():
    pattern = re.compile(
        r"torch\.load\(|pickle\.loads?\(|allow_pickle=True|yaml\.load\(|yaml\.unsafe_load"
    )
    offenders = [str(p) for p in SRC.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


# --- fuzzed experiment files: every failure is one of richrep's own errors -------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-2, 12), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(d, prefix=()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_experiments_fail_cleanly(tiny, data):
    raw = copy.deepcopy(tiny)
    raw["evaluation"] = {
        "suite": [{"name": "n", "shifts": [{"classes": {"keep": [5, 6]}}], "sizes": [10, "all"]}]
    }
    raw["training"]["baselines"] = [{"kind": "wide", "k": 2}]
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(raw))
        path = data.draw(st.sampled_from(paths))
        parent = raw
        for k in path[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["set", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add":
            parent[data.draw(st.text(min_size=1, max_size=6))] = data.draw(values)
        else:
            parent[path[-1]] = data.draw(values)
    with contextlib.suppress(RichrepError):
        parse_experiment(raw)
