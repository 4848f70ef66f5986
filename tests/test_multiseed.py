"""The K-seed engine: every strategy gives each seed what train_member would, resumes from the
same epoch checkpoints, and reports a diverging seed without stopping the others."""

from __future__ import annotations

import copy

import pytest
import torch

from richrep.config import TrainingConfig
from richrep.data import Split
from richrep.errors import ConfigError
from richrep.models import Classifier, build_encoder
from richrep.runtime.seeding import seeded
from richrep.runtime.threads import ThreadBudget
from richrep.store import load_tensors
from richrep.training.fused import FusedClassifier, fusable
from richrep.training.loop import train_member
from richrep.training.plan import choose_strategy
from richrep.training.workers import train_group

CPU = torch.device("cpu")
SEEDS = [0, 1, 2]
BUDGET = ThreadBudget(torch.get_num_threads())  # the suite's threads (tests/conftest.py)


def _data(shape: tuple[int, ...], n: int = 300, classes: int = 4) -> Split:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.rand(n, *shape, generator=g) + 0.5 * y.view(-1, *[1] * len(shape)).float()
    return Split(x, y)


ARCHS = {
    "mlp": ((1, 24), dict(hidden=[16], feature_dim=8)),
    "cnn1d": ((1, 24), dict(channels=[4, 6], feature_dim=8)),
    "cnn2d": ((1, 12, 12), dict(channels=[4, 6], feature_dim=8, padding="valid")),
}


def _models(arch: str, seeds=SEEDS, classes: int = 4) -> list[Classifier]:
    shape, params = ARCHS[arch]
    family = "mlp" if arch == "mlp" else "cnn"
    out = []
    for s in seeds:
        with seeded(s, "init"):
            m = Classifier(build_encoder(family, shape, **params), classes)
        m.encoder.set_input_stats(_data(shape).x)
        out.append(m)
    return out


def _cfg(**kw) -> TrainingConfig:
    base = dict(seeds=len(SEEDS), epochs=2, batch_size=64, lr=0.05, precision="fp32")
    return TrainingConfig(**{**base, **kw})


def _reference(models, split, cfg, seeds=SEEDS, dtype=torch.float32):
    ref = [copy.deepcopy(m) for m in models]
    hist = [
        train_member(m, split, cfg, s, device=CPU, dtype=dtype)["history"]
        for m, s in zip(ref, seeds, strict=True)
    ]
    return ref, hist


def _pairs(a, b):
    return zip(a.state_dict().values(), b.state_dict().values(), strict=True)


def _close(a, b, atol: float, rtol: float = 1e-4) -> bool:
    return all(torch.allclose(x.float(), y.float(), atol=atol, rtol=rtol) for x, y in _pairs(a, b))


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in _pairs(a, b))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_matches_train_member_fp32(arch, optimizer):
    split = _data(ARCHS[arch][0])
    cfg = _cfg(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 3e-3, weight_decay=1e-2)
    models = _models(arch)
    ref, hist = _reference(models, split, cfg)
    out = train_group(
        models, split, cfg, SEEDS, device=CPU, dtype=torch.float32, budget=BUDGET, strategy="fused"
    )
    for m, r, h, o in zip(models, ref, hist, out, strict=True):
        assert o["strategy"] == "fused" and "failed" not in o
        assert _close(m, r, atol=2e-5), arch
        assert [e["epoch"] for e in o["history"]] == [1, 2]
        for e, f in zip(h, o["history"], strict=True):
            assert abs(e["loss"] - f["loss"]) < 1e-5
            assert abs(e["train_acc"] - f["train_acc"]) <= 2 / len(split)


def test_sequential_is_train_member_bit_for_bit():
    split, cfg = _data((1, 24)), _cfg()
    models = _models("cnn1d")
    ref, _ = _reference(models, split, cfg)
    train_group(
        models,
        split,
        cfg,
        SEEDS,
        device=CPU,
        dtype=torch.float32,
        budget=BUDGET,
        strategy="sequential",
    )
    assert all(_same(m, r) for m, r in zip(models, ref, strict=True))


