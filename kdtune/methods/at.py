"""Attention transfer (``at``, Zagoruyko & Komodakis 2017): match spatial attention maps.

``a(f) = normalize(f.pow(p).mean(1).flatten(1))`` (L2 per row; ``pow`` exactly, no abs);
term: the sum over stage pairs of ``mean((a(f_s) - a(f_t))**2)``. Maps of different spatial
sizes are average-pooled (adaptively) to the smaller one before ``a``. Conv models only.
Default stages: all, paired from the last stage backwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdtune.methods.features import (
    FEATURE_WEIGHT,
    STAGES,
    match_spatial,
    register_feature_method,
)
from kdtune.methods.registry import Param


def attention(f: Tensor, p: int) -> Tensor:
    """``normalize(f.pow(p).mean(1).flatten(1))``: one L2-normalised map per sample."""
    return nn.functional.normalize(f.pow(p).mean(1).flatten(1), dim=1)


@register_feature_method(
    "at", inputs="stages", maps_only=True,
    params=[FEATURE_WEIGHT, STAGES,
            Param("p", int, 2, low=1, high=4, help="the power of the attention map")],
    defaults={"feature_weight": 1000.0, "stages": "all"},
    formula="sum over pairs of `mean((a(f_s) − a(f_t))²)`, `a(f) = normalize(mean_c f^p)`; "
            "maps pooled to the smaller size",
    paper="Zagoruyko & Komodakis 2017 (AT)")
def at(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], *, p: int) -> Tensor:
    """Sum over pairs of the mean squared difference of the attention maps."""
    terms = []
    for s, t in zip(student_feats, teacher_feats, strict=True):
        s, t = match_spatial(s, t)
        terms.append((attention(s, p) - attention(t, p)).pow(2).mean())
    return torch.stack(terms).sum()
