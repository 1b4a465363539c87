"""Decoupled KD (``dkd``, Zhao et al. 2022): the KL split into target and non-target parts.

With ``p = softmax(z / T)`` of student and teacher:

- ``TCKD = T**2 * KL(b_t || b_s)``, ``b = [p[y], 1 - p[y]]`` (the binary target/other split);
- ``NCKD = T**2 * KL(q_t || q_s)``, ``q = softmax(z / T)`` over the non-target classes only.

Soft term ``tckd_weight * TCKD + nckd_weight * NCKD`` per sample. Everything is computed in
log space (``log(1 - p[y])`` as a log-sum-exp over the other classes), so it stays finite
when ``p[y]`` rounds to 0 or 1. Needs at least two classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdtune.methods.vanilla import maybe_standardize


def binary_log_probs(logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``log [p[y], 1 - p[y]]`` of ``p = softmax(z / T)``, shape ``(N, 2)``, float32."""
    z = logits.float() / temperature
    target = nn.functional.one_hot(labels, z.shape[1]).bool()
    log_all = torch.logsumexp(z, dim=1)
    log_target = z.gather(1, labels[:, None]).squeeze(1) - log_all
    log_other = torch.logsumexp(z.masked_fill(target, float("-inf")), dim=1) - log_all
    return torch.stack([log_target, log_other], dim=1)


def non_target_log_probs(logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """``log softmax(z / T)`` over the classes other than ``y``; 0 in the label's column."""
    z = logits.float() / temperature
    target = nn.functional.one_hot(labels, z.shape[1]).bool()
    log_q = nn.functional.log_softmax(z.masked_fill(target, float("-inf")), dim=1)
    return log_q.masked_fill(target, 0.0)


def kl_logs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row ``sum_c p_c (log p_c - log q_c)`` from log-probabilities (``0 log 0 = 0``)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=1)


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
              temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample ``(TCKD, NCKD)``, each already scaled by ``T**2``."""
    t2 = temperature**2
    tckd = kl_logs(binary_log_probs(teacher_logits, labels, temperature),
                   binary_log_probs(student_logits, labels, temperature))
    target = nn.functional.one_hot(labels, student_logits.shape[1]).bool()
    log_qt = non_target_log_probs(teacher_logits, labels, temperature)
    log_qs = non_target_log_probs(student_logits, labels, temperature)
    nckd = kl_logs(log_qt.masked_fill(target, float("-inf")), log_qs)
    return t2 * tckd, t2 * nckd


def dkd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, temperature: float,
        tckd_weight: float, nckd_weight: float, logit_standardization: bool) -> Tensor:
    """DKD's soft term ``tckd_weight * TCKD + nckd_weight * NCKD`` per sample."""
    student, teacher = maybe_standardize(student_logits, teacher_logits, logit_standardization)
    tckd, nckd = dkd_terms(student, teacher, labels, temperature)
    return tckd_weight * tckd + nckd_weight * nckd