@pytest.mark.parametrize(
    "strategy",
    ["threads", pytest.param("processes", marks=pytest.mark.slow), "fused-threads"],
)
def test_parallel_strategies_match_train_member(strategy):
    split, cfg = _data((1, 12, 12)), _cfg()
    models = _models("cnn2d")
    ref, hist = _reference(models, split, cfg)
    seen: set[int] = set()
    threads = torch.get_num_threads()
    out = train_group(
        models,
        split,
        cfg,
        SEEDS,
        device=CPU,
        dtype=torch.float32,
        budget=BUDGET,
        strategy=strategy,
        workers=2,
        on_step=lambda k, d, t: seen.add(k) if d == t else None,
    )
    assert seen == {0, 1, 2} and torch.get_num_threads() == threads
    for m, r, h, o in zip(models, ref, hist, out, strict=True):
        assert o["strategy"] == strategy and "failed" not in o
        assert _close(m, r, atol=2e-5)  # other thread counts: same math, other rounding
        assert abs(h[-1]["loss"] - o["history"][-1]["loss"]) < 1e-5


@pytest.mark.parametrize("arch", ["mlp", "cnn2d"])
def test_fused_bf16_is_close(arch):
    split, cfg = _data(ARCHS[arch][0]), _cfg()
    models = _models(arch)
    ref, hist = _reference(models, split, cfg, dtype=torch.bfloat16)
    out = train_group(
        models, split, cfg, SEEDS, device=CPU, dtype=torch.bfloat16, budget=BUDGET, strategy="fused"
    )
    for m, r, h, o in zip(models, ref, hist, out, strict=True):
        assert _close(m, r, atol=2e-2, rtol=5e-2)
        assert abs(h[-1]["loss"] - o["history"][-1]["loss"]) < 2e-2


def test_seeds_get_different_weights():
    split, cfg = _data((1, 12, 12)), _cfg(epochs=1)
    models = _models("cnn2d", seeds=[3, 3, 4])  # same init for the first two
    train_group(
        models,
        split,
        cfg,
        [3, 5, 4],
        device=CPU,
        dtype=torch.float32,
        budget=BUDGET,
        strategy="fused",
    )
    assert not _close(models[0], models[1], atol=1e-4)  # same init, different data order
    assert not _close(models[0], models[2], atol=1e-4)


class Killed(Exception):
    pass


