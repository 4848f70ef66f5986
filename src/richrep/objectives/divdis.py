"""DivDis (Lee, Yao & Finn, ICLR 2023, "Diversify and Disambiguate"): K heads that all fit the
labelled source data while their predictions on unlabelled inputs are made statistically
independent — the mutual information between every pair of heads' predictions on the
unlabelled batch is minimized — with a regularizer keeping each head's average prediction on
those inputs close to uniform (so no head escapes by predicting one class).

Rows with label ``-1`` in the batch are the unlabelled ones (the ``diverse`` member kind appends
them to the training data)."""

from __future__ import annotations

import itertools
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from richrep.objectives.base import Batch, Objective
from richrep.plugins import OBJECTIVES


def mutual_information(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mutual information of two heads' predictions over a batch: the joint ``p^T q / B`` of
    their class distributions (B, C) against the product of its marginals."""
    joint = p.t() @ q / p.shape[0]
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    return (joint * ((joint + eps).log() - (outer + eps).log())).sum()


def uniform_kl(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """KL(mean prediction ‖ uniform) of one head over a batch (B, C)."""
    m = p.mean(0)
    return (m * ((m + eps).log() + torch.log(torch.tensor(float(p.shape[1]))))).sum()


@OBJECTIVES.register("divdis")
class DivDis(Objective):
    """Σ_k CE(head k, y) on labelled rows + ``mi_weight`` · mean pairwise mutual information of
    the heads on unlabelled rows + ``reg_weight`` · mean KL(head's mean prediction ‖ uniform)."""

    def __init__(
        self,
        heads: Annotated[int, Field(ge=2)] = 2,
        mi_weight: Annotated[float, Field(ge=0)] = 1.0,
        reg_weight: Annotated[float, Field(ge=0)] = 1.0,
    ) -> None:
        super().__init__()
        self.heads, self.mi_weight, self.reg_weight = (
            int(heads),
            float(mi_weight),
            float(reg_weight),
        )

    def _split(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(logits.shape[0], self.heads, -1).float()

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        heads = self._split(logits)
        y = batch["y"]
        labelled = y >= 0
        loss = heads.new_zeros(())
        if labelled.any():
            h = heads[labelled]
            loss = (
                loss
                + F.cross_entropy(h.flatten(0, 1), y[labelled].repeat_interleave(self.heads))
                * self.heads
            )
        if int((~labelled).sum()) >= 2:
            p = heads[~labelled].softmax(-1)  # (U, K, C)
            pairs = list(itertools.combinations(range(self.heads), 2))
            mi = torch.stack([mutual_information(p[:, i], p[:, j]) for i, j in pairs]).mean()
            reg = torch.stack([uniform_kl(p[:, k]) for k in range(self.heads)]).mean()
            loss = loss + self.mi_weight * mi + self.reg_weight * reg
        return loss

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return self._split(logits).softmax(-1).mean(1).argmax(-1)
