"""Classifiers: an encoder (or K towers trained jointly) with one linear head."""

from __future__ import annotations

import torch
from torch import nn

from richrep.models.encoders import Encoder


class JointEncoder(nn.Module):
    """K towers whose features are concatenated: the catK architecture, trained as one network
    with one head ("jointK" in Zhang & Bottou, 2023)."""

    def __init__(self, towers: list[Encoder]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.feature_dim = sum(t.feature_dim for t in towers)
        self.input_shape = towers[0].input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(x) for t in self.towers], dim=1)

    def set_input_stats(self, x: torch.Tensor) -> None:
        for t in self.towers:
            t.set_input_stats(x)


class Classifier(nn.Module):
    """``encoder`` followed by a linear head over its features."""

    def __init__(self, encoder: Encoder | JointEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
