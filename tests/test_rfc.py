"""RFC (Zhang, Lopez-Paz & Bottou 2022) as member kinds: plan, round groups, synthesis."""

import pytest
import torch

from richrep.config import Experiment
from richrep.members import plan_members
from richrep.members.rfc import balance_weights, round_groups
from richrep.objectives import GroupDROSets, PseudoLabelHeads
from richrep.representations import Trained, plan_representations


def exp(**baseline):
    return Experiment.model_validate(
        {
            "name": "t",
            "data": {"dataset": "colored_mnist1d"},
            "model": {"encoder": "mlp", "params": {"hidden": [8], "feature_dim": 4}},
            "training": {"seeds": 2, "baselines": [{"kind": "rfc", "k": 3, **baseline}]},
        }
    )


def test_rfc_plans_rounds_in_order_then_the_synthesis():
    members = plan_members(exp(seeds=1), (2, 40))
    by = {m.name: m for m in members}
    assert [m.name for m in members if m.kind != "single"] == [
        "rfc3-r0-s0",
        "rfc3-r1-s0",
        "rfc3-r2-s0",
        "rfc3-s0",
    ]
    assert by["rfc3-r0-s0"].requires == ()
    assert by["rfc3-r2-s0"].requires == ("rfc3-r0-s0", "rfc3-r1-s0")
    assert by["rfc3-s0"].requires == ("rfc3-r0-s0", "rfc3-r1-s0", "rfc3-r2-s0")
    trained = [Trained(m.name, m.kind, m.k, m.seed, 4, 10) for m in members]
    kinds = {r.kind for r in plan_representations(trained, subsets=1)}
    assert "rfc" in kinds and "rfc_round" not in kinds  # rounds are scaffolding


def test_round_groups_are_each_rounds_right_and_wrong_sets():
    y = torch.tensor([0, 1, 1, 0])
    pred = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]])  # (N, rounds)
    g = round_groups(pred, y)
    assert g.tolist() == [
        [True, False, False, True],
        [True, False, True, False],
        [False, True, False, True],
        [False, True, True, False],
    ]


def test_balance_weights_give_agreement_and_disagreement_half_each():
    pred = torch.tensor([[0, 0], [1, 1], [1, 1], [0, 1]])  # 3 agree, 1 disagrees
    w = balance_weights(pred)
    assert w[:3].sum().item() == pytest.approx(w[3].item())
    assert w.mean().item() == pytest.approx(1.0)
    assert torch.equal(balance_weights(torch.zeros(3, 2, dtype=torch.long)), torch.ones(3))


def test_group_dro_sets_weights_the_worst_set():
    logits = torch.zeros(4, 2)
    logits[:2, 0] = 4.0  # examples 0, 1 right; 2, 3 wrong
    y = torch.tensor([0, 0, 1, 1])
    masks = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.bool)
    obj = GroupDROSets(eta=1.0).train()
    for _ in range(30):
        obj(logits, {"y": y, "group_masks": masks})
    assert obj.q[1] > 0.99


def test_pseudo_label_heads_fit_each_column_with_weights():
    logits = torch.randn(5, 3 * 2)
    pseudo = torch.randint(0, 2, (5, 3))
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0])
    loss = PseudoLabelHeads(3)(logits, {"y": pseudo[:, 0], "pseudo": pseudo, "weight": w})
    heads = logits.view(5, 3, 2)
    ce = torch.stack(
        [
            torch.nn.functional.cross_entropy(heads[:, k], pseudo[:, k], reduction="none")
            for k in range(3)
        ],
        1,
    ).sum(1)
    assert loss.item() == pytest.approx(((w * ce).sum() / w.sum()).item(), rel=1e-6)


def test_rfc_phases_override_the_training_settings_per_phase():
    from richrep.errors import ConfigError
    from richrep.members import kind_of

    e = exp(seeds=1, phases={"erm": {"epochs": 2}, "dro": {"epochs": 7, "lr": 0.5}})
    members = {m.name: m for m in plan_members(e, (2, 40))}
    r0, r1, student = members["rfc3-r0-s0"], members["rfc3-r1-s0"], members["rfc3-s0"]
    assert kind_of(r0).training(r0, e).epochs == 2
    assert (kind_of(r1).training(r1, e).epochs, kind_of(r1).training(r1, e).lr) == (7, 0.5)
    assert kind_of(student).training(student, e) == e.training  # no synthesis override
    with pytest.raises(ConfigError, match="cannot be set per phase"):
        plan_members(exp(seeds=1, phases={"erm": {"seeds": 3}}), (2, 40))
    with pytest.raises(ConfigError, match="phases"):
        plan_members(exp(seeds=1, phases={"warmup": {"epochs": 1}}), (2, 40))
