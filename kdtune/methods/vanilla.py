"""The student alone (``none``), Hinton's KD (``vanilla``), ``spherical`` KD, and the shared terms.

Notation (per sample): ``CE(z_s, y)`` is the cross-entropy of the raw student logits (composed
with the soft terms by :func:`kdtune.methods.registry.training_loss`) and

    KL_T(p, z_s) = T**2 * sum_c p_c * (log p_c - log_softmax(z_s / T)_c),   0 log 0 = 0.

Every term is computed in float32, whatever the dtype of the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


def spherical_logits(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Both logits with every row rescaled to L2 norm ``l = mean_i ||z_t,i||_2`` (float32).

    Returns ``(z_s / ||z_s|| * l, z_t / ||z_t|| * l)``; an all-zero row stays zero.
    """
    teacher = teacher_logits.float()
    scale = teacher.norm(dim=1).mean()
    student = nn.functional.normalize(student_logits.float(), dim=1)
    return student * scale, nn.functional.normalize(teacher, dim=1) * scale


def standardize(logits: Tensor) -> Tensor:
    """``(z - mean(z)) / (1e-7 + std(z))`` per row, float32; ``std`` unbiased (torch's default).

    A constant row becomes all zeros with a zero gradient (``std`` is computed as
    ``sqrt(max(var, tiny))`` where the variance is positive, so its backward is never 0/0).
    """
    z = logits.float()
    var = z.var(dim=1, keepdim=True)
    tiny = torch.finfo(torch.float32).tiny
    std = torch.where(var > 0, var.clamp_min(tiny).sqrt(), torch.zeros_like(var))
    return (z - z.mean(dim=1, keepdim=True)) / (1e-7 + std)


def maybe_standardize(student_logits: Tensor, teacher_logits: Tensor, on: bool
                      ) -> tuple[Tensor, Tensor]:
    """Both logits standardized when ``on`` (see :func:`standardize`), else as they are."""
    if not on:
        return student_logits, teacher_logits
    return standardize(student_logits), standardize(teacher_logits)


def none(student_logits: Tensor, teacher_logits: None, labels: Tensor) -> None:
    """No soft term: the student learns from the labels alone (CE with weight 1)."""
    return None


def vanilla(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
            temperature: float, logit_standardization: bool) -> Tensor:
    """Hinton's KD soft term ``KL_T(softmax(z_t / T), z_s)``, on standardized logits when
    ``logit_standardization``."""
    student, teacher = maybe_standardize(student_logits, teacher_logits, logit_standardization)
    return kl_t(soft_targets(teacher, temperature), student, temperature)


def spherical(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
              temperature: float) -> Tensor:
    """Spherical KD soft term: the batch mean of ``KL_T(softmax(z_t' / T), z_s')``.

    ``z' = z / ||z||_2 * l`` row-wise for both logits, with ``l`` the batch mean of
    ``||z_t||_2``: a batch statistic, so the term is one value per batch.
    """
    student, teacher = spherical_logits(student_logits, teacher_logits)
    return kl_t(soft_targets(teacher, temperature), student, temperature).mean()


def _column(temperature: float | Tensor) -> float | Tensor:
    """A float stays a float; a per-row ``(N,)`` tensor becomes ``(N, 1)`` float32."""
    if isinstance(temperature, Tensor):
        return temperature.float().reshape(-1, 1)
    return float(temperature)
