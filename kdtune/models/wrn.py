"""Wide ResNets WRN-depth-k (Zagoruyko & Komodakis 2016), pre-activation blocks."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import nn

from kdtune.errors import KdtuneError
from kdtune.models.registry import Features, check_dropout, check_int


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3 [-dropout] BN-ReLU-conv3x3, plus a (1x1 conv) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.equal = c_in == c_out and stride == 1
        self.shortcut = (
            nn.Identity() if self.equal else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        # As in the reference code, a projection shortcut sees the pre-activated input.
        return out + (x if self.equal else self.shortcut(act))


class WideResNet(nn.Module):
    """3x3 stem (16 channels), three groups of 16k/32k/64k channels, BN-ReLU, pool, linear."""

    def __init__(
        self, num_classes: int, in_channels: int, depth: int, widen_factor: int, dropout: float
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        groups: list[nn.Module] = []
        for g in range(3):
            layers = [
                WideBlock(
                    widths[g] if i == 0 else widths[g + 1],
                    widths[g + 1],
                    (1 if g == 0 else 2) if i == 0 else 1,
                    dropout,
                )
                for i in range(n)
            ]
            groups.append(nn.Sequential(*layers))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.groups(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))

    def forward_features(self, x: torch.Tensor) -> Features:
        """Logits, each group's output and the embedding. A group's output is its last
        block's residual sum, pre-activation (no BN-ReLU: the next group's first block, or the
        final BN-ReLU, applies it); the embedding is the pooled ``relu(bn(last group))``."""
        x = self.stem(x)
        stages = []
        for group in self.groups:
            x = group(x)
            stages.append(x)
        embedding = torch.flatten(self.pool(self.relu(self.bn(x))), 1)
        return Features(self.fc(embedding), stages, embedding)


def wrn(
    num_classes: int,
    in_shape: tuple[int, int, int],
    depth: int = 16,
    widen_factor: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """WRN-``depth``-``widen_factor``; ``depth`` is 6n+4 (10, 16, 22, 28, 40, ...)."""
    depth_ok = isinstance(depth, numbers.Integral) and not isinstance(depth, bool)
    if not depth_ok or depth < 10 or (depth - 4) % 6:
        raise KdtuneError(f"depth {depth!r}: must be 6n+4 with n >= 1, e.g. 10, 16, 22, 28, 40")
    depth = int(depth)
    widen_factor = check_int("widen_factor", widen_factor, minimum=1)
    return WideResNet(num_classes, in_shape[0], depth, widen_factor, check_dropout(dropout))


def _preset(depth: int, widen_factor: int) -> Callable[..., nn.Module]:
    name = f"wrn_{depth}_{widen_factor}"

    def build(num_classes: int, in_shape: tuple[int, int, int], dropout: float = 0.0) -> nn.Module:
        return wrn(num_classes, in_shape, depth, widen_factor, dropout)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"WRN-{depth}-{widen_factor}."
    return build


wrn_16_1 = _preset(16, 1)
wrn_16_2 = _preset(16, 2)
wrn_40_1 = _preset(40, 1)
wrn_40_2 = _preset(40, 2)
