"""Probabilistic knowledge transfer (``pkt``, Passalis & Tefas 2018) on the embeddings.

Rows ``x / (|x| + 1e-7)``; cosine-similarity matrices mapped to ``(s + 1) / 2``, each row
normalised to sum 1 (``P_s``, ``P_t``); term ``mean(P_t * log((P_t + eps) / (P_s + eps)))``
with ``eps = 1e-7``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

EPS = 1e-7


def conditional(x: Tensor) -> Tensor:
    """Row-stochastic ``(N, N)`` matrix of ``(cos + 1) / 2`` similarities."""
    x = x.flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + EPS)
    s = (x @ x.t() + 1.0) / 2.0
    return s / s.sum(dim=1, keepdim=True)


def pkt(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """The mean KL-like divergence between the two conditional similarity matrices."""
    (s,), (t,) = student_feats, teacher_feats
    p_s, p_t = conditional(s), conditional(t)
    return torch.mean(p_t * torch.log((p_t + EPS) / (p_s + EPS)))
