"""The training half of the ``ood`` protocol (:mod:`richrep.evaluation.ood`): heads on frozen
features and whole networks trained with an out-of-distribution objective, evaluated every
``eval_every`` steps so that model selection can choose the step as well as the setting.

Heads follow the released recipe of Zhang, Lopez-Paz & Bottou (ICML 2022, RFC), itself IRM's
(Arjovsky et al. 2019): full-batch Adam, an explicit L2 term on all weights (divided, like the
risk, by a penalty weight above 1), the penalty annealed in. All the heads of one algorithm
(every setting × restart) train at once as one batched parameter: their losses add, so each
head's gradient is its own, and Adam is per coordinate, so each head follows exactly the path
it would follow alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from richrep.data import Split
from richrep.errors import TrainingError
from richrep.objectives import Batch, Objective
from richrep.runtime.device import autocast
from richrep.runtime.seeding import generator
from richrep.training.batches import Sampled
from richrep.training.hooks import EachStep, EveryNSteps, Hook
from richrep.training.loop import Loop
from richrep.training.step import Step


@dataclass
class Scorer:
    """Turns predictions on the validation and test splits into an evaluation record.

    ``slices`` (S, N_test) marks, for each reported quantity, the test examples it averages
    over: the oracle slice of every test environment, the report slice of every test
    environment, the report slice of every group (in ``names`` order)."""

    val_y: torch.Tensor
    test_y: torch.Tensor
    slices: torch.Tensor  # (S, N_test) float, rows sum to the slice sizes
    names: list[str]

    def __call__(self, val_logits: torch.Tensor, test_logits: torch.Tensor) -> list[dict]:
        """One record per head: ``val`` accuracy and the accuracy of every slice."""
        val = (val_logits.argmax(-1) == self.val_y).double().mean(-1)  # (H,)
        right = (test_logits.argmax(-1) == self.test_y).double()  # (H, N)
        acc = (right @ self.slices.t()) / self.slices.sum(1)  # (H, S)
        return [
            {"val": float(v), **dict(zip(self.names, a.tolist(), strict=True))}
            for v, a in zip(val.tolist(), acc, strict=True)
        ]


def head_logits(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logits (H, N, C) of H linear heads W (H, d, C), b (H, C) on shared features z (N, d):
    one (N, d) × (d, H·C) product (a batched product over heads would run H skinny ones)."""
    h, d, c = W.shape
    out = z @ W.permute(1, 0, 2).reshape(d, h * c)  # (N, H·C)
    return out.view(-1, h, c).permute(1, 0, 2) + b[:, None]


