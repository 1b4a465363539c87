"""Teacher-free KD (``tf_kd``, Yuan et al. 2020): a virtual teacher instead of a trained one.

The virtual teacher puts probability ``tf_peak`` on the label and ``(1 - tf_peak) / (C - 1)``
on every other class; the soft term is ``KL_T(virtual, z_s)``. The virtual distribution is
used as it is (not softened by ``T``, unlike the paper's code); ``T`` softens the student only.
No teacher is read. Needs at least two classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdtune.methods.vanilla import kl_t


def virtual_teacher(labels: Tensor, num_classes: int, peak: float) -> Tensor:
    """``(N, C)`` float32: ``peak`` at the label, ``(1 - peak) / (C - 1)`` elsewhere."""
    rest = torch.full((len(labels), num_classes), (1.0 - peak) / (num_classes - 1),
                      device=labels.device)
    return torch.where(nn.functional.one_hot(labels, num_classes).bool(),
                       torch.full_like(rest, peak), rest)


def tf_kd(student_logits: Tensor, teacher_logits: None, labels: Tensor, *, temperature: float,
          tf_peak: float) -> Tensor:
    """The soft term ``KL_T(virtual teacher, z_s)`` per sample."""
    virtual = virtual_teacher(labels, student_logits.shape[1], tf_peak)
    return kl_t(virtual, student_logits, temperature)
