"""Multi-layer perceptron on flattened inputs (the seed's 1200-1200 teacher, 50-600 students)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kdtune.models.registry import Features, check_dropout, check_int_list


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU [-> Dropout]`` per hidden width, then a linear head."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int], dropout: float
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)

    def forward_features(self, x: torch.Tensor) -> Features:
        """Logits, each hidden layer's activation (after its ReLU and dropout: what the next
        layer reads) and the embedding (the last one; the flattened input without hidden
        layers)."""
        stages: list[torch.Tensor] = []
        layers = list(self)
        for i, layer in enumerate(layers[:-1]):
            x = layer(x)
            ends_layer = isinstance(layer, nn.Dropout) or (
                isinstance(layer, nn.ReLU)
                and not (i + 1 < len(layers) and isinstance(layers[i + 1], nn.Dropout)))
            if ends_layer:
                stages.append(x)
        return Features(layers[-1](x), stages, x)


def mlp(
    num_classes: int,
    in_shape: tuple[int, int, int],
    hidden: Sequence[int] = (300,),
    dropout: float = 0.0,
) -> nn.Module:
    """MLP with hidden layer widths ``hidden`` (empty: a linear model) and ``dropout``."""
    widths = check_int_list("hidden", hidden, minimum=1)
    return MLP(math.prod(in_shape), num_classes, widths, check_dropout(dropout))
