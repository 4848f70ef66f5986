"""Encoder families. Each maps a batch of inputs to features ``(B, feature_dim)`` and takes a
``width`` multiplier that scales every layer, features included (as widening a ResNet does),
so a "wide" baseline of equal parameter count is one argument away.

The encoder contract (:mod:`richrep.models.contract`, checked when an encoder is registered and
when a configuration is first built): the function takes ``input_shape`` first and a ``width``
multiplier that changes its parameter count; every other argument has a default (or the entry
gives ``example_params``); it returns an :class:`Encoder` (an ``nn.Module`` with
``feature_dim``, an input ``standardize`` with ``mean``/``std`` buffers broadcasting over the
channels, ``set_input_stats`` and a timm-style ``pretrained_cfg``) whose output on a batch of
``example_input`` (entry metadata, default ``(3, 32, 32)``) is ``(N, feature_dim)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from richrep.errors import ConfigError
from richrep.models.contract import check_build, check_signature
from richrep.registry import Registry


class Standardize(nn.Module):
    """Fixed input standardization with the training task's statistics (saved as buffers)."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def per_channel(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Statistics per channel ``(C,)``, kept as ``(C, 1, 1)`` buffers (over H, W)."""
        self.mean = mean.detach().float().view(-1, 1, 1).clone()
        self.std = std.detach().float().clamp(min=1e-6).view(-1, 1, 1).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for key in ("mean", "std"):  # per-channel buffers load into a freshly built scalar one
            t = state_dict.get(prefix + key)
            if t is not None and t.shape != self._buffers[key].shape:
                self._buffers[key] = torch.empty_like(t, device=self._buffers[key].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Encoder(nn.Module):
    """An input standardization followed by a body; exposes ``feature_dim`` (timm's
    ``num_features``) and ``pretrained_cfg``."""

    def __init__(self, body: nn.Module, feature_dim: int, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.body = body
        self.feature_dim = int(feature_dim)
        self.input_shape = tuple(input_shape)
        self.architecture = ""  # the ENCODERS entry (set by build_encoder)

    @property
    def num_features(self) -> int:
        return self.feature_dim

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm-style metadata: architecture, input_size, per-channel mean and std of the input
        standardization (None on the meta device), num_features."""
        channels = int(self.input_shape[0]) if len(self.input_shape) >= 2 else 1
        stats: dict[str, Any] = {}
        for key in ("mean", "std"):
            t = getattr(self.standardize, key)
            if t.is_meta:
                stats[key] = None
            else:
                v = t.detach().float().cpu().flatten().tolist()
                stats[key] = tuple(v * channels if len(v) == 1 else v)
        return {
            "architecture": self.architecture,
            "input_size": self.input_shape,
            **stats,
            "num_features": self.feature_dim,
            "num_classes": 0,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(x))

    def set_input_stats(self, x: torch.Tensor) -> None:
        """Mean and standard deviation of ``x``, accumulated in float64 so that the stored
        float32 values do not depend on how many threads summed them (a float32 sum does:
        the buffers, and everything trained after, would differ between thread budgets).
        Streamed images (:class:`~richrep.data.images.ImageSource`) get per-channel statistics
        over a seeded sample of their images."""
        if not isinstance(x, torch.Tensor):
            self.standardize.per_channel(*x.channel_stats())
            return
        x64 = x.double()
        self.standardize.mean.fill_(float(x64.mean()))
        self.standardize.std.fill_(max(float(x64.std()), 1e-6))


class EncoderRegistry(Registry[Callable[..., Encoder]]):
    """The encoder registry: an entry's signature is checked against the encoder contract when
    it is registered (a :class:`~richrep.errors.RegistryError` names what is wrong, and the
    entry is not kept), the rest when it is first built."""

    def register(self, name: str | None = None, **meta: Any) -> Callable[[Any], Any]:
        add = super().register(name, **meta)

        def deco(fn: Any) -> Any:
            add(fn)
            try:
                check_signature(self._entries[name or fn.__name__])
            except Exception:
                self.unregister(name or fn.__name__)
                raise
            return fn

        return deco


ENCODERS = EncoderRegistry("encoder", skip=1)
Width = Annotated[float, Field(gt=0, le=64)]


def scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


@ENCODERS.register("mlp", example_input=(1, 40))
def mlp(
    input_shape: Sequence[int],
    width: Width = 1.0,
    hidden: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=0)] = [512, 512],  # noqa: B006
    feature_dim: Annotated[int, Field(ge=1)] = 128,
) -> Encoder:
    """Multi-layer perceptron on flattened inputs: hidden ReLU layers, then a ReLU feature layer."""
    d_in = 1
    for s in input_shape:
        d_in *= int(s)
    layers: list[nn.Module] = [nn.Flatten()]
    for h in [*hidden, feature_dim]:
        layers += [nn.Linear(d_in, scaled(h, width)), nn.ReLU()]
        d_in = scaled(h, width)
    return Encoder(nn.Sequential(*layers), d_in, input_shape)


@ENCODERS.register("cnn", example_input=(1, 28, 28))
def cnn(
    input_shape: Sequence[int],
    width: Width = 1.0,
    channels: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [32, 64],  # noqa: B006
    kernel_size: Annotated[int, Field(ge=1, le=15)] = 3,
    feature_dim: Annotated[int, Field(ge=1)] = 128,
    padding: Literal["same", "valid"] = "same",
) -> Encoder:
    """Convolutional encoder for images (C, H, W) or 1-D signals (C, L): per block a convolution
    (``same`` padding keeps the size, ``valid`` shrinks it by ``kernel_size - 1``), 2× max-pool
    and ReLU; then a ReLU fully connected feature layer. (ReLU after the pool computes exactly
    what ReLU before it does, since both are monotone, on a quarter of the elements.)"""
    if len(input_shape) not in (2, 3):
        raise ConfigError(
            f"encoder 'cnn' needs (C, L) signals or (C, H, W) images, got input shape {tuple(input_shape)}"
        )
    two_d = len(input_shape) == 3
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.MaxPool1d)
    c_in, spatial = int(input_shape[0]), [int(s) for s in input_shape[1:]]
    layers: list[nn.Module] = []
    for c in channels:
        c_out = scaled(c, width)
        pad = kernel_size // 2 if padding == "same" else 0
        if padding == "valid":
            spatial = [s - kernel_size + 1 for s in spatial]
            if min(spatial) < 1:
                raise ConfigError(
                    f"encoder 'cnn': input shape {tuple(input_shape)} is too "
                    f"small for {len(channels)} valid {kernel_size}-wide "
                    f"convolutions"
                )
        elif kernel_size % 2 == 0:
            spatial = [s + 1 for s in spatial]  # padding k//2 on both sides adds one
        layers.append(conv(c_in, c_out, kernel_size, padding=pad))
        if min(spatial) >= 2:
            layers.append(pool(2))
            spatial = [s // 2 for s in spatial]
        layers.append(nn.ReLU())
        c_in = c_out
    flat = c_in
    for s in spatial:
        flat *= s
    d = scaled(feature_dim, width)
    layers += [nn.Flatten(), nn.Linear(flat, d), nn.ReLU()]
    return Encoder(nn.Sequential(*layers), d, input_shape)


def build_encoder(
    name: str, input_shape: Sequence[int], width: float = 1.0, **params: object
) -> Encoder:
    """Encoder ``name`` for ``input_shape``; a configuration's first build is checked against
    the contract (output ``(N, feature_dim)`` on the meta device)."""
    shape = tuple(int(s) for s in input_shape)
    enc = ENCODERS.build(name, shape, where="model.encoder", width=width, **params)
    check_build(ENCODERS, name, enc, shape, width, params)
    enc.architecture = name
    return enc


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
