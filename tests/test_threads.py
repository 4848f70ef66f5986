"""The thread budget: a value made once from ``runtime.threads``, split into shares, applied at
the edges where work starts (and restored), and the only thing the planner reads."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
import torch

import richrep
from richrep.errors import ConfigError
from richrep.runtime.threads import ThreadBudget, available_cores

SRC = Path(richrep.__file__).parent


@pytest.fixture
def restore_threads():
    """The test may move torch's setting; the suite's comes back after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2", None])
def test_a_budget_is_a_whole_number_of_at_least_one_thread(bad):
    with pytest.raises(ConfigError, match="thread budget"):
        ThreadBudget(bad)


@pytest.mark.parametrize("bad", [-1, -8, True, 2.0, "0"])
def test_runtime_threads_below_zero_or_not_a_count_is_refused(bad):
    with pytest.raises(ConfigError, match="runtime.threads"):
        ThreadBudget.resolve(bad)


def test_resolve_zero_is_every_core_and_a_larger_count_is_clamped():
    assert ThreadBudget.resolve(0) == ThreadBudget(available_cores())
    assert ThreadBudget.resolve(0, cores=6) == ThreadBudget(6)
    assert ThreadBudget.resolve(3, cores=6) == ThreadBudget(3)
    assert ThreadBudget.resolve(64, cores=6) == ThreadBudget(6)
    assert ThreadBudget.resolve(available_cores() + 5) == ThreadBudget(available_cores())


def test_split_shares_the_budget_never_below_one():
    assert ThreadBudget(5).split(2) == (ThreadBudget(2), ThreadBudget(2))
    assert ThreadBudget(4).split(1) == (ThreadBudget(4),)
    assert ThreadBudget(1).split(3) == (ThreadBudget(1),) * 3
    for bad in (0, -2, 1.0):
        with pytest.raises(ConfigError, match="at least 1 share"):
            ThreadBudget(4).split(bad)


@pytest.mark.parametrize("fail", [False, True])
def test_applied_then_restored_also_on_an_error(restore_threads, fail):
    torch.set_num_threads(2)
    before = ThreadBudget.here()
    raises = pytest.raises(RuntimeError) if fail else contextlib.nullcontext()
    with raises, ThreadBudget(3).applied() as b:
        assert torch.get_num_threads() == 3 and ThreadBudget.here() == b == ThreadBudget(3)
        with ThreadBudget(1).applied():
            assert torch.get_num_threads() == 1 and ThreadBudget.here() == ThreadBudget(1)
        assert torch.get_num_threads() == 3 and ThreadBudget.here() == ThreadBudget(3)
        if fail:
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2 and ThreadBudget.here() == before


def test_a_thread_applies_its_own_budget_without_touching_its_parents(restore_threads):
    """torch.set_num_threads is the calling thread's: a worker's share leaves the thread that
    started it as it was; what each edge applied is told per thread."""
    seen = {}
    torch.set_num_threads(before := 3)
    with ThreadBudget(2).applied():

        def worker():
            ThreadBudget(1).apply()
            seen["worker"] = (torch.get_num_threads(), ThreadBudget.here())

        _run(worker)
        assert seen["worker"] == (1, ThreadBudget(1))
        assert torch.get_num_threads() == 2 and ThreadBudget.here() == ThreadBudget(2)
        _run(lambda: seen.update(later=torch.get_num_threads()))
        assert seen["later"] == 1  # the worker moved the default later threads begin with
    _run(lambda: seen.update(after=torch.get_num_threads()))
    assert seen["after"] == before  # applied() put the process default back too


