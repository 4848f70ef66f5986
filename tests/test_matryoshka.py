"""Matryoshka representations (Kusupati et al. 2022) and the truncation protocol."""

import pytest
import torch
import torch.nn.functional as F

from richrep.config import Spec, SuiteEntry
from richrep.data import load_task
from richrep.evaluation.protocols import Context
from richrep.evaluation.truncation import Truncation, nearest_neighbour_accuracy, prefixes
from richrep.members.matryoshka import nest
from richrep.models.heads import NestedHeads
from richrep.objectives import Matryoshka
from richrep.representations import Representation


def test_nested_heads_read_only_their_prefix():
    torch.manual_seed(0)
    heads = NestedHeads(6, 3, [2, 4, 6])
    z = torch.randn(5, 6)
    out = heads(z).view(5, 3, 3)
    z2 = z.clone()
    z2[:, 2:] = 99.0  # beyond the first head's prefix
    assert torch.allclose(heads(z2).view(5, 3, 3)[:, 0], out[:, 0])
    assert torch.allclose(out[:, 1], heads.heads[1](z[:, :4]))
    shared = NestedHeads(6, 3, [2, 6], shared=True)
    w, b = shared.full.weight, shared.full.bias
    assert torch.allclose(shared(z).view(5, 2, 3)[:, 0], z[:, :2] @ w[:, :2].t() + b)


def test_the_loss_is_the_weighted_sum_of_the_nested_cross_entropies():
    logits = torch.randn(4, 2 * 3)
    y = torch.tensor([0, 2, 1, 1])
    loss = Matryoshka(2, [1.0, 0.5])(logits, {"y": y})
    heads = logits.view(4, 2, 3)
    expect = F.cross_entropy(heads[:, 0], y) + 0.5 * F.cross_entropy(heads[:, 1], y)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert torch.equal(Matryoshka(2).predict(logits), heads[:, 1].argmax(1))  # the full head


def test_nests_and_prefixes_include_powers_of_two_and_seed_blocks():
    assert nest(96, 32) == [8, 16, 32, 64, 96]
    assert prefixes(96, 3, None, True) == [8, 16, 32, 64, 96]
    assert prefixes(60, 3, None, True) == [8, 16, 20, 32, 40, 60]
    assert prefixes(60, 3, [10], False) == [10, 60]


def test_nearest_neighbour_and_the_protocol_rows():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert nearest_neighbour_accuracy(a, torch.tensor([0, 1]), a * 3, torch.tensor([0, 1])) == 1.0
    task = load_task("digits")
    ctx = Context(
        featurizer=lambda rep, s: s.x.flatten(1), source=task, probe=Spec(name="linear"), seed=0
    )
    rep = Representation("input", 0, (), ("input",), 64, 0)
    entry = SuiteEntry(name="t", protocol=Spec(name="truncation", params={"dims": [4, 16]}))
    rows = Truncation(dims=[4, 16]).evaluate(ctx, rep, task, entry)
    got = {(r.metric, r.extra["prefix"]): r.value for r in rows}
    assert set(got) == {(m, p) for m in ("accuracy", "nn_accuracy") for p in (4, 16, 64)}
    assert got[("accuracy", 64)] > got[("accuracy", 4)]  # more of the digit, better


def test_the_member_kind_plans_catks_dimension_with_nested_heads():
    from richrep.config import Experiment
    from richrep.members import build_model, kind_of, plan_members

    exp = Experiment.model_validate(
        {
            "name": "m",
            "data": {"dataset": "mnist1d"},
            "model": {"encoder": "mlp", "params": {"hidden": [8], "feature_dim": 4}},
            "training": {
                "seeds": 3,
                "baselines": [
                    {"kind": "matryoshka", "k": 3},
                    {"kind": "matryoshka", "k": 3, "shared": True},
                ],
            },
        }
    )
    task = load_task("mnist1d", {"num_samples": 2000})
    members = {m.name: m for m in plan_members(exp, task.input_shape)}
    mrl, mrle = members["mrl3-s0"], members["mrl3-e-s0"]
    assert mrl.feature_dim == 12 and kind_of(mrl).nested(mrl) == [4, 8, 12]
    assert kind_of(mrle).tag(mrle) == "e" and kind_of(mrl).tag(mrl) == ""
    model = build_model(mrl, exp, task)
    assert model(task.train.x[:5]).shape == (5, 3 * 10)
