"""Two-temperature KD: a softer (or sharper) teacher where it is wrong.

Per sample ``T_i = t_right`` if the teacher is correct (``argmax z_t == y``) else ``t_wrong``.
From D'Amicantonio 2021, "Improvements to Knowledge Distillation on Deep Neural Networks" (MSc
thesis, University of Bologna).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdtune.methods.vanilla import kl_t, soft_targets


def sample_temperatures(
    teacher_logits: Tensor, labels: Tensor, *, t_right: float, t_wrong: float
) -> Tensor:
    """``T_i = t_right`` where ``argmax z_t == y`` else ``t_wrong``: a float32 ``(N,)`` tensor."""
    correct = teacher_logits.argmax(dim=1) == labels
    right = torch.full(correct.shape, float(t_right), device=teacher_logits.device)
    return torch.where(correct, right, torch.full_like(right, float(t_wrong)))


def two_temperature(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                    t_right: float, t_wrong: float) -> Tensor:
    """The soft term ``KL_{T_i}(softmax(z_t / T_i), z_s)`` per sample.

    ``T_i`` is ``t_right`` or ``t_wrong`` (see :func:`sample_temperatures`); the config's
    ``temperature`` is not read.
    """
    t = sample_temperatures(teacher_logits, labels, t_right=t_right, t_wrong=t_wrong)
    return kl_t(soft_targets(teacher_logits, t), student_logits, t)
