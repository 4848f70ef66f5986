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


class NestedHeads(nn.Module):
    """Linear heads on nested prefixes of the features (Matryoshka representations, Kusupati
    et al., NeurIPS 2022): head i reads the first ``dims[i]`` features; the logits of all heads
    are concatenated, ``(B, len(dims) * classes)``. ``shared`` (MRL-E) uses one weight matrix
    whose first ``dims[i]`` columns make head i."""

    def __init__(self, feature_dim: int, classes: int, dims: list[int], shared: bool = False):
        super().__init__()
        self.dims, self.shared = [int(m) for m in dims], bool(shared)
        if self.shared:
            self.full = nn.Linear(feature_dim, classes)
        else:
            self.heads = nn.ModuleList(nn.Linear(m, classes) for m in self.dims)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.shared:
            w, b = self.full.weight, self.full.bias
            return torch.cat([z[:, :m] @ w[:, :m].t() + b for m in self.dims], 1)
        return torch.cat([h(z[:, :m]) for h, m in zip(self.heads, self.dims, strict=True)], 1)
