"""Relational KD (``relational``, Park et al. 2019) on the pre-logit embeddings.

Not the relative KD (``rkd_v1..rkd_v4``, :mod:`kdtune.methods.relative`) of D'Amicantonio
2021, "Improvements to Knowledge Distillation on Deep Neural Networks" (MSc thesis, University
of Bologna).

- distances ``d[i, j] = sqrt(clamp(|a|² + |b|² − 2 a·b, min=1e-12))``, diagonal 0, each matrix
  divided by the mean of its non-zero entries; distance term: smooth-L1 (beta 1) between the
  two matrices, averaged over all ``N²`` entries;
- angles: ``v[i, j] = normalize(e[j] − e[i])`` (``normalize(0) = 0``), ``A = bmm(v, vᵀ)``;
  angle term: smooth-L1 between the two ``A``, averaged over all ``N³`` entries.

Term ``distance_weight * d + angle_weight * a``; the teacher side carries no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances, diagonal 0, over the mean of the non-zero entries."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=1e-12).sqrt()
    d = d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def angles(e: Tensor) -> Tensor:
    """``A[i, j, k] = <v[i, j], v[i, k]>`` of ``v[i, j] = normalize(e[j] − e[i])``."""
    v = nn.functional.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return torch.bmm(v, v.transpose(1, 2))


def relational(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], *,
               distance_weight: float, angle_weight: float) -> Tensor:
    """``distance_weight * d + angle_weight * a`` on the one embedding pair."""
    (s,), (t,) = student_feats, teacher_feats
    s, t = s.flatten(1), t.detach().flatten(1)
    with torch.no_grad():
        t_d, t_a = distances(t), angles(t)
    d = nn.functional.smooth_l1_loss(distances(s), t_d, beta=1.0)
    a = nn.functional.smooth_l1_loss(angles(s), t_a, beta=1.0)
    return distance_weight * d + angle_weight * a
