"""The diverse member kind (DivDis, Lee et al. 2023): loss terms and the unlabelled data."""

import math

import pytest
import torch

from richrep.data import load_task
from richrep.members import Member
from richrep.members.diverse import Diverse
from richrep.objectives.divdis import DivDis, mutual_information, uniform_kl
from richrep.representations import Representation


def test_mutual_information_is_zero_for_independent_heads_and_log_c_for_copies():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # independent of a
    assert mutual_information(a, b).item() == pytest.approx(0.0, abs=1e-6)
    assert mutual_information(a, a).item() == pytest.approx(math.log(2), rel=1e-5)
    assert uniform_kl(a).item() == pytest.approx(0.0, abs=1e-6)
    assert uniform_kl(torch.tensor([[1.0, 0.0]] * 3)).item() == pytest.approx(math.log(2), rel=1e-5)


def test_divdis_fits_labelled_rows_and_diversifies_on_unlabelled_ones():
    torch.manual_seed(0)
    logits = torch.randn(6, 2 * 3, requires_grad=True)
    y = torch.tensor([0, 2, 1, -1, -1, -1])
    obj = DivDis(heads=2, mi_weight=0.0, reg_weight=0.0)
    heads = logits.view(6, 2, 3)
    ce = sum(torch.nn.functional.cross_entropy(heads[:3, k], y[:3]) for k in range(2))
    assert obj(logits, {"y": y}).item() == pytest.approx(ce.item(), rel=1e-6)
    full = DivDis(heads=2, mi_weight=1.0, reg_weight=0.0)(logits, {"y": y})
    p = heads[3:].softmax(-1)
    assert (full - ce).item() == pytest.approx(
        mutual_information(p[:, 0], p[:, 1]).item(), rel=1e-5
    )


@pytest.mark.parametrize("source", ["test", "train", "mix"])
def test_training_data_appends_the_chosen_unlabelled_inputs(source):
    task = load_task("colored_mnist1d", {"base_params": {"num_samples": 2000}})
    kind = Diverse(unlabeled=source)
    m = Member(f"diverse2-{source}-s0", "diverse", 2, 0, params={"unlabeled": source})
    data = kind.training_data(m, task)
    n = len(task.train)
    assert torch.equal(data.x[:n], task.train.x) and torch.equal(data.y[:n], task.train.y)
    assert (data.y[n:] == -1).all()
    extra = data.x[n:]
    if source == "test":
        assert torch.equal(extra, task.test.x)
    elif source == "train":
        assert torch.equal(extra, task.train.x)
    else:
        assert len(extra) == min(len(task.test), n)
    capped = Diverse(unlabeled=source, max_unlabeled=10).training_data(m, task)
    assert len(capped) == n + 10
    assert kind.tag(m) == source
    rep = Representation("diverse", 2, (0,), (m.name,), 4, 10, tag=source)
    assert rep.column == f"diverse2-{source}"
