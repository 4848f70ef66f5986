"""The ``ood`` protocol: heads on frozen features, both selection rules, per-environment rows."""

import numpy as np
import pytest
import torch

from richrep.config import Spec, SuiteEntry
from richrep.data import Split, load_task
from richrep.errors import ConfigError
from richrep.evaluation.ood import OOD, select, slices
from richrep.evaluation.ood_train import HeadAdam
from richrep.evaluation.protocols import Context
from richrep.objectives import IRM, CrossEntropy, Fishr, GroupDRO, VREx
from richrep.representations import Representation


@pytest.fixture(scope="module")
def colored():
    return load_task("colored_mnist1d", {"base_params": {"num_samples": 2000}})


def colour_features(split: Split) -> torch.Tensor:
    """The colour alone (which channel holds the signal), as a ±1 feature."""
    red = split.x[:, 0].abs().sum(1) > split.x[:, 1].abs().sum(1)
    return (red.float() * 2 - 1)[:, None]


def context(task, features):
    return Context(
        featurizer=lambda rep, split: features(split),
        source=task,
        probe=Spec(name="linear"),
        seed=0,
    )


REP = Representation("single", 1, (0,), ("single-s0",), 1, 0)


def entry(**params):
    return SuiteEntry(name="ood", protocol=Spec(name="ood", params=params))


def test_an_erm_head_on_the_colour_alone_follows_the_colour(colored):
    """Predicting the label from the colour is right with probability 1 - e in environment e."""
    proto = OOD(algorithms=["erm"], steps=200, lr=0.05, eval_every=50, restarts=1)
    rows = proto.evaluate(context(colored, colour_features), REP, colored, entry())
    acc = {
        r.environment: r.value
        for r in rows
        if r.metric == "accuracy" and "train-domain" in r.variant
    }
    for name, e in (("test e=0.9", 0.9), ("test e=0.1", 0.1), ("test e=0.5", 0.5)):
        n = sum(r.n for r in rows if r.environment == name) // 2
        assert abs(acc[name] - (1 - e)) < 4 * np.sqrt(e * (1 - e) / n) + 0.01
    worst = [r.value for r in rows if r.metric == "worst_env_accuracy"]
    assert all(w == pytest.approx(min(acc.values()), abs=0.05) for w in worst)
    train_env = [r.value for r in rows if r.metric == "train_env_accuracy"][0]
    assert train_env == pytest.approx(0.85, abs=0.05)  # colour agrees 90 % / 80 % in training


def test_training_domain_selection_never_reads_test_labels(colored):
    """Scrambling the test labels changes the reported accuracies, not the setting and step
    chosen by training-domain validation (the oracle's choice may change)."""
    proto = OOD(
        algorithms=["erm", "irm"],
        grid={"irm": {"penalty_weight": [1.0, 100.0]}},
        steps=60,
        eval_every=20,
        anneal_steps=10,
        restarts=2,
    )
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(80, 8, generator=g)
    feats = lambda s: s.x.flatten(1) @ proj  # noqa: E731
    rows = proto.evaluate(context(colored, feats), REP, colored, entry())
    scrambled_y = colored.test.y[torch.randperm(len(colored.test), generator=g)]
    scrambled = colored.with_splits(
        test=Split(colored.test.x, scrambled_y, colored.test.groups, colored.test.env)
    )
    rows2 = proto.evaluate(context(scrambled, feats), REP, scrambled, entry())

    def chosen(rs, rule):
        return [
            (r.variant, r.draw, r.extra["setting"], r.extra["step"])
            for r in rs
            if r.metric == "worst_env_accuracy" and rule in r.variant
        ]

    assert chosen(rows, "train-domain") == chosen(rows2, "train-domain")
    assert [r.value for r in rows if r.metric == "accuracy"] != [
        r.value for r in rows2 if r.metric == "accuracy"
    ]
    metrics = {r.metric for r in rows}
    assert metrics == {
        "accuracy",
        "worst_env_accuracy",
        "average_accuracy",
        "worst_group_accuracy",
        "train_env_accuracy",
    }
    assert {r.variant for r in rows} == {
        "erm · train-domain",
        "erm · oracle",
        "irm · train-domain",
        "irm · oracle",
    }


