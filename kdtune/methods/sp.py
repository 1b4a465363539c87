"""Similarity-preserving KD (``sp``, Tung & Mori 2019): match the batch's similarity matrix.

``G = normalize(f.flatten(1) @ f.flatten(1).T)`` (L2 per row); term: the sum over stage pairs
of ``sum((G_s - G_t)**2) / N**2``. Default: the last stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def similarity(f: Tensor) -> Tensor:
    """The ``(N, N)`` row-normalised Gram matrix of the flattened features."""
    flat = f.flatten(1)
    return nn.functional.normalize(flat @ flat.t(), dim=1)


def sp(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Sum over pairs of the squared difference of the similarity matrices over ``N**2``."""
    terms = []
    for s, t in zip(student_feats, teacher_feats, strict=True):
        n = s.shape[0]
        terms.append((similarity(s) - similarity(t)).pow(2).sum() / n**2)
    return torch.stack(terms).sum()
