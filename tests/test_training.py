"""Seeds drive initialization and data order; training is bit-reproducible and resumable."""

from __future__ import annotations

import pytest
import torch

from richrep.config import parse_experiment
from richrep.errors import StoreError, TrainingError
from richrep.members import Member, build_model, plan_members
from richrep.run import source_task
from richrep.store import RunStore, load_tensors
from richrep.store.ledger import Ledger, State
from richrep.training.checkpoint import load_checkpoint, save_checkpoint
from richrep.training.engines import train_local
from richrep.training.loop import epoch_order, train_member


def _train(exp, task, seed, **kw):
    m = build_model(Member(f"single-s{seed}", "single", 1, seed), exp, task)
    train_member(
        m, task.train, exp.training, seed, device=torch.device("cpu"), dtype=torch.float32, **kw
    )
    return m


def _same(a, b) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.fixture
def setup(tiny):
    exp = parse_experiment(tiny)
    return exp, source_task(exp)


def test_seeds_differ_in_init_and_order(setup):
    exp, task = setup
    a0 = build_model(Member("single-s0", "single", 1, 0), exp, task)
    a1 = build_model(Member("single-s1", "single", 1, 1), exp, task)
    assert not torch.equal(a0.head.weight, a1.head.weight)
    assert not torch.equal(epoch_order(0, 0, 100), epoch_order(1, 0, 100))
    assert not torch.equal(epoch_order(0, 0, 100), epoch_order(0, 1, 100))  # epochs differ too
    assert not _same(_train(exp, task, 0), _train(exp, task, 1))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_is_bit_identical(tiny, precision):
    tiny["training"]["precision"] = precision
    exp = parse_experiment(tiny)
    task = source_task(exp)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    models = []
    for _ in range(2):
        m = build_model(Member("single-s4", "single", 1, 4), exp, task)
        train_member(m, task.train, exp.training, 4, device=torch.device("cpu"), dtype=dtype)
        models.append(m)
    assert _same(*models)


class Killed(Exception):
    pass


def test_resume_after_interruption_is_bit_identical(setup, tmp_path):
    exp, task = setup
    exp = exp.model_copy(update={"training": exp.training.model_copy(update={"epochs": 3})})
    reference = _train(exp, task, 2)
    partial = tmp_path / "m.partial.safetensors"
    steps = -(-len(task.train) // exp.training.batch_size)

    def kill_in_epoch_2(done, total):
        if done == steps + 3:
            raise Killed

    with pytest.raises(Killed):
        _train(exp, task, 2, partial_path=partial, on_step=kill_in_epoch_2)
    assert load_tensors(partial)[1]["epoch"] == 1
    resumed = _train(exp, task, 2, partial_path=partial)
    assert _same(reference, resumed)


def test_corrupt_resume_point_is_discarded(setup, tmp_path):
    exp, task = setup
    reference = _train(exp, task, 1)
    partial = tmp_path / "m.partial.safetensors"
    _train(exp, task, 1, partial_path=partial)
    partial.write_bytes(partial.read_bytes()[:-10])  # truncated
    again = _train(exp, task, 1, partial_path=partial)
    assert _same(reference, again)


def test_non_finite_loss_names_seed_and_epoch(tiny):
    tiny["training"]["lr"] = 1e6
    tiny["training"]["momentum"] = 0.0
    exp = parse_experiment(tiny)
    task = source_task(exp)
    with pytest.raises(TrainingError, match=r"seed 3\).*epoch 1"):
        m = build_model(Member("single-s3", "single", 1, 3), exp, task)
        train_member(
            m,
            task.train,
            exp.training,
            3,
            device=torch.device("cpu"),
            dtype=torch.float32,
            member="single-s3",
        )


def test_checkpoint_round_trip_and_tamper(setup, tmp_path):
    exp, task = setup
    m = _train(exp, task, 0)
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, m, note="x")
    m2 = build_model(Member("single-s5", "single", 1, 5), exp, task)
    assert load_checkpoint(p, m2)["note"] == "x" and _same(m, m2)
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="sha256"):
        load_checkpoint(p, m2)
    assert b"pickle" not in p.read_bytes()[:200]


def test_engine_reuses_finished_and_retrains_tampered(setup, tmp_path):
    exp, task = setup
    store = RunStore(tmp_path / "run")
    members = plan_members(exp, task.input_shape)
    first = train_local(exp, task, members, store)
    again = train_local(exp, task, members, store)
    assert first == again  # same sidecars, nothing retrained
    ck = Ledger(store).final("single-s1")
    ck.write_bytes(ck.read_bytes()[:100])
    seen = []
    train_local(exp, task, members, store, progress=lambda m, d, t: seen.append(m))
    assert "single-s1" in seen and load_tensors(ck)[1]["member"]["seed"] == 1
    assert list((store.root / "quarantine").glob("*single-s1.safetensors"))  # kept, not deleted


@pytest.mark.parametrize("strategy", ["sequential", "threads"])
def test_failed_member_is_recorded_and_others_continue(tiny, tmp_path, monkeypatch, strategy):
    tiny["runtime"] = {"strategy": strategy}
    exp = parse_experiment(tiny)
    task = source_task(exp)
    import richrep.training.workers as workers

    real = workers.train_unit

    def flaky(models, seeds, *a, **kw):
        if list(seeds) == [0]:
            return [
                {
                    "history": [],
                    "failed": "member single-s0 (seed 0): the training loss became nan in epoch 1",
                }
            ]
        return real(models, seeds, *a, **kw)

    monkeypatch.setattr(workers, "train_unit", flaky)
    store = RunStore(tmp_path / "run")
    out = train_local(exp, task, plan_members(exp, task.input_shape), store)
    assert out["single-s0"].state is State.FAILED and "val_acc" in out["single-s1"].meta
    assert (store.checkpoints / "single-s0.failed.json").exists()


def test_ray_engine_without_ray_says_how_to_install(tiny, monkeypatch):
    import sys

    from richrep.errors import ConfigError
    from richrep.training.engines.ray_engine import RayEngine

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    tiny["runtime"] = {"engine": "ray"}
    exp = parse_experiment(tiny)
    with pytest.raises(ConfigError, match=r"pip install 'richrep\[ray\]'"):
        RayEngine().train(exp, source_task(exp), [], RunStore("/nonexistent"))