def test_select_uses_validation_for_the_training_domain_rule_and_the_oracle_slice_otherwise():
    recs = [  # two settings x one restart, two steps each
        [{"step": 1, "val": 0.5, "oracle:a": 0.9}, {"step": 2, "val": 0.6, "oracle:a": 0.1}],
        [{"step": 1, "val": 0.55, "oracle:a": 0.2}, {"step": 2, "val": 0.7, "oracle:a": 0.3}],
    ]
    assert select(recs, 0, 1, "train-domain", ["oracle:a"]) == (1, recs[1][1])
    assert select(recs, 0, 1, "oracle", ["oracle:a"]) == (0, recs[0][0])


def test_oracle_and_report_slices_split_every_test_environment_the_same_way(colored):
    score, report = slices(colored, 0.2, 0, "e")
    names = score.names
    env = colored.test.env
    for e in report["envs"]:
        o = score.slices[names.index(f"oracle:{e}")].bool()
        r = score.slices[names.index(f"report:{e}")].bool()
        assert not (o & r).any() and abs(o.sum() / (o.sum() + r.sum()) - 0.2) < 0.01
    per_env = [
        score.slices[names.index(f"oracle:{e}")].bool()[env == i]
        for i, e in zip(sorted(set(env.tolist())), report["envs"], strict=True)
    ]
    assert all(torch.equal(per_env[0], p) for p in per_env)  # the same image positions


def test_head_adam_is_torch_adam_and_resets_one_head_only():
    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)
    ref = w.detach().clone().requires_grad_(True)
    mine, theirs = HeadAdam([w], 0.1), torch.optim.Adam([ref], lr=0.1)
    for _ in range(5):
        for p in (w, ref):
            p.grad = None
            (p.pow(3).sum()).backward()
        mine.step()
        theirs.step()
    assert torch.allclose(w, ref, atol=1e-6)
    mine.reset(slice(0, 1))
    assert mine.t.tolist() == [0, 5, 5]


@pytest.mark.parametrize(
    "make",
    [
        CrossEntropy,
        lambda: IRM(10.0),
        lambda: VREx(10.0),
        lambda: GroupDRO(0.5),
        lambda: Fishr(10.0),
    ],
)
def test_objectives_on_stacked_heads_equal_each_head_alone(make):
    torch.manual_seed(1)
    z = torch.randn(40, 3)
    logits = torch.randn(4, 40, 2)
    batch = {"y": torch.randint(0, 2, (40,)), "env": torch.arange(40) % 3, "features": z}
    together = make().train()(logits, batch)
    alone = torch.stack([make().train()(logits[h], batch) for h in range(4)])
    assert together.shape == (4,) and torch.allclose(together, alone, atol=1e-6)


def test_ood_needs_environments():
    task = load_task("digits")
    with pytest.raises(ConfigError, match="needs environments"):
        OOD().check(entry(), task, task)


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({"irm": {"penalty_weight": [1.0, -1.0]}}, r"'penalty_weight'=-1\.0 is invalid"),
        ({"fishr": {"ema": [1.0]}}, r"'ema'=1\.0 is invalid: Input should be less than 1"),
        ({"group_dro": {"eta": [0.0]}}, r"'eta'=0\.0 is invalid"),
    ],
)
def test_a_bad_grid_value_fails_when_the_protocol_is_built(grid, match):
    """The grid's values meet the objectives' annotated constraints when the protocol is
    built (the preflight, before any training), not when the heads train."""
    with pytest.raises(ConfigError, match=rf"ood grid of \w+: objective .*{match}"):
        OOD(grid=grid)