class HeadAdam:
    """Adam (Kingma & Ba 2015, as ``torch.optim.Adam`` computes it) over parameters whose first
    dimension indexes heads, with a step count per head so that :meth:`reset` restarts the
    state of some heads only (IRM's optimizer reset when its penalty weight jumps) while the
    others go on."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros(self.params[0].shape[0], dtype=torch.float64)

    def reset(self, heads: slice) -> None:
        for m, v in zip(self.m, self.v, strict=True):
            m[heads] = 0
            v[heads] = 0
        self.t[heads] = 0

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, (1 - b2**self.t).sqrt()  # float64, as torch's Python floats
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            shape = (-1,) + (1,) * (p.ndim - 1)
            c1, c2 = c1.to(p.dtype), c2.to(p.dtype)
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v.sqrt() / c2.view(shape)).add_(self.eps)
            p.sub_(self.lr / c1.view(shape) * m / denom)


def train_heads(
    train: Split,
    val_x: torch.Tensor,
    test_x: torch.Tensor,
    objectives: Sequence[Objective],
    seeds: Sequence[Sequence[Any]],
    score: Scorer,
    *,
    steps: int,
    lr: float,
    l2: float,
    eval_every: int,
    on_step: Callable[[], None] | None = None,
) -> list[list[dict]]:
    """Train, for each objective ``s`` (one setting), one linear head per seed of ``seeds[s]``
    (each drawing its initialization as ``nn.Linear`` does) on the features ``train.x``; the
    objective sees the logits of its heads stacked, (R, N, C), and returns one loss per head.
    Returns each head's evaluation records (``step`` added), one per ``eval_every`` steps and
    one after the last step, heads in order (setting-major). ``on_step()`` after each step."""
    z, y = train.x.float(), train.y
    flat = [(s, seed) for s, group in enumerate(seeds) for seed in group]
    n_heads, d = len(flat), z.shape[1]
    c = int(max(int(y.max()), int(score.val_y.max()), int(score.test_y.max()))) + 1
    bound = 1 / math.sqrt(d) if d else 0.0
    W, b = torch.empty(n_heads, d, c), torch.empty(n_heads, c)
    for h, (_, seed) in enumerate(flat):
        g = generator("ood-head", *seed)
        W[h] = (torch.rand(d, c, generator=g) * 2 - 1) * bound
        b[h] = (torch.rand(c, generator=g) * 2 - 1) * bound
    W.requires_grad_(True)
    b.requires_grad_(True)
    batch: dict[str, torch.Tensor] = {"y": y, "env": train.env, "features": z}
    if train.groups is not None:
        batch["groups"] = train.groups
    bounds = [0]
    for group in seeds:
        bounds.append(bounds[-1] + len(group))
    opt = HeadAdam((W, b), lr)
    records: list[list[dict]] = [[] for _ in range(n_heads)]
    for o in objectives:
        o.train()
    for step in range(1, steps + 1):
        for s, o in enumerate(objectives):
            if getattr(o, "reset_optimizer_at", None) == step - 1:
                opt.reset(slice(bounds[s], bounds[s + 1]))  # the penalty weight jumps (DomainBed)
        logits = head_logits(z, W, b)
        norms = W.pow(2).sum((1, 2)) + b.pow(2).sum(1)
        losses = []
        sizes = [len(group) for group in seeds]
        parts = zip(logits.split(sizes), norms.split(sizes), strict=True)  # split: no zero-fills
        for o, (lg, nm) in zip(objectives, parts, strict=True):
            loss = o(lg, batch)
            losses.append(loss + l2 * nm / getattr(o, "divisor", 1.0))
        total = torch.cat(losses)
        if not torch.isfinite(total).all():
            bad = int((~torch.isfinite(total)).nonzero()[0])
            raise TrainingError(
                f"ood head {flat[bad][1]}: the loss became non-finite at step {step}"
            )
        W.grad = b.grad = None
        total.sum().backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                vl = head_logits(val_x.float(), W, b)
                tl = head_logits(test_x.float(), W, b)
            for h, rec in enumerate(score(vl, tl)):
                records[h].append({"step": step, **rec})
        if on_step is not None:
            on_step()
    return records


@torch.no_grad()
def _logits(
    model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    model.eval()
    out = []
    for xb in x.split(4096):
        with autocast(device, dtype):
            out.append(model(xb.to(device)).float().cpu())
    model.train()
    return torch.cat(out)


class NetworkStep(Step):
    """The step of a network trained with an OOD objective: the encoder's features go into
    the batch (Fishr reads them), the objective and the L2 term (divided like the risk) are
    computed in float32 outside autocast, as for the heads."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        *,
        lr: float,
        l2: float,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.l2 = l2
        opt = torch.optim.Adam(self.params, lr=lr)
        super().__init__([model], [opt], [objective], device=device, dtype=dtype)

    def compute(self, xs: torch.Tensor, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        model, objective, batch = self.module, self.objectives[0], batches[0]
        with autocast(self.device, self.dtype):
            feats = model.encoder(xs[0])
            logits = model.head(feats)
        batch["features"] = feats.float()
        loss = objective(logits.float(), batch)
        norm = sum(p.pow(2).sum() for p in self.params)
        loss = loss + self.l2 * norm / getattr(objective, "divisor", 1.0)
        return loss[None], logits[None]


class ResetAdam(Hook):
    """A new Adam optimizer before step ``at`` (the penalty weight jumps, DomainBed)."""

    def __init__(self, at: int | None, lr: float) -> None:
        self.at, self.lr = at, lr

    def before_step(self, loop: Any, at: int) -> None:
        if at == self.at:
            loop.step.set_optimizer(torch.optim.Adam(loop.step.params, lr=self.lr))


class StopNonFinite(Hook):
    """A :class:`TrainingError` naming the network and the step when the loss is
    non-finite."""

    def __init__(self, name: Any) -> None:
        self.name = name

    def after_step(self, loop: Any, at: int, losses: torch.Tensor) -> None:
        if not torch.isfinite(losses).all():
            raise TrainingError(
                f"ood network {self.name}: the loss became non-finite at step {at + 1}"
            )


def train_network(
    model: nn.Module,
    train: Split,
    val: Split,
    test: Split,
    objective: Objective,
    seed: Any,
    score: Scorer,
    *,
    steps: int,
    lr: float,
    l2: float,
    eval_every: int,
    batch_size: int | None,
    device: torch.device,
    dtype: torch.dtype,
    on_step: Callable[[], None] | None = None,
) -> list[dict]:
    """Train ``model`` (a copy: encoder + head) end to end with ``objective`` (Adam, the same
    L2 and annealing as the heads; minibatches of ``batch_size`` drawn from ``seed``, or the
    full batch) on the training loop; return its evaluation records every ``eval_every``
    steps. ``on_step()`` after each step."""
    model = copy.deepcopy(model).to(device).train()
    objective.train()
    step = NetworkStep(model, objective, lr=lr, l2=l2, device=device, dtype=dtype)
    batches = Sampled(train, batch_size, steps, generator("ood-network-batches", *seed), device)
    targets = objective.prepare(train, {}, augmented=False)

    def evaluate(m: nn.Module) -> dict:
        vl, tl = _logits(m, val.x, device, dtype), _logits(m, test.x, device, dtype)
        return score(vl[None], tl[None])[0]

    records = EveryNSteps(eval_every, evaluate)
    hooks = [ResetAdam(getattr(objective, "reset_optimizer_at", None), lr), StopNonFinite(seed)]
    if on_step is not None:
        hooks.append(EachStep(on_step))
    loop = Loop(
        step,
        batches,
        train.y.to(device),
        [{name: t.to(device) for name, t in targets.items()}],
        [0],
        epochs=1,
        lr=lambda _at, _total: lr,
        hooks=[*hooks, records],
    )
    loop.run()
    return records.records
