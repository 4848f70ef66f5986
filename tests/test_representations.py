"""Representations: seed subsets, dimensions and parameter counts, the feature cache."""

from __future__ import annotations

import torch

from richrep.config import parse_experiment
from richrep.data import Split
from richrep.members import build_model, plan_members
from richrep.models import count_params
from richrep.plugins import FLOORS
from richrep.representations import Trained, plan_representations, seed_subsets
from richrep.representations.features import FeatureCache, Featurizer, extract


def test_seed_subsets_disjoint_first_then_distinct():
    subs = seed_subsets([0, 1, 2, 3, 4], 2, 3, seed=0)
    assert len(subs) == 3 and len(set(subs)) == 3
    assert set(subs[0]).isdisjoint(subs[1])  # a partition comes first
    assert seed_subsets([0, 1, 2, 3, 4], 5, 3) == [(0, 1, 2, 3, 4)]
    assert len(seed_subsets(range(10), 3, 3)) == 3 and all(
        set(a).isdisjoint(b)
        for a, b in [
            (x, y)
            for x in seed_subsets(range(10), 3, 3)
            for y in seed_subsets(range(10), 3, 3)
            if x != y
        ]
    )
    assert seed_subsets(range(6), 2, 4, seed=0) == seed_subsets(
        range(6), 2, 4, seed=0
    )  # deterministic
    assert len(seed_subsets([0, 1, 2], 2, 10)) == 3  # only three pairs exist


def test_plan_dims_and_params(tiny):
    tiny["training"]["seeds"] = 3
    tiny["training"]["baselines"] = [
        {"kind": "wide", "k": 3},
        {"kind": "wide_dim", "k": 3},
        {"kind": "joint", "k": 3},
    ]
    exp = parse_experiment(tiny)
    members = plan_members(exp, (1, 40))
    meta = {}
    for m in members:

        class T:  # a task stand-in with what build_model needs
            input_shape = (1, 40)
            num_classes = 5
            train = Split(torch.randn(8, 1, 40), torch.zeros(8, dtype=torch.long))

        enc = build_model(m, exp, T).encoder
        meta[m.name] = {"feature_dim": enc.feature_dim, "encoder_params": count_params(enc)}
    del meta["single-s2"]  # diverged: not trained
    trained = [
        Trained(
            m.name, m.kind, m.k, m.seed, meta[m.name]["feature_dim"], meta[m.name]["encoder_params"]
        )
        for m in members
        if m.name in meta
    ]
    floors = [FLOORS.build("input"), FLOORS.build("random")]
    reps = plan_representations(trained, subsets=2, floors=floors, floor_context={"input_dim": 40})
    kinds = [(r.kind, r.k) for r in reps]
    assert kinds[:2] == [("input", 0), ("random", 2)]  # random floor uses the trained seeds only
    assert kinds.count(("single", 1)) == 2 and kinds.count(("cat", 2)) == 1
    single = next(r for r in reps if r.kind == "single")
    cat2 = next(r for r in reps if r.kind == "cat")
    assert single.dim == 16 and cat2.dim == 32 and cat2.params == 2 * single.params
    assert next(r for r in reps if r.kind == "input").dim == 40
    joint = next(r for r in reps if r.kind == "joint")
    assert joint.dim == 48 and joint.params == 3 * single.params
    wide_dim = next(r for r in reps if r.kind == "wide_dim")
    assert wide_dim.dim == 48
    wide = next(r for r in reps if r.kind == "wide")
    assert abs(wide.params / (3 * single.params) - 1) < 0.05


def test_extract_is_eval_no_grad_and_batched():
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 8), torch.nn.Dropout(0.5))
    x = torch.randn(100, 1, 40)
    a = extract(enc, x, device=torch.device("cpu"), dtype=torch.float32, batch_size=7)
    b = extract(enc, x, device=torch.device("cpu"), dtype=torch.float32, batch_size=1000)
    assert not a.requires_grad and torch.allclose(a, b, atol=1e-6)  # dropout off in eval mode
    assert torch.allclose(a, enc.eval()(x).detach(), atol=1e-6)


def test_cache_never_extracts_twice_and_concat(tmp_path):
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            if len(x) > 1:  # batch_size_for's one-example shape probe aside
                calls.append(self.scale)
            return x.flatten(1)[:, :3] * self.scale

    from richrep.representations import Representation

    f = Featurizer(
        {"a": Counting(1.0), "b": Counting(2.0)},
        device=torch.device("cpu"),
        dtype=torch.float32,
        cache=FeatureCache(directory=tmp_path),
    )
    s = Split(torch.randn(10, 1, 5), torch.zeros(10, dtype=torch.long))
    cat = Representation("cat", 2, (0, 1), ("a", "b"), 6, 0)
    single = Representation("single", 1, (0,), ("a",), 3, 0)
    out = f(cat, s)
    assert out.shape == (10, 6) and torch.allclose(out[:, 3:], 2 * out[:, :3])
    f(single, s)
    f(cat, s)
    assert calls == [1.0, 2.0]  # each part once
    f2 = Featurizer(
        {}, device=torch.device("cpu"), dtype=torch.float32, cache=FeatureCache(directory=tmp_path)
    )
    assert torch.equal(f2(cat, s), out)  # from disk, no encoder needed
    tiny_budget = FeatureCache(budget_bytes=1)
    tiny_budget.put("a-h1", torch.zeros(10))
    tiny_budget.put("a-h2", torch.zeros(10))
    assert tiny_budget.get("a-h1") is None and tiny_budget.get("a-h2") is not None


def test_extraction_batch_size_follows_activation_size():
    from richrep.models import build_encoder
    from richrep.representations.features import batch_size_for

    cpu = torch.device("cpu")
    cnn = build_encoder("cnn", (1, 28, 28), channels=[32, 64], feature_dim=128)
    mlp = build_encoder("mlp", (40,), hidden=[256, 256], feature_dim=64)
    assert batch_size_for(cnn, torch.zeros(2, 1, 28, 28), cpu) == 128  # 100 KB per image
    assert batch_size_for(mlp, torch.zeros(2, 40), cpu) == 4096  # 1 KB per example: the cap
    assert batch_size_for(cnn, torch.zeros(2, 1, 28, 28), torch.device("meta")) == 2048