@pytest.mark.parametrize("resume_with", ["fused", "sequential"])
def test_resume_after_interruption(tmp_path, resume_with):
    split, cfg = _data((1, 12, 12)), _cfg(epochs=3)
    steps = -(-len(split) // cfg.batch_size)
    reference = _models("cnn2d")
    train_group(
        reference,
        split,
        cfg,
        SEEDS,
        device=CPU,
        dtype=torch.float32,
        budget=BUDGET,
        strategy="fused",
    )
    paths = [tmp_path / f"m{s}.partial.safetensors" for s in SEEDS]

    def kill_in_epoch_2(k, done, total):
        if k == 2 and done == steps + 3:
            raise Killed

    with pytest.raises(Killed):
        train_group(
            _models("cnn2d"),
            split,
            cfg,
            SEEDS,
            device=CPU,
            dtype=torch.float32,
            budget=BUDGET,
            strategy="fused",
            partial_paths=paths,
            on_step=kill_in_epoch_2,
        )
    assert all(load_tensors(p)[1]["epoch"] == 1 for p in paths)
    paths[1].unlink()  # seed 1 lost its resume point: it restarts and catches up
    resumed = _models("cnn2d")
    out = train_group(
        resumed,
        split,
        cfg,
        SEEDS,
        device=CPU,
        dtype=torch.float32,
        budget=BUDGET,
        strategy=resume_with,
        partial_paths=paths,
    )
    for k, (a, b, o) in enumerate(zip(reference, resumed, out, strict=True)):
        assert [e["epoch"] for e in o["history"]] == [1, 2, 3]
        if resume_with == "fused" and k != 1:  # seed 1's epoch 1 ran in a group of one
            assert _same(a, b), k
        else:
            assert _close(a, b, atol=2e-5)
    assert all(load_tensors(p)[1]["epoch"] == 3 for p in paths)


@pytest.mark.parametrize("strategy", ["threads", pytest.param("processes", marks=pytest.mark.slow)])
def test_parallel_kill_and_resume(tmp_path, strategy):
    split, cfg = _data((1, 12, 12)), _cfg(epochs=3)
    steps = -(-len(split) // cfg.batch_size)
    reference, _ = _reference(_models("cnn2d"), split, cfg)
    paths = [tmp_path / f"m{s}.partial.safetensors" for s in SEEDS]

    def kill(k, done, total):
        if k == 2 and done >= steps + 1:
            raise Killed

    with pytest.raises(Killed):
        train_group(
            _models("cnn2d"),
            split,
            cfg,
            SEEDS,
            device=CPU,
            dtype=torch.float32,
            budget=BUDGET,
            strategy=strategy,
            workers=2,
            partial_paths=paths,
            on_step=kill,
        )
    saved = load_tensors(paths[2])[1]["epoch"]  # the killed seed's resume point
    assert saved == 1 if strategy == "threads" else saved >= 1  # processes report late
    resumed = _models("cnn2d")
    out = train_group(
        resumed,
        split,
        cfg,
        SEEDS,
        device=CPU,
        dtype=torch.float32,
        budget=BUDGET,
        strategy=strategy,
        workers=2,
        partial_paths=paths,
    )
    for a, b, o in zip(reference, resumed, out, strict=True):
        assert [e["epoch"] for e in o["history"]] == [1, 2, 3] and _close(a, b, atol=2e-5)


@pytest.mark.parametrize("strategy", ["fused", "sequential", "threads"])
def test_nan_in_one_seed_is_reported_for_that_seed(strategy):
    split, cfg = _data((1, 12, 12)), _cfg()
    models = _models("cnn2d")
    with torch.no_grad():
        models[1].head.weight.fill_(float("nan"))
    out = train_group(
        models,
        split,
        cfg,
        SEEDS,
        device=CPU,
        dtype=torch.float32,
        budget=BUDGET,
        strategy=strategy,
        members=["a", "b", "c"],
    )
    assert "member b (seed 1)" in out[1]["failed"] and "epoch 1" in out[1]["failed"]
    for k in (0, 2):
        assert "failed" not in out[k] and len(out[k]["history"]) == 2
        assert all(torch.isfinite(p).all() for p in models[k].parameters())


def test_choose_strategy_and_fusable():
    cnn, mlp = _models("cnn2d"), _models("mlp")
    assert fusable(cnn) and fusable(mlp) and not fusable([cnn[0], mlp[0]])
    two, one = ThreadBudget(2), ThreadBudget(1)
    assert choose_strategy(cnn[:1], CPU, two) == "sequential"
    assert choose_strategy(cnn, CPU, two) == "threads"
    assert choose_strategy(mlp, CPU, two) == "fused-threads"
    assert choose_strategy(cnn, CPU, one) == "sequential"
    assert choose_strategy(cnn, torch.device("cuda"), one) == "fused"  # decided without a GPU
    fused = FusedClassifier(cnn)
    x = torch.rand(3, 5, 1, 12, 12)
    want = torch.stack([m(x[k]) for k, m in enumerate(cnn)])
    assert torch.allclose(fused(x), want, atol=1e-5)
    split = _data((1, 12, 12))
    with pytest.raises(ConfigError, match="strategy"):
        train_group(
            cnn,
            split,
            _cfg(),
            SEEDS,
            device=CPU,
            dtype=torch.float32,
            budget=BUDGET,
            strategy="warp",
        )
    with pytest.raises(ConfigError, match="fused"):
        train_group(
            [cnn[0], mlp[0]],
            split,
            _cfg(),
            [0, 1],
            device=CPU,
            dtype=torch.float32,
            budget=BUDGET,
            strategy="fused",
        )


def test_cnn_valid_padding_is_the_225k_network():
    e = build_encoder("cnn", (1, 28, 28), padding="valid", channels=[32, 64], feature_dim=128)
    c = Classifier(e, 10)
    assert sum(p.numel() for p in c.parameters()) == 225_034
    assert e(torch.rand(2, 1, 28, 28)).shape == (2, 128)
    # pool then ReLU computes exactly what ReLU then pool does
    x = torch.randn(4, 1, 28, 28)
    conv = e.body[0]
    want = torch.nn.functional.max_pool2d(torch.relu(conv(x)), 2)
    assert torch.equal(e.body[2](e.body[1](conv(x))), want)
    with pytest.raises(ConfigError, match="too small"):
        build_encoder("cnn", (1, 5, 5), padding="valid", channels=[4, 4, 4])


def test_plan_units_is_fixed_by_count_strategy_and_budget():
    from richrep.training.plan import Unit, plan_units

    two = ThreadBudget(2)
    assert plan_units(3, "sequential", two) == [Unit((i,), False, 2) for i in range(3)]
    assert plan_units(3, "fused", two) == [Unit((0, 1, 2), True, 2)]
    # 5 seeds on 2 cores: two rounds of two one-thread workers, then the fifth on both cores
    assert plan_units(5, "threads", two) == [Unit((i,), False, 1) for i in range(4)] + [
        Unit((4,), False, 2)
    ]
    assert plan_units(5, "fused-threads", two) == [
        Unit((0, 1, 2), True, 1),
        Unit((3, 4), True, 1),
    ]
    assert plan_units(2, "threads", ThreadBudget(4)) == [
        Unit((0,), False, 2),
        Unit((1,), False, 2),
    ]
