"""The fused adapter: K same-architecture classifiers folded into one module, so one set of
larger kernels trains every seed (convolutions become one grouped convolution over
``(B, K·C, H, W)``, seed ``k``'s batch in channel group ``k``; linear layers one batched matmul
over ``(K, B, D)``; one optimizer over the stacked parameters, whose elementwise updates keep
weight decay and momentum per seed). The epoch loop (:mod:`richrep.training.loop`) drives it
like a single model. Supports classifiers whose encoder is a standardization followed by a
``Sequential`` of Conv1d/Conv2d (groups 1), Linear, ReLU, MaxPool and Flatten (the ``mlp`` and
``cnn`` families).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from richrep.errors import ConfigError

_POINTWISE = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Identity)


def _layers(model: nn.Module) -> list[nn.Module] | None:
    enc = getattr(model, "encoder", None)
    body = getattr(enc, "body", None)
    head = getattr(model, "head", None)
    if not isinstance(body, nn.Sequential) or not isinstance(head, nn.Linear):
        return None
    if not hasattr(enc, "standardize"):
        return None
    return [*body, head]


def _fusable_layer(m: nn.Module) -> bool:
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    return isinstance(m, (nn.Linear, nn.Flatten, *_POINTWISE))


def fusable(models: Sequence[nn.Module]) -> bool:
    """Whether the models have one foldable architecture (see the module docstring)."""
    ref = _layers(models[0])
    if ref is None or not all(_fusable_layer(m) for m in ref):
        return False
    if not isinstance(ref[0], (nn.Flatten, nn.Conv1d, nn.Conv2d)):
        return False
    seen_linear = False
    for m in ref:
        seen_linear |= isinstance(m, (nn.Linear, nn.Flatten))
        if seen_linear and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d)):
            return False
    shapes = [tuple(p.shape) for p in models[0].parameters()]
    for other in models[1:]:
        lay = _layers(other)
        if lay is None or [type(m) for m in lay] != [type(m) for m in ref]:
            return False
        if [tuple(p.shape) for p in other.parameters()] != shapes:
            return False
    return True


class FusedClassifier(nn.Module):
    """K same-architecture classifiers as one module over stacked parameters.

    ``forward(x)`` takes the K batches as ``(K, B, ...)`` (raw inputs) and returns logits
    ``(K, B, classes)``. Parameter ``j`` of the fused module is parameter ``j`` of every model
    stacked on a leading K axis (concatenated along output channels for convolutions), so
    :meth:`unfuse` and the optimizer state move between the two by reshaping.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not fusable(models):
            raise ConfigError("these models cannot be fused (see richrep.training.fused)")
        self.k = len(models)
        per_model = [_layers(m) for m in models]
        self.shapes = [tuple(p.shape) for p in models[0].parameters()]
        self.ops: list[tuple[str, Any]] = []
        self.weights = nn.ParameterList()
        for j, layer in enumerate(per_model[0]):  # type: ignore[index]
            same = [lay[j] for lay in per_model]  # type: ignore[index]
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                w = torch.cat([m.weight.detach() for m in same], 0)
                b = None if layer.bias is None else torch.cat([m.bias.detach() for m in same])
                self.ops.append(("conv", (layer, self._add(w), self._add(b))))
            elif isinstance(layer, nn.Linear):
                w = torch.stack([m.weight.detach() for m in same], 0)
                b = None if layer.bias is None else torch.stack([m.bias.detach() for m in same])
                self.ops.append(("linear", (self._add(w), self._add(b))))
            elif isinstance(layer, nn.Flatten):
                self.ops.append(("flatten", None))
            else:
                self.ops.append(("pointwise", layer))
        self.conv_first = self.ops[0][0] == "conv"
        enc = [m.encoder.standardize for m in models]  # type: ignore[union-attr]
        self.register_buffer("mean", torch.stack([s.mean.detach().float() for s in enc]))
        self.register_buffer("std", torch.stack([s.std.detach().float() for s in enc]))

    def _add(self, t: torch.Tensor | None) -> int | None:
        if t is None:
            return None
        self.weights.append(nn.Parameter(t.clone()))
        return len(self.weights) - 1

    def _p(self, i: int | None) -> torch.Tensor | None:
        return None if i is None else self.weights[i]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Each seed's input standardization, on ``(K, B, ...)``."""
        # scalar statistics (K,) or per channel (K, C, 1, 1): broadcast over (B, ...)
        shape = (self.k,) + (1,) * (x.ndim - self.mean.ndim) + tuple(self.mean.shape[1:])
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def fold(self, x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
        """Standardized ``(K, B, C, ...)`` to the first layer's layout: ``(B, K·C, ...)`` in
        ``memory_format`` for convolutions, ``(K, B, ...)`` for linear layers."""
        if not self.conv_first:
            return x
        k, b = x.shape[:2]
        y = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        return y.contiguous(memory_format=memory_format) if y.ndim == 4 else y.contiguous()

    def body(self, x: torch.Tensor) -> torch.Tensor:
        k, chan = self.k, self.conv_first  # chan: (B, K·C, ...), else (K, B, ...)
        for kind, op in self.ops:
            if kind == "conv":
                layer, wi, bi = op
                conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
                w, b = self.weights[wi], self._p(bi)
                x = conv(x, w, b, layer.stride, layer.padding, layer.dilation, k)
            elif kind == "linear":
                wi, bi = op
                w = self.weights[wi].transpose(1, 2)
                b = self._p(bi)
                x = torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
            elif kind == "flatten":
                x = x.reshape(x.shape[0], k, -1).transpose(0, 1) if chan else x.flatten(2)
                chan = False
            else:
                x = op(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.fold(self.standardize(x), torch.contiguous_format))

    @torch.no_grad()
    def unfuse(self, models: Sequence[nn.Module]) -> None:
        """Copy the stacked parameters back into ``models`` (in place)."""
        for j, (p, shape) in enumerate(zip(self.weights, self.shapes, strict=True)):
            parts = p.detach().reshape(self.k, *shape)
            for m, part in zip(models, parts, strict=True):
                list(m.parameters())[j].copy_(part)


def fuse_optimizer_state(
    fused: FusedClassifier, opt: torch.optim.Optimizer, opts: Sequence[torch.optim.Optimizer]
) -> None:
    """Load the per-model optimizer states ``opts`` into ``opt`` (over ``fused``'s parameters)."""
    per = [[o.state.get(p, {}) for p in o.param_groups[0]["params"]] for o in opts]
    for j, p in enumerate(fused.weights):
        states = [s[j] for s in per]
        if not states[0]:
            continue
        new: dict[str, Any] = {}
        for name, v in states[0].items():
            if torch.is_tensor(v) and v.shape == fused.shapes[j]:
                stacked = torch.stack([s[name].to(p.device) for s in states]).reshape(p.shape)
                new[name] = torch.empty_like(p).copy_(stacked)
            else:
                new[name] = v.clone() if torch.is_tensor(v) else v
        opt.state[p] = new


def unfuse_optimizer_state(
    fused: FusedClassifier, opt: torch.optim.Optimizer, opts: Sequence[torch.optim.Optimizer]
) -> None:
    for j, p in enumerate(fused.weights):
        state = opt.state.get(p)
        if not state:
            continue
        for k, o in enumerate(opts):
            target = o.param_groups[0]["params"][j]
            new: dict[str, Any] = {}
            for name, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.ndim:
                    part = v.detach().reshape(fused.k, *fused.shapes[j])[k]
                    new[name] = part.contiguous().clone()
                else:
                    new[name] = v.clone() if torch.is_tensor(v) else v
            o.state[target] = new
    for o in opts:
        for g in o.param_groups:
            g["lr"] = opt.param_groups[0]["lr"]
