"""The disambiguate protocol picks, with a few target labels, the head that holds there."""

import pytest
import torch
from torch import nn

from richrep.config import Spec, SuiteEntry
from richrep.data import load_task
from richrep.evaluation.disambiguate import Disambiguate
from richrep.evaluation.protocols import Context
from richrep.members import Member
from richrep.representations import Representation


class Replay(nn.Module):
    """Returns precomputed logits, chunk after chunk (predict() walks the inputs in order)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table, self.at = table, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.table[self.at : self.at + len(x)]
        self.at += len(x)
        return out


class Owner:
    def __init__(self, task, table):
        self.source_task, self.device, self.dtype = task, torch.device("cpu"), torch.float32
        self.table = table

    def member(self, name):
        return Member(name, "diverse", 2, 0, params={"unlabeled": "test"})

    def classifier(self, name):
        return Replay(self.table)


def test_a_few_labels_pick_the_head_that_holds_off_the_training_distribution():
    task = load_task("colored_mnist1d", {"base_params": {"num_samples": 2000}})
    x, y = task.test.x, task.test.y
    colour = (x[:, 1].abs().sum(1) > x[:, 0].abs().sum(1)).long()  # the channel holding the signal
    heads = torch.stack([nn.functional.one_hot(colour, 2), nn.functional.one_hot(y, 2)], 1)
    owner = Owner(task, heads.float().flatten(1) * 5)
    ctx = Context(featurizer=None, source=task, probe=Spec(name="linear"), seed=0, owner=owner)
    rep = Representation("diverse", 2, (0,), ("diverse2-test-s0",), 4, 10, tag="test")
    entry = SuiteEntry(name="pick", protocol=Spec(name="disambiguate"))
    rows = Disambiguate(labels=[16], draws=3).evaluate(ctx, rep, task, entry)
    picked = [r for r in rows if r.variant == "pick 16 labels" and r.metric == "worst_env_accuracy"]
    assert len(picked) == 3 and all(r.extra["head"] == 1 and r.value == 1.0 for r in picked)
    best = next(r for r in rows if r.variant == "best head" and r.metric == "worst_env_accuracy")
    assert best.extra["head"] == 1
    mean = next(r for r in rows if r.variant == "mean head" and r.metric == "worst_env_accuracy")
    assert mean.value == pytest.approx(0.55, abs=0.05)  # (colour's 0.1 at e=0.9 + 1.0) / 2
    single = Representation("single", 1, (0,), ("single-s0",), 4, 10)
    owner.member = lambda name: Member(name, "single", 1, 0)
    assert Disambiguate().evaluate(ctx, single, task, entry) == []  # one head: nothing to pick
