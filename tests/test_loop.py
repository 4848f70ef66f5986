"""The one training loop: members (``train_member``), fine-tuning (``fit_network``) and the ``ood``
protocol's networks (``train_network``) train through it, each bit-identical to the plain loop
it replaced (written out here); the ood heads' batched graph equals each head trained alone."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split
from richrep.errors import ConfigError, TrainingError
from richrep.evaluation.finetune_train import accuracy_and_loss, fit_network, predict
from richrep.evaluation.ood_train import Scorer, train_heads, train_network
from richrep.objectives import IRM, CrossEntropy, Fishr, GroupDRO, Objective, VREx, build_objective
from richrep.runtime.device import autocast
from richrep.runtime.seeding import generator
from richrep.training.loop import epoch_order, train_member

CPU = torch.device("cpu")


class Net(nn.Module):
    """An encoder and a linear head, as the ood protocol's networks."""

    def __init__(self, seed: int = 0, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(d, 6), nn.ReLU())
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _data(n: int, seed: int = 0, d: int = 8) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return Split(x, y, env=torch.arange(n) % 3)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _cosine(lr: float, step: int, total: int) -> float:
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(total, 1)))


def _plain_epochs(model, data, *, lr, momentum, wd, epochs, bs, seed, dtype, val=None):
    """The loop train_unit and fit used to be: epoch order, cosine schedule, SGD; with ``val``,
    the best epoch on it is loaded back (fit_network)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    n = len(data)
    steps = math.ceil(n / bs)
    best = None
    for epoch in range(epochs):
        order = epoch_order(seed, epoch, n)
        for s in range(steps):
            idx = order[s * bs : (s + 1) * bs]
            for g in opt.param_groups:
                g["lr"] = _cosine(lr, epoch * steps + s, epochs * steps)
            with autocast(CPU, dtype):
                logits = model(data.x[idx])
            loss = F.cross_entropy(logits.float(), data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is not None:
            acc, vloss = accuracy_and_loss(predict(model, val.x, CPU, dtype), val.y)
            if best is None or (acc, -vloss) > best[0]:
                best = ((acc, -vloss), epoch + 1, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[2])
    return best


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_train_member_equals_the_plain_epoch_loop(dtype):
    data = _data(70)
    cfg = TrainingConfig(epochs=3, batch_size=16, lr=0.1, optimizer="sgd", momentum=0.9)
    a, b = Net(1), Net(1)
    out = train_member(a, data, cfg, 5, device=CPU, dtype=dtype)
    _plain_epochs(
        b, data, lr=0.1, momentum=0.9, wd=cfg.weight_decay, epochs=3, bs=16, seed=5, dtype=dtype
    )
    assert _same(a, b)
    assert [h["epoch"] for h in out["history"]] == [1, 2, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fit_equals_the_plain_loop_with_its_best_epoch(dtype):
    data, val = _data(50), _data(30, seed=1)
    a, b = Net(2), Net(2)
    f = fit_network(
        a,
        data,
        val,
        lr=0.2,
        weight_decay=1e-3,
        epochs=4,
        batch_size=8,
        seed=7,
        device=CPU,
        dtype=dtype,
    )
    best = _plain_epochs(
        b, data, lr=0.2, momentum=0.9, wd=1e-3, epochs=4, bs=8, seed=7, dtype=dtype, val=val
    )
    assert _same(a, b)
    assert (f.epoch, f.val_acc, -f.val_loss) == (best[1], *best[0])
    assert [h["epoch"] for h in f.history] == [1, 2, 3, 4] and not f.failed


def _scorer(val: Split, test: Split) -> Scorer:
    return Scorer(val.y, test.y, torch.ones(1, len(test), dtype=torch.float64), ["all"])


def _plain_network(
    model, train, val, test, objective, seed, score, *, steps, lr, l2, every, bs, dtype
):
    """The loop train_network used to be: Adam, minibatches drawn with replacement (or the
    full batch), the encoder's features in the batch, the loss in float32 outside autocast
    plus the L2 term, Adam reset when the penalty weight jumps."""
    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    reset = getattr(objective, "reset_optimizer_at", None)
    objective.train()
    n = len(train)
    g = generator("ood-network-batches", *seed)
    records = []
    for step in range(1, steps + 1):
        if reset is not None and step - 1 == reset:
            opt = torch.optim.Adam(params, lr=lr)
        idx = torch.randint(0, n, (bs,), generator=g) if bs and bs < n else slice(None)
        batch = {"y": train.y[idx], "env": train.env[idx]}
        with autocast(CPU, dtype):
            feats = model.encoder(train.x[idx])
            logits = model.head(feats)
        batch["features"] = feats.float()
        loss = objective(logits.float(), batch)
        loss = loss + l2 * sum(p.pow(2).sum() for p in params) / getattr(objective, "divisor", 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad(), autocast(CPU, dtype):
                model.eval()
                vl, tl = model(val.x).float(), model(test.x).float()
                model.train()
            records.append({"step": step, **score(vl[None], tl[None])[0]})
    return records, model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.parametrize(
    "make",
    [CrossEntropy, lambda: IRM(10.0, anneal_steps=3), lambda: Fishr(5.0), lambda: GroupDRO(0.5)],
)
def test_train_network_equals_the_plain_loop(make, batch_size, dtype):
    train, val, test = _data(60), _data(20, 1), _data(20, 2)
    score, model = _scorer(val, test), Net(3)
    kw = {"steps": 8, "lr": 0.01, "l2": 1e-3}
    got = train_network(
        model, train, val, test, make(), ("s", 1), score, eval_every=3, batch_size=batch_size,
        device=CPU, dtype=dtype, **kw,
    )  # fmt: skip
    want, _ = _plain_network(
        model, train, val, test, make(), ("s", 1), score, every=3, bs=batch_size, dtype=dtype, **kw
    )
    assert got == want and [r["step"] for r in got] == [3, 6, 8]


def test_train_network_names_the_step_of_a_non_finite_loss():
    train, val, test = _data(30), _data(10, 1), _data(10, 2)
    train.x[3, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"ood network \('s', 2\).*step 1$"):
        train_network(
            Net(), train, val, test, CrossEntropy(), ("s", 2), _scorer(val, test),
            steps=3, lr=0.01, l2=0.0, eval_every=1, batch_size=None, device=CPU,
            dtype=torch.float32,
        )  # fmt: skip


def test_ood_heads_trained_together_equal_each_head_alone():
    train, val, test = _data(90), _data(30, 1), _data(30, 2)
    makers = [CrossEntropy, lambda: IRM(10.0, anneal_steps=4), lambda: VREx(5.0, anneal_steps=4)]
    seeds = [[("h", s, r) for r in range(2)] for s in range(len(makers))]
    kw = {"steps": 12, "lr": 0.05, "l2": 1e-3, "eval_every": 4}
    score = _scorer(val, test)
    together = train_heads(train, val.x, test.x, [m() for m in makers], seeds, score, **kw)
    alone = [
        train_heads(train, val.x, test.x, [make()], [[seed]], score, **kw)[0]
        for make, group in zip(makers, seeds, strict=True)
        for seed in group
    ]
    assert together == alone


class ThreeViews(Objective):
    """An objective of test code that asks for three augmented views (as SimSiam asks for
    two): the loop serves it without knowing it."""

    def inputs(self, x, augment):
        return torch.cat([augment(x, v) for v in range(3)], dim=1) if augment else x

    def forward(self, logits, batch):
        assert logits.shape[0] == 3 * len(batch["y"])
        return logits.float().pow(2).mean()

    def predict(self, logits):
        return logits[: logits.shape[0] // 3].argmax(-1)


def test_an_objective_chooses_its_views_and_the_loop_needs_no_change():
    flat = _data(20, d=16)
    data = Split(flat.x.view(20, 1, 4, 4), flat.y)
    cfg = TrainingConfig(epochs=1, batch_size=8, augment=[{"horizontal_flip": {}}])
    model = Net(d=16)
    model.encoder.insert(0, nn.Flatten())
    out = train_member(model, data, cfg, 0, device=CPU, dtype=torch.float32, objective=ThreeViews())
    assert len(out["history"]) == 1


@pytest.mark.parametrize(
    ("objective", "data", "match"),
    [
        ("simsiam", _data(20), r"member-x: objective SimSiam .*set training\.augment"),
        ("irm", Split(_data(20).x, _data(20).y), r"member-x: objective IRM needs environments"),
        ("group_dro", Split(_data(20).x, _data(20).y), "member-x: objective GroupDRO needs env"),
        ("pseudo_labels", _data(20), r"member-x: objective PseudoLabelHeads needs targets"),
    ],
)
def test_what_an_objective_lacks_is_a_config_error_before_training(objective, data, match):
    model = Net()
    before = copy.deepcopy(model)
    cfg = TrainingConfig(epochs=1, batch_size=8)
    with pytest.raises(ConfigError, match=match):
        train_member(
            model, data, cfg, 0, device=CPU, dtype=torch.float32,
            objective=build_objective(objective), member="member-x",
        )  # fmt: skip
    assert _same(model, before)
