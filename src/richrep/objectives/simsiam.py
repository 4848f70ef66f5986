"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021): two
augmented views of each image go through the encoder, a projector ``g`` and a predictor ``h``;
the loss is the symmetrized negative cosine similarity between one view's prediction and the
other view's projection, the projection's gradient stopped:

    L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2,   D(p, z) = -cos(p, z),   z = g(f(x)), p = h(z).

No labels, no negatives, no momentum encoder. The model's "logits" are ``[z, p]`` per example
from :class:`SimSiamHead`, for the batch of both views (first view first), which
:meth:`SimSiam.inputs` makes with ``training.augment``. Without labels there is no training
accuracy: a member trained so is scored by the k-NN accuracy of its features on the validation
split (:meth:`SimSiam.score`, :func:`knn_accuracy`, the monitor of Wu et al. 2018 that SimSiam
reports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from richrep.errors import ConfigError
from richrep.objectives.base import Augment, Batch, Objective
from richrep.plugins import OBJECTIVES
from richrep.runtime.device import autocast
from richrep.runtime.seeding import generator

if TYPE_CHECKING:
    from richrep.data import Split, Task

Dim = Annotated[int, Field(ge=1, le=1 << 16)]


class SimSiamHead(nn.Module):
    """Projector (``layers`` Linear-BN-ReLU blocks, the last without ReLU; BN on the output,
    as in the paper) and bottleneck predictor (Linear-BN-ReLU-Linear); returns ``[z, p]``."""

    def __init__(self, feature_dim: int, dim: int = 2048, pred_dim: int = 512, layers: int = 2):
        super().__init__()
        blocks: list[nn.Module] = []
        width = feature_dim
        for i in range(layers):
            last = i == layers - 1
            blocks += [nn.Linear(width, dim, bias=False), nn.BatchNorm1d(dim, affine=not last)]
            if not last:
                blocks.append(nn.ReLU(inplace=True))
            width = dim
        self.projector = nn.Sequential(*blocks)
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )
        self.dim = dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.projector(h)
        return torch.cat([z, self.predictor(z)], 1)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, sg(z)), averaged over the batch (the paper's Algorithm 1)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@OBJECTIVES.register("simsiam", description="SimSiam: two views, stop-gradient, negative cosine")
class SimSiam(Objective):
    """SimSiam's loss on ``[z, p]`` of two views (batch of 2B: the first B rows view 1).

    ``dim``: projection width (the paper: 2048); ``pred_dim``: predictor bottleneck (512);
    ``layers``: projector depth (3 on ImageNet, 2 on CIFAR)."""

    views = 2  # augmented views of each example

    def __init__(
        self, dim: Dim = 2048, pred_dim: Dim = 512, layers: Annotated[int, Field(ge=1, le=4)] = 2
    ):
        super().__init__()
        self.dim, self.pred_dim, self.layers = int(dim), int(pred_dim), int(layers)

    def folds(self) -> bool:
        return False  # its head has batch norm: each model trains as its own module

    def prepare(self, data: Split, targets: Batch, *, augmented: bool) -> Batch:
        if not augmented:
            raise ConfigError(
                f"objective {type(self).__name__} compares {self.views} augmented views of each "
                "image; set training.augment (e.g. [random_resized_crop, horizontal_flip])"
            )
        return super().prepare(data, targets, augmented=augmented)

    def inputs(self, x: torch.Tensor, augment: Augment | None) -> torch.Tensor:
        """The views of each example, one after the other along the batch."""
        if augment is None:
            raise ConfigError(f"objective {type(self).__name__} needs training.augment")
        return torch.cat([augment(x, v) for v in range(self.views)], dim=1)

    def score(
        self, model: nn.Module, task: Task, device: torch.device, dtype: torch.dtype
    ) -> tuple[float, str]:
        """k-NN accuracy of the encoder's features on the validation split (no classifier)."""
        return knn_validation(model, task, device, dtype), "knn"

    def make_head(self, feature_dim: int, classes: int) -> nn.Module:
        return SimSiamHead(feature_dim, self.dim, self.pred_dim, self.layers)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        z, p = logits.float().split(self.dim, dim=1)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """No classes: -1 for each example of the first view (training accuracy reads 0)."""
        return torch.full((logits.shape[0] // 2,), -1, dtype=torch.long, device=logits.device)


@torch.no_grad()
def knn_accuracy(
    bank: torch.Tensor,
    bank_y: torch.Tensor,
    queries: torch.Tensor,
    query_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.1,
) -> float:
    """Weighted k-NN accuracy (Wu et al., CVPR 2018): each query's k most cosine-similar bank
    features vote for their labels with weight exp(sim / temperature)."""
    bank = F.normalize(bank.float(), dim=1)
    classes = int(max(bank_y.max(), query_y.max())) + 1
    correct = 0
    for q, y in zip(queries.split(1024), query_y.split(1024), strict=True):
        sim = F.normalize(q.float(), dim=1) @ bank.t()
        top, idx = sim.topk(min(k, bank.shape[0]), dim=1)
        votes = torch.zeros(len(q), classes).scatter_add_(1, bank_y[idx], (top / temperature).exp())
        correct += int((votes.argmax(1) == y).sum())
    return correct / max(len(query_y), 1)


@torch.no_grad()
def encode(
    model: nn.Module, split: Split, device: torch.device, dtype: torch.dtype, batch: int = 1024
) -> torch.Tensor:
    """Features of ``model.encoder`` on ``split`` (eval mode, float32 on the CPU)."""
    model.eval().to(device)
    out = [torch.zeros(0, 0)]
    for xb in split.x.split(batch):
        with autocast(device, dtype):
            out.append(model.encoder(xb.to(device)).float().cpu())
    return torch.cat(out[1:]) if len(out) > 1 else out[0]


def knn_validation(
    model: nn.Module, task: Task, device: torch.device, dtype: torch.dtype, bank: int = 10_000
) -> float:
    """k-NN accuracy (k = 20, Wu et al. 2018) of the encoder's features on the validation split,
    the bank a seeded sample of at most ``bank`` training examples: how a self-supervised
    member is monitored (it has no classifier to score)."""
    n = len(task.train)
    idx = torch.randperm(n, generator=generator(0, "knn-bank"))[:bank].sort().values
    train = task.train.subset(idx)
    return knn_accuracy(
        encode(model, train, device, dtype),
        train.y,
        encode(model, task.val, device, dtype),
        task.val.y,
    )