def _run(fn):
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_the_plan_follows_the_budget_not_torchs_setting(restore_threads, tiny):
    """The same budget gives the same strategy and units whatever torch's global count is."""
    from richrep.config import parse_experiment
    from richrep.members import plan_members
    from richrep.run import source_task
    from richrep.training.engines import work_units
    from richrep.training.plan import Unit, choose_strategy, plan_units

    tiny["training"]["seeds"] = 3
    exp = parse_experiment(tiny)
    task = source_task(exp)
    members = plan_members(exp, task.input_shape)
    plans = []
    for setting in (1, 3):
        torch.set_num_threads(setting)
        units = work_units(exp, task, members, ThreadBudget(2))
        plans.append([(tuple(m.name for m in u.members), u.strategy, u.threads) for u in units])
        assert plan_units(5, "threads", ThreadBudget(2)) == [
            Unit((i,), False, 1) for i in range(4)
        ] + [Unit((4,), False, 2)]
    assert (
        plans[0]
        == plans[1]
        == [
            (("single-s0", "single-s1"), "fused", 1),
            (("single-s2",), "fused", 1),
        ]
    )
    torch.set_num_threads(1)
    models = [torch.nn.Conv1d(1, 1, 3) for _ in range(2)]
    assert choose_strategy(models, torch.device("cpu"), ThreadBudget(2)) == "threads"


def test_train_group_runs_on_its_budget_and_restores(restore_threads):
    """train_group applies the budget it is given for the call, whatever the caller's setting,
    and the caller's setting is back after."""
    from richrep.config import TrainingConfig
    from richrep.data import Split
    from richrep.models import Classifier, build_encoder
    from richrep.training import workers

    seen = []
    real = workers.train_unit

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    x, y = torch.rand(40, 1, 8), torch.randint(0, 2, (40,))
    models = [Classifier(build_encoder("mlp", (1, 8), hidden=[4], feature_dim=4), 2)]
    cfg = TrainingConfig(seeds=1, epochs=1, batch_size=20, lr=0.1, precision="fp32")
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workers, "train_unit", spy)
        workers.train_group(
            models,
            Split(x, y),
            cfg,
            [0],
            device=torch.device("cpu"),
            dtype=torch.float32,
            budget=ThreadBudget(2),
            strategy="sequential",
        )
    assert seen == [2] and torch.get_num_threads() == 1


def test_eval_entries_each_run_on_their_share(restore_threads):
    from richrep.stages.evaluate import eval_workers, in_threads

    seen = []
    lock = threading.Lock()

    def one(_):
        with lock:
            seen.append((torch.get_num_threads(), ThreadBudget.here()))

    with ThreadBudget(4).applied():
        assert eval_workers(0, ThreadBudget(4), 3, torch.device("cpu")) == 3
        in_threads(range(4), one, 2, ThreadBudget(4))
        assert torch.get_num_threads() == 4 and ThreadBudget.here() == ThreadBudget(4)
    assert seen == [(2, ThreadBudget(2))] * 4


def test_decoding_workers_follow_the_budget(restore_threads, monkeypatch):
    from richrep.data.images import loader_workers

    monkeypatch.delenv("RICHREP_DATA_WORKERS", raising=False)
    assert loader_workers(10, ThreadBudget(6)) == 3
    assert loader_workers(10, ThreadBudget(1)) == 1
    assert loader_workers(2, ThreadBudget(6)) == 0  # two batches: no process to start
    with ThreadBudget(4).applied():
        torch.set_num_threads(1)  # torch's count is not what decides
        assert loader_workers(10) == 2
    monkeypatch.setenv("RICHREP_DATA_WORKERS", "5")
    assert loader_workers(10, ThreadBudget(2)) == 5


def test_probe_policy_runs_a_large_solve_on_the_callers_budget(restore_threads):
    from richrep.runtime.cpu_policy import SMALL_PROBLEM, probe_compute_policy

    torch.set_num_threads(1)
    with probe_compute_policy(SMALL_PROBLEM + 1, "cpu", "float64", ThreadBudget(3)) as policy:
        assert policy.threads == torch.get_num_threads() == 3
    with probe_compute_policy(10, "cpu", "float64", ThreadBudget(3)) as policy:
        assert policy.threads == torch.get_num_threads() == 1  # small: one thread
    assert torch.get_num_threads() == 1


def test_only_the_budget_sets_or_reads_torchs_thread_count():
    """torch's count is set only where a budget is applied (runtime/threads.py) and read only
    there and for the environment record."""
    allowed = {SRC / "runtime" / "threads.py", SRC / "runtime" / "environment.py"}
    offenders = [
        str(p.relative_to(SRC))
        for p in sorted(SRC.rglob("*.py"))
        if p not in allowed
        and ("set_num_threads(" in p.read_text() or "get_num_threads(" in p.read_text())
    ]
    assert offenders == []
