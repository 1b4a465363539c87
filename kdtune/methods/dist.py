"""DIST (Huang et al. 2022): match the teacher's class relations, not its exact probabilities.

With ``p_s``, ``p_t = softmax(z / T)`` of student and teacher, ``(N, C)``:

- ``inter = 1 - mean_i pearson(p_s[i, :], p_t[i, :])`` (each sample's ranking of the classes);
- ``intra = 1 - mean_c pearson(p_s[:, c], p_t[:, c])`` (each class over the batch: a batch
  statistic, so the soft term is one value per batch).

``pearson(a, b) = <a - mean a, b - mean b> / (||a - mean a|| * ||b - mean b|| + 1e-8)``. Soft
term ``T**2 * (dist_beta * inter + dist_gamma * intra)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdtune.methods.vanilla import soft_targets

EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: shape ``(N,)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return (a * b).sum(dim=1) / (norms + EPS)


def dist(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, temperature: float,
         dist_beta: float, dist_gamma: float) -> Tensor:
    """DIST's soft term for the batch (a scalar)."""
    p_s = soft_targets(student_logits, temperature)
    p_t = soft_targets(teacher_logits, temperature)
    inter = 1.0 - pearson_rows(p_s, p_t).mean()
    intra = 1.0 - pearson_rows(p_s.T, p_t.T).mean()
    return temperature**2 * (dist_beta * inter + dist_gamma * intra)
