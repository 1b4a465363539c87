"""Earth-mover KD: move the teacher's probability mass onto the label until it wins.

``p = softmax(z_t / T)``. For rows where ``argmax p != y``, visit the classes ``j != y`` in
ascending order of ``p`` (ties by class index); before each step stop if
``p[y] >= max_{k != y} p[k]`` (current values); else ``p[y] += p[j]; p[j] = 0``.
Rows where the teacher is correct are left as they are; every row still sums to 1.
From D'Amicantonio 2021, "Improvements to Knowledge Distillation on Deep Neural Networks" (MSc
thesis, University of Bologna).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdtune.methods.vanilla import kl_t, soft_targets


def move_mass_to_label(p: Tensor, labels: Tensor) -> Tensor:
    """The earth-mover rule above on probabilities ``p`` ``(N, C)``: a new tensor."""
    n, c = p.shape
    rows = torch.arange(n, device=p.device)
    is_label = torch.nn.functional.one_hot(labels, c).bool()
    q = p.clone()
    p_label = p[rows, labels]
    active = p.argmax(dim=1) != labels
    order = torch.sort(p, dim=1, stable=True).indices
    for k in range(c):
        j = order[:, k]
        visit = active & (j != labels)
        best_other = q.masked_fill(is_label, float("-inf")).amax(dim=1)
        active &= ~(visit & (p_label >= best_other))  # checked before each step
        step = visit & active
        q_j = q[rows, j]
        p_label = torch.where(step, p_label + q_j, p_label)
        q[rows, j] = torch.where(step, torch.zeros_like(q_j), q_j)
    q[rows, labels] = p_label
    return q


def earth_mover_targets(teacher_logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``move_mass_to_label(softmax(z_t / T), y)`` in float32."""
    return move_mass_to_label(soft_targets(teacher_logits, temperature), labels)


def earth_mover(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                temperature: float) -> Tensor:
    """The soft term ``KL_T(p', z_s)``, ``p'`` = moved ``softmax(z_t / T)``."""
    return kl_t(earth_mover_targets(teacher_logits, labels, temperature), student_logits,
                temperature)
