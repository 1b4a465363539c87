"""Two-temperature KD: a softer (or sharper) teacher where it is wrong.

Per sample ``T_i = t_right`` if the teacher is correct (``argmax z_t == y``) else ``t_wrong``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdtune.methods.registry import register_method
from kdtune.methods.vanilla import soft_ce, soft_targets


def sample_temperatures(
    teacher_logits: Tensor, labels: Tensor, *, t_right: float, t_wrong: float
) -> Tensor:
    """``T_i = t_right`` where ``argmax z_t == y`` else ``t_wrong``: a float32 ``(N,)`` tensor."""
    correct = teacher_logits.argmax(dim=1) == labels
    right = torch.full(correct.shape, float(t_right), device=teacher_logits.device)
    return torch.where(correct, right, torch.full_like(right, float(t_wrong)))


@register_method("two_temperature", uses_temperature=False, uses_two_temperatures=True)
def two_temperature(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    t_right: float | None,
    t_wrong: float | None,
) -> Tensor:
    """``alpha * CE(z_s, y) + (1 - alpha) * KL_{T_i}(softmax(z_t / T_i), z_s)`` per sample.

    ``T_i`` is ``t_right`` or ``t_wrong`` (see :func:`sample_temperatures`); ``temperature``
    is ignored.
    """
    if t_right is None or t_wrong is None:
        raise TypeError("two_temperature needs t_right and t_wrong")
    t = sample_temperatures(teacher_logits, labels, t_right=t_right, t_wrong=t_wrong)
    targets = soft_targets(teacher_logits, t)
    return soft_ce(student_logits, targets, labels, alpha=alpha, temperature=t)
