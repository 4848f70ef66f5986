"""The training half of the ``finetune`` protocol (:mod:`richrep.evaluation.finetune`): one
fine-tuning run with validation after every epoch, the head-only phase of [2ft], and the
concatenated head that starts it (Zhang & Bottou, ICML 2023, § fine-tuning).

:func:`fit_network` runs on the training loop of :mod:`richrep.training.loop` with a validation hook
(:class:`~richrep.training.hooks.BestEpoch`): SGD with momentum 0.9, the learning rate following
a cosine from ``lr`` to 0 over ``epochs``, data order a function of the seed and epoch, and the
model evaluated on the validation split after every epoch so the best epoch is chosen within
one run (the weights of that epoch are kept).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from richrep.config import TrainingConfig
from richrep.data import Split
from richrep.evaluation.run_view import RunView
from richrep.models import Classifier, JointEncoder
from richrep.objectives import CrossEntropy
from richrep.runtime.device import autocast
from richrep.runtime.seeding import seeded
from richrep.training.batches import EpochOrder
from richrep.training.hooks import BestEpoch, EachStep, Hook
from richrep.training.loop import Loop
from richrep.training.step import Step, lr_at, make_optimizer, uses_channels_last

EVAL_BATCH = 512


@dataclass
class Fitted:
    """What :func:`fit_network` returns: the chosen epoch's weights (``None`` when the loss became
    non-finite before any epoch finished) and its validation accuracy and loss."""

    state: dict[str, torch.Tensor] | None
    epoch: int = 0
    val_acc: float = float("-inf")
    val_loss: float = float("inf")
    history: list[dict[str, float]] = field(default_factory=list)
    failed: str = ""

    def score(self) -> tuple[float, float]:
        """The selection criterion: higher validation accuracy, then lower validation loss."""
        return (self.val_acc, -self.val_loss)


@dataclass
class Tuned:
    """One network fine-tuned with one (lr, weight decay) for [2ft]: the fit, its new head,
    its frozen features of the fine-tuning, validation and test data (``train``, ``val``,
    ``test``) and, when weights are kept, its encoder's."""

    fitted: Fitted
    head: nn.Linear | None = None
    features: dict[str, torch.Tensor] | None = None
    encoder: dict[str, torch.Tensor] | None = None


def network(run: RunView, parts: Sequence[str], classes: int, *salt: object) -> Classifier:
    """Copies of the run's trained encoders of ``parts`` (side by side, one
    :class:`~richrep.models.JointEncoder`, when several) under a new linear head initialized
    from ``salt``: the networks are never trained in place."""
    encoders = [copy.deepcopy(run.encoder(p)) for p in parts]
    enc = encoders[0] if len(encoders) == 1 else JointEncoder(encoders)
    with seeded("finetune-head", *salt):
        model = Classifier(enc, classes)
    return model.requires_grad_(True).train()


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Logits ``(N, classes)`` of ``model`` on ``x`` (float32, CPU): eval mode, no gradients,
    batched, channels_last for convolutions, autocast to ``dtype``."""
    was_training = model.training
    model.eval().to(device)
    channels_last = uses_channels_last(model, x)
    out = []
    for xb in x.split(EVAL_BATCH):
        xb = xb.to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            out.append(model(xb).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def accuracy_and_loss(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``logits`` against labels ``y``."""
    if len(y) == 0:
        return float("nan"), float("nan")
    acc = float((logits.argmax(1) == y).double().mean())
    return acc, float(F.cross_entropy(logits.double(), y))


def fit_network(
    model: nn.Module,
    train: Split,
    val: Split,
    *,
    lr: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    select: bool = True,
    on_step: Callable[[], None] | None = None,
) -> Fitted:
    """Train every parameter of ``model`` in place on ``train`` (cross-entropy, SGD momentum
    0.9, cosine schedule over ``epochs``) and evaluate it on ``val`` after each epoch. With
    ``select`` the weights of the best epoch (validation accuracy, ties to the lower
    validation loss, then the earlier epoch) are loaded back and returned; without, those of
    the last epoch. A non-finite loss stops the run: epochs finished before it still count.
    ``on_step()`` after each step."""
    cfg = TrainingConfig(
        lr=lr,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        optimizer="sgd",
        momentum=0.9,
        schedule="cosine",
    )
    model.to(device).train()
    batches = EpochOrder(train, batch_size, device)
    step = Step(
        [model],
        [make_optimizer(model, cfg)],
        [CrossEntropy()],
        device=device,
        dtype=dtype,
        channels_last=uses_channels_last(model, batches.x),
    )
    best = BestEpoch(lambda m: accuracy_and_loss(predict(m, val.x, device, dtype), val.y), select)
    y = train.y.to(device)
    hooks: list[Hook] = [best, *([EachStep(on_step)] if on_step is not None else [])]
    loop = Loop(
        step, batches, y, [{}], [seed], epochs=epochs, lr=partial(lr_at, cfg=cfg), hooks=hooks
    )
    loop.run()
    out = Fitted(best.state, best.epoch, best.acc, best.loss, best.history)
    if loop.failed:
        epoch, loss = loop.failed[0]
        out.failed = f"the training loss became {loss} in epoch {epoch + 1} at lr {lr}"
    if out.state is not None:
        model.load_state_dict(out.state)
    model.eval()
    return out


def concat_heads(heads: Sequence[nn.Linear]) -> nn.Linear:
    """The head of [2ft]cat before its own training: the K fine-tuned heads side by side, each
    scaled by 1/K, so that on the concatenated features its logits are the mean of the K
    fine-tuned models' logits: ``[W_1 … W_K]/K · [f_1; …; f_K] + Σ b_k/K = Σ_k (W_k f_k +
    b_k)/K``."""
    k = len(heads)
    out_features = heads[0].out_features
    if any(h.out_features != out_features for h in heads):
        raise ValueError("concat_heads: the heads predict different numbers of classes")
    head = nn.Linear(sum(h.in_features for h in heads), out_features)
    with torch.no_grad():
        head.weight.copy_(torch.cat([h.weight.detach().float() for h in heads], dim=1) / k)
        head.bias.copy_(torch.stack([h.bias.detach().float() for h in heads]).sum(0) / k)
    return head


def head_of(state: dict[str, Any], prefix: str = "head.") -> nn.Linear:
    """The ``nn.Linear`` stored under ``prefix`` in a classifier's state dict."""
    w, b = state[prefix + "weight"], state[prefix + "bias"]
    head = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(w.float().cpu())
        head.bias.copy_(b.float().cpu())
    return head
