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

from kdtune.methods.features import match_spatial


def attention(f: Tensor, p: int) -> Tensor:
    """``normalize(f.pow(p).mean(1).flatten(1))``: one L2-normalised map per sample."""
    return nn.functional.normalize(f.pow(p).mean(1).flatten(1), dim=1)


def at(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], *, p: int) -> Tensor:
    """Sum over pairs of the mean squared difference of the attention maps."""
    terms = []
    for s, t in zip(student_feats, teacher_feats, strict=True):
        s, t = match_spatial(s, t)
        terms.append((attention(s, p) - attention(t, p)).pow(2).mean())
    return torch.stack(terms).sum()
