"""ResNet-18 and ResNet-50 (He et al., CVPR 2016) as encoder families, written out here with
torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``…),
so a torchvision ``state_dict`` without ``fc.*`` loads key for key into the encoder's ``body``.

Beside torchvision's layout: ``cifar_stem`` (a 3×3 stride-1 first convolution and no max-pool,
for 32×32 images, as in He et al.'s CIFAR networks), ``widths`` (the four stages' channels,
narrow for CPU examples) and the ``width`` multiplier, which widens every stage — stem
included — as Chen et al. (SimCLR, 2020) widen ResNet-50 into RN50w2/w4, so the ``wide``
baseline matches catK's parameter count as it does for the other families. The feature is
the global average of the last stage: ``widths[-1]·expansion`` channels (scaled by ``width``).
Bottlenecks stride in their 3×3 convolution (torchvision's "ResNet v1.5").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from richrep.errors import ConfigError
from richrep.models.encoders import ENCODERS, Encoder, Width, scaled

Widths = Annotated[list[Annotated[int, Field(ge=1, le=8192)]], Field(min_length=4, max_length=4)]


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class StridedConv1x1(nn.Conv2d):
    """A strided 1×1 convolution computed as subsampling followed by a 1×1 convolution — the
    same arithmetic, and the same parameters and repr as ``nn.Conv2d`` — because the CPU build
    of PyTorch 2.13 here corrupts its heap in the channels_last backward of a strided 1×1
    convolution ("double free or corruption")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[..., ::sh, ::sw], self.weight, self.bias)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(c_in, c_out, 1, bias=False)
    return StridedConv1x1(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions and an identity (or 1×1 projection) shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(c_in, planes, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand (×4) and a shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, planes * 4, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """The ResNet trunk without its classifier: stem, four stages, global average pool;
    ``forward`` returns ``(N, feature_dim)``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        in_channels: int = 3,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        stem = widths[0]
        if cifar_stem:
            self.conv1 = conv3x3(in_channels, stem)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        c_in = stem
        for i, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(c_in, planes, stride))
                c_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c_in
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each residual branch starts as zero (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def _resnet(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    input_shape: Sequence[int],
    width: float,
    widths: Sequence[int],
    cifar_stem: bool,
    zero_init_residual: bool,
) -> Encoder:
    if len(input_shape) != 3:
        raise ConfigError(
            f"encoder {name!r} needs (C, H, W) images, got input shape {tuple(input_shape)}"
        )
    body = ResNet(
        block,
        layers,
        [scaled(c, width) for c in widths],
        in_channels=int(input_shape[0]),
        cifar_stem=cifar_stem,
        zero_init_residual=zero_init_residual,
    )
    return Encoder(body, body.feature_dim, input_shape)


_IMAGENET = dict(example_input=(3, 32, 32))


@ENCODERS.register("resnet18", **_IMAGENET)
def resnet18(
    input_shape: Sequence[int],
    width: Width = 1.0,
    widths: Widths = [64, 128, 256, 512],  # noqa: B006
    cifar_stem: bool = False,
    zero_init_residual: bool = False,
) -> Encoder:
    """ResNet-18 (He et al. 2016): BasicBlocks [2, 2, 2, 2]; features 512·width at the default
    widths (11,176,512 parameters without the classifier, as torchvision's)."""
    return _resnet(
        "resnet18",
        BasicBlock,
        [2, 2, 2, 2],
        input_shape,
        width,
        widths,
        cifar_stem,
        zero_init_residual,
    )


@ENCODERS.register("resnet50", **_IMAGENET)
def resnet50(
    input_shape: Sequence[int],
    width: Width = 1.0,
    widths: Widths = [64, 128, 256, 512],  # noqa: B006
    cifar_stem: bool = False,
    zero_init_residual: bool = False,
) -> Encoder:
    """ResNet-50 (He et al. 2016): Bottlenecks [3, 4, 6, 3]; features 2048·width at the
    default widths (23,508,032 parameters without the classifier, as torchvision's); width 2
    and 4 are SimCLR's RN50w2/w4."""
    return _resnet(
        "resnet50",
        Bottleneck,
        [3, 4, 6, 3],
        input_shape,
        width,
        widths,
        cifar_stem,
        zero_init_residual,
    )
