"""SimSiam (Chen & He 2021): the loss against its definition, stop-gradient, the k-NN monitor,
and self-supervised seeds trained and evaluated end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from richrep.config import parse_experiment
from richrep.errors import ConfigError
from richrep.objectives import build_objective
from richrep.objectives.simsiam import SimSiamHead, knn_accuracy
from richrep.pipeline import run_experiment
from richrep.store import read_jsonl


def test_loss_equals_its_definition_on_a_hand_case():
    obj = build_objective("simsiam", {"dim": 2, "pred_dim": 2})
    z1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    p1, p2 = torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 1.0]])
    logits = torch.cat([torch.cat([z1, p1], 1), torch.cat([z2, p2], 1)])  # view 1 first
    # D(p1, z2) = -cos((0,3), (0,2)) = -1 ; D(p2, z1) = -cos((1,1), (1,0)) = -1/sqrt(2)
    want = 0.5 * -1.0 + 0.5 * -(1 / math.sqrt(2))
    assert obj(logits, {"y": torch.zeros(1)}).item() == pytest.approx(want, abs=1e-6)
    # one more example: the loss is the batch mean
    z, p = torch.randn(4, 3), torch.randn(4, 3)
    obj3 = build_objective("simsiam", {"dim": 3, "pred_dim": 2})
    loss = obj3(torch.cat([z, p], 1), {"y": torch.zeros(2)})
    ref = (
        -0.5 * F.cosine_similarity(p[:2], z[2:]).mean()
        - 0.5 * F.cosine_similarity(p[2:], z[:2]).mean()
    )
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)


def test_gradient_stops_at_the_projection():
    obj = build_objective("simsiam", {"dim": 3, "pred_dim": 2})
    logits = torch.randn(6, 6, requires_grad=True)
    obj(logits, {"y": torch.zeros(3)}).backward()
    assert torch.all(logits.grad[:, :3] == 0)  # z: stop-gradient
    assert logits.grad[:, 3:].abs().sum() > 0  # p: trained


def test_head_shapes_and_predictions():
    head = SimSiamHead(16, dim=32, pred_dim=8, layers=2)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 64)
    obj = build_objective("simsiam", {"dim": 32, "pred_dim": 8})
    assert obj.predict(torch.randn(10, 64)).tolist() == [-1] * 5


def test_knn_accuracy_on_a_hand_case():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    q = torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.2, 1.0]])
    assert knn_accuracy(bank, y, q, torch.tensor([0, 1, 1]), k=2) == 1.0
    assert knn_accuracy(bank, y, q, torch.tensor([1, 1, 1]), k=2) == pytest.approx(2 / 3)


def _ssl(tmp_path, augment):
    return parse_experiment(
        {
            "name": "ssl",
            "data": {"dataset": "digits", "val_fraction": 0.2},
            "model": {"encoder": "cnn", "params": {"channels": [8], "feature_dim": 16}},
            "training": {
                "seeds": 2,
                "epochs": 6,
                "batch_size": 128,
                "optimizer": "sgd",
                "lr": 0.1,
                "momentum": 0.9,
                "weight_decay": 1e-4,
                "precision": "fp32",
                "objective": {"simsiam": {"dim": 64, "pred_dim": 16}},
                "augment": augment,
            },
            "evaluation": {
                "subsets": 1,
                "probe": {"Cs": [0.1, 1.0]},
                "suite": [{"name": "digits", "sizes": [10]}],
            },  # fmt: skip
            "runtime": {"threads": 1},
        }
    )


@pytest.mark.slow
def test_simsiam_seeds_train_and_are_evaluated(tmp_path):
    exp = _ssl(tmp_path, [{"random_resized_crop": {"scale": [0.5, 1.0]}}])
    run = run_experiment(exp, tmp_path, log=lambda m: None)
    for m in ("single-s0", "single-s1"):
        meta = run.statuses()[m].meta
        losses = [h["loss"] for h in meta["history"]]
        assert losses[-1] < losses[0] - 0.05  # the loss decreases
        assert min(losses) >= -1.0 and max(losses) <= 1.0
        assert meta["val_metric"] == "knn" and meta["val_acc"] > 0.5  # chance is 0.1
    rows = [r for r in read_jsonl(run.store.results) if r["representation"] == "cat"]
    assert rows and all(0.0 <= r["value"] <= 1.0 for r in rows)


def test_simsiam_needs_augmentation(tmp_path):
    with pytest.raises(ConfigError, match="training.augment"):
        run_experiment(_ssl(tmp_path, []), tmp_path, log=lambda m: None)
