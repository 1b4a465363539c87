"""The student alone (``none``), Hinton's KD (``vanilla``), ``spherical`` KD, and the shared terms.

Notation (per sample): ``CE(z_s, y)`` is the cross-entropy of the raw student logits and

    KL_T(p, z_s) = T**2 * sum_c p_c * (log p_c - log_softmax(z_s / T)_c),   0 log 0 = 0.

Every term is computed in float32, whatever the dtype of the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdtune.methods.registry import register_method


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample ``CE(z_s, y) = -log_softmax(z_s)_y``, shape ``(N,)``."""
    return nn.functional.cross_entropy(student_logits.float(), labels, reduction="none")


def soft_targets(teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``softmax(z_t / T)`` in float32; ``temperature`` is a float or one value per row."""
    return torch.softmax(teacher_logits.float() / _column(temperature), dim=1)


def kl_t(p: Tensor, student_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Per-sample ``KL_T(p, z_s) = T**2 * sum_c p_c (log p_c - log_softmax(z_s/T)_c)``.

    ``0 log 0 = 0``: classes with ``p_c = 0`` contribute nothing (and no NaN), even when the
    student's log-probability underflows. ``temperature`` is a float or a ``(N,)`` tensor.
    """
    t = _column(temperature)
    p = p.float()
    log_q = nn.functional.log_softmax(student_logits.float() / t, dim=1)
    cross = torch.where(p > 0, p * log_q, torch.zeros_like(log_q))
    kl = (torch.xlogy(p, p) - cross).sum(dim=1)
    return kl * (t.reshape(-1) ** 2 if isinstance(t, Tensor) else t**2)


def weigh(alpha: float, hard: Tensor, soft: Tensor) -> Tensor:
    """``alpha * hard + (1 - alpha) * soft``; exactly ``hard`` for alpha 1, ``soft`` for 0."""
    if alpha == 1.0:
        return hard
    if alpha == 0.0:
        return soft
    return alpha * hard + (1.0 - alpha) * soft


def soft_ce(
    student_logits: Tensor,
    targets: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float | Tensor,
) -> Tensor:
    """Per-sample ``alpha * CE(z_s, y) + (1 - alpha) * KL_T(targets, z_s)``.

    The vanilla KD loss for a given soft-target distribution ``targets`` (rows sum to 1).
    """
    hard = cross_entropy(student_logits, labels)
    if alpha == 1.0:
        return hard
    return weigh(alpha, hard, kl_t(targets, student_logits, temperature))


def spherical_logits(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Both logits with every row rescaled to L2 norm ``l = mean_i ||z_t,i||_2`` (float32).

    Returns ``(z_s / ||z_s|| * l, z_t / ||z_t|| * l)``; an all-zero row stays zero.
    """
    teacher = teacher_logits.float()
    scale = teacher.norm(dim=1).mean()
    student = nn.functional.normalize(student_logits.float(), dim=1)
    return student * scale, nn.functional.normalize(teacher, dim=1) * scale


@register_method("none", needs_teacher=False, uses_temperature=False)
def none(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    t_right: float | None,
    t_wrong: float | None,
) -> Tensor:
    """The student trained alone: ``CE(z_s, y)``; teacher, alpha and T are ignored."""
    return cross_entropy(student_logits, labels)


@register_method("vanilla")
def vanilla(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    t_right: float | None,
    t_wrong: float | None,
) -> Tensor:
    """Hinton's KD: ``alpha * CE(z_s, y) + (1 - alpha) * KL_T(softmax(z_t / T), z_s)``."""
    return soft_ce(
        student_logits,
        soft_targets(teacher_logits, temperature),
        labels,
        alpha=alpha,
        temperature=temperature,
    )


@register_method("spherical")
def spherical(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    t_right: float | None,
    t_wrong: float | None,
) -> Tensor:
    """Spherical KD: ``alpha * CE(z_s, y) + (1 - alpha) * KL_T(softmax(z_t' / T), z_s')``.

    ``z' = z / ||z||_2 * l`` row-wise for both logits, with ``l`` the batch mean of
    ``||z_t||_2``; the CE term uses the raw student logits.
    """
    hard = cross_entropy(student_logits, labels)
    if alpha == 1.0:
        return hard
    student, teacher = spherical_logits(student_logits, teacher_logits)
    soft = kl_t(soft_targets(teacher, temperature), student, temperature)
    return weigh(alpha, hard, soft)


def _column(temperature: float | Tensor) -> float | Tensor:
    """A float stays a float; a per-row ``(N,)`` tensor becomes ``(N, 1)`` float32."""
    if isinstance(temperature, Tensor):
        return temperature.float().reshape(-1, 1)
    return float(temperature)
