"""Each out-of-distribution penalty on a case with a known answer."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from richrep.errors import ConfigError
from richrep.objectives import IRM, Fishr, GroupDRO, VREx, build_objective
from richrep.objectives.environments import env_risks
from richrep.objectives.fishr import (
    fishr_penalty,
    gradient_variances,
    head_gradient_variances,
    head_gradients,
)
from richrep.objectives.group_dro import dro_update
from richrep.objectives.irm import irm_penalty
from richrep.objectives.vrex import vrex_penalty


def _calibrated(logit: float, positives: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples with binary logits [0, logit] of which ``positives`` have label 1."""
    logits = torch.tensor([[0.0, logit]] * n)
    y = torch.tensor([1] * positives + [0] * (n - positives))
    return logits, y


def test_irm_penalty_is_zero_at_the_per_environment_optimum_and_positive_elsewhere():
    # sigmoid(log 3) = 3/4: with 3 of 4 labels positive no rescaling lowers the risk
    a, ya = _calibrated(math.log(3), 3, 4)
    b, yb = _calibrated(math.log(1 / 3), 1, 4)  # the other environment, also calibrated
    logits, y = torch.cat([a, b]), torch.cat([ya, yb])
    env = torch.tensor([0] * 4 + [1] * 4)
    assert irm_penalty(logits, y, env).item() == pytest.approx(0.0, abs=1e-12)
    over, _ = _calibrated(math.log(9), 3, 4)  # overconfident in environment 0
    p = irm_penalty(torch.cat([over, b]), y, env).item()
    # d/dw CE(w l) at w=1 = (sigmoid(l) - mean(y)) * l = (0.9 - 0.75) log 9
    assert p == pytest.approx(((0.9 - 0.75) * math.log(9)) ** 2, rel=1e-5)


def test_irm_penalty_has_a_gradient_and_the_objective_anneals():
    logits = torch.randn(20, 2, requires_grad=True)
    y, env = torch.randint(0, 2, (20,)), torch.arange(20) % 2
    irm_penalty(logits, y, env).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    obj = IRM(penalty_weight=100.0, anneal_steps=2).train()
    batch = {"y": y, "env": env}
    ce = F.cross_entropy(logits, y)
    pen = irm_penalty(logits, y, env)
    assert obj(logits, batch).item() == pytest.approx((ce + pen).item(), rel=1e-6)  # weight 1
    obj(logits, batch)
    assert obj(logits, batch).item() == pytest.approx((ce + 100 * pen).item() / 100, rel=1e-5)


def test_vrex_penalty_is_the_variance_of_the_environment_risks():
    risks = torch.tensor([0.3, 0.7, 1.4])
    assert vrex_penalty(risks).item() == pytest.approx(float(np.var([0.3, 0.7, 1.4])))
    logits, y = torch.randn(30, 3), torch.randint(0, 3, (30,))
    env = torch.arange(30) % 3
    per = [F.cross_entropy(logits[env == e], y[env == e]).item() for e in range(3)]
    assert env_risks(logits, y, env).tolist() == pytest.approx(per, rel=1e-6)
    loss = VREx(penalty_weight=10.0)(logits, {"y": y, "env": env}).item()
    # the loss is divided by a weight above 1 (IRM's rescaling)
    assert loss == pytest.approx((np.mean(per) + 10 * np.var(per)) / 10, rel=1e-5)


def test_group_dro_moves_its_weight_to_the_worst_group():
    q = torch.full((3,), 1 / 3)
    risks = torch.tensor([0.1, 2.0, 0.5])
    for _ in range(200):
        q = dro_update(q, risks, eta=0.1)
    assert int(q.argmax()) == 1 and q[1] > 0.99
    obj = GroupDRO(eta=1.0).train()
    logits = torch.zeros(8, 2)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    logits[:4, 0] = 5.0  # environment 0 right, environment 1 wrong
    env = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    for _ in range(20):
        loss = obj(logits, {"y": y, "env": env})
    worst = F.cross_entropy(logits[4:], y[4:]).item()
    assert obj.q[1] > 0.99 and loss.item() == pytest.approx(worst, rel=1e-2)


def test_fishr_gradients_equal_autograd_and_the_penalty_vanishes_on_identical_environments():
    torch.manual_seed(0)
    z, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    head = torch.nn.Linear(5, 3)
    g = head_gradients(head(z), y, z)
    for i in range(3):  # per-example autograd of the same loss
        head.zero_grad()
        F.cross_entropy(head(z[i : i + 1]), y[i : i + 1]).backward()
        ref = torch.cat([head.weight.grad, head.bias.grad[:, None]], 1).flatten()
        assert torch.allclose(g[i], ref, atol=1e-6)
    twin_z, twin_y = torch.cat([z, z]), torch.cat([y, y])
    env = torch.tensor([0] * 12 + [1] * 12)
    logits = head(twin_z)
    v = gradient_variances(head_gradients(logits, twin_y, twin_z), env)
    assert fishr_penalty(v).item() == pytest.approx(0.0, abs=1e-12)
    env3 = torch.arange(12) % 3
    fast = head_gradient_variances(head(z), y, z, env3)
    assert torch.allclose(fast, gradient_variances(g, env3), atol=1e-6)
    v2 = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean [2, 1]: diffs ±[1, 1]
    assert fishr_penalty(v2).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="features"):
        Fishr(penalty_weight=1.0)(logits, {"y": twin_y, "env": env})


def test_environment_objectives_are_registered_and_refuse_data_without_environments():
    assert isinstance(build_objective("vrex", {"penalty_weight": 3.0}), VREx)
    with pytest.raises(ConfigError, match="environments"):
        IRM()(torch.zeros(2, 2), {"y": torch.tensor([0, 1])})


def test_environment_indices_are_cached_by_identity_and_dropped_with_the_tensor():
    import gc

    from richrep.objectives.environments import _INDEX, env_index

    env = torch.tensor([2, 0, 2])
    first = env_index(env)
    assert env_index(env) is first  # the same tensor: computed once
    assert env_index(torch.tensor([2, 0, 2])) is not first  # equal contents, another tensor
    n = len(_INDEX)
    del env
    gc.collect()
    assert len(_INDEX) < n


def test_members_train_with_an_environment_objective_on_data_with_environments():
    from richrep.config import TrainingConfig
    from richrep.data import Split
    from richrep.errors import ConfigError as CE
    from richrep.models import Classifier, build_encoder
    from richrep.training.loop import train_member

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, generator=g)
    y = (x[:, 0, 0] > 0).long()
    env = torch.arange(64) % 2
    model = Classifier(build_encoder("mlp", (1, 8), 1.0, hidden=[8], feature_dim=4), 2)
    cfg = TrainingConfig(epochs=2, batch_size=16, optimizer="adamw", lr=1e-2)
    out = train_member(
        model,
        Split(x, y, env=env),
        cfg,
        0,
        device=torch.device("cpu"),
        dtype=torch.float32,
        objective=VREx(penalty_weight=10.0),
    )
    assert len(out["history"]) == 2 and all(math.isfinite(h["loss"]) for h in out["history"])
    with pytest.raises(CE, match="needs environments"):
        train_member(
            model,
            Split(x, y),
            cfg,
            0,
            device=torch.device("cpu"),
            dtype=torch.float32,
            objective=IRM(),
        )
