"""CIFAR-style ResNets (He et al. 2016) with a 3x3 stem and up to four stages.

Stage ``i`` has ``width * 2**i`` channels (times 4 at a bottleneck's output) and stride 1 for
stage 0, 2 for the others. There is no max-pool; convolutions are padded and the head uses
adaptive average pooling, so inputs as small as 8x8 work even when strides shrink them to 1x1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from kdtune.errors import KdtuneError
from kdtune.models.registry import (
    Features,
    check_choice,
    check_int,
    check_int_list,
)

STEM_STRIDES = (1, 2, 4)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(_conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = _conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


class ResNet(nn.Module):
    """Stem, one stage per non-zero entry of ``blocks``, global average pool, linear head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        blocks: Sequence[int],
        block: str = "basic",
        width: int = 64,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        block_cls = BLOCKS[block]
        self.stem = nn.Sequential(
            _conv3x3(in_channels, width, stem_stride),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(b for b in blocks if b > 0):
            planes = width * 2**i
            layers: list[nn.Module] = []
            for j in range(n):
                layers.append(block_cls(c_in, planes, stride=2 if i > 0 and j == 0 else 1))
                c_in = planes * block_cls.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward_features(self, x: torch.Tensor) -> Features:
        """Logits, each stage's output (its last block's output, after the block's ReLU) and
        the embedding (the globally pooled last stage)."""
        x = self.stem(x)
        stages = []
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        embedding = torch.flatten(self.pool(x), 1)
        return Features(self.fc(embedding), stages, embedding)


def check_blocks(blocks: object) -> list[int]:
    """Validate ``blocks``: 4 non-negative ints, not all 0, no non-zero after a 0."""
    counts = check_int_list("blocks", blocks, minimum=0)
    if len(counts) != 4:
        raise KdtuneError(f"blocks {counts!r}: must be 4 integers >= 0, one per stage")
    if not any(counts):
        raise KdtuneError(f"blocks {counts!r}: at least the first stage must have a block")
    first_zero = counts.index(0) if 0 in counts else len(counts)
    if any(counts[first_zero:]):
        raise KdtuneError(f"blocks {counts!r}: a stage after a 0 must be 0")
    return counts


def resnet(
    num_classes: int,
    in_shape: tuple[int, int, int],
    blocks: Sequence[int] = (2, 2, 2, 2),
    block: str = "basic",
    width: int = 64,
    stem_stride: int = 1,
) -> nn.Module:
    """ResNet with ``blocks`` per stage (a 0 drops that stage and the later ones).

    ``block`` is ``'basic'`` or ``'bottleneck'``; stage ``i`` has ``width * 2**i`` channels;
    the 3x3 stem convolution has stride ``stem_stride`` (1, 2 or 4).
    """
    counts = check_blocks(blocks)
    check_choice("block", block, list(BLOCKS))
    width = check_int("width", width, minimum=1)
    check_choice("stem_stride", stem_stride, STEM_STRIDES)
    return ResNet(num_classes, in_shape[0], counts, block, width, int(stem_stride))


def _preset(name: str, blocks: tuple[int, int, int, int], block: str, default_width: int
            ) -> Callable[..., nn.Module]:
    def build(
        num_classes: int,
        in_shape: tuple[int, int, int],
        width: int = default_width,
        stem_stride: int = 1,
    ) -> nn.Module:
        return resnet(num_classes, in_shape, blocks, block, width, stem_stride)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"ResNet preset: blocks {list(blocks)}, {block} blocks, width {default_width}."
    return build


resnet18 = _preset("resnet18", (2, 2, 2, 2), "basic", 64)
resnet34 = _preset("resnet34", (3, 4, 6, 3), "basic", 64)
resnet50 = _preset("resnet50", (3, 4, 6, 3), "bottleneck", 64)
resnet152 = _preset("resnet152", (3, 8, 36, 3), "bottleneck", 64)
# The CIFAR ResNets of He et al.: 6n+2 layers, three stages of 16/32/64 channels.
resnet8 = _preset("resnet8", (1, 1, 1, 0), "basic", 16)
resnet20 = _preset("resnet20", (3, 3, 3, 0), "basic", 16)
resnet56 = _preset("resnet56", (9, 9, 9, 0), "basic", 16)
