"""Relative KD (``rkd_v1``..``rkd_v4``): vanilla KD on rewritten teacher logits.

From D'Amicantonio 2021, "Improvements to Knowledge Distillation on Deep Neural Networks" (MSc
thesis, University of Bologna).

Each version rewrites the teacher logits ``z`` row-wise before the vanilla loss:

``lower(z, top)``
    ``s`` = second-largest value of the (unmodified) row. Visit the classes other than ``top``
    and the class holding ``s`` in ascending order of logit; for each class ``j``: if
    ``z[top] - |z[j]| >= s`` then ``z[top] -= |z[j]|`` (``j`` is *used*), else stop.
``raise_label(z, y)`` (teacher wrong, ``p = argmax z``)
    Visit the classes other than ``y`` and ``p`` in ascending order of logit; before each step
    stop if ``z[y] > z[p]`` (original ``z[p]``); else ``z[y] += |z[j]|`` (``j`` is *used*).

- v1: correct (``argmax z == y``) -> ``lower(z, y)``; wrong -> the row becomes all zeros.
- v2: correct -> ``lower(z, y)``; wrong -> ``raise_label(z, y)``.
- v3: as v2, then every used ``z[j]`` is set to 0.
- v4: ``lower(z, argmax z)`` for every row; labels are ignored.

All rules run on the whole batch at once: the classes are visited in sorted order (stable, so
ties go by class index) with one masked update per step, and a row stops for good at its first
failed step. ``argmax`` ties go to the lowest class index, as ``torch.argmax``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kdtune.methods.vanilla import kl_t, soft_targets


def lower(z: Tensor, top: Tensor) -> tuple[Tensor, Tensor]:
    """``lower(z, top)`` for every row: returns the new logits and the ``(N, C)`` used mask."""
    n, c = z.shape
    rows = torch.arange(n, device=z.device)
    others = z.masked_fill(_one_hot(top, c), float("-inf"))
    second = others.argmax(dim=1)
    s = z[rows, second]
    values, order = torch.sort(z, dim=1, stable=True)
    skip = (_one_hot(top, c) | _one_hot(second, c)).gather(1, order)
    magnitude = values.abs()
    z_top = z[rows, top]
    active = torch.ones(n, dtype=torch.bool, device=z.device)
    used = torch.zeros_like(skip)
    for k in range(c):
        visit = active & ~skip[:, k]
        candidate = z_top - magnitude[:, k]
        step = visit & (candidate >= s)
        active &= ~visit | step  # a visited class that does not fit stops the row
        z_top = torch.where(step, candidate, z_top)
        used[:, k] = step
    out = z.clone()
    out[rows, top] = z_top
    return out, _unsort(used, order)


def raise_label(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The wrong-teacher rule of v2/v3 for every row: new logits and the used mask."""
    n, c = z.shape
    rows = torch.arange(n, device=z.device)
    pred = z.argmax(dim=1)
    z_pred = z[rows, pred]
    values, order = torch.sort(z, dim=1, stable=True)
    skip = (_one_hot(labels, c) | _one_hot(pred, c)).gather(1, order)
    magnitude = values.abs()
    z_label = z[rows, labels]
    active = torch.ones(n, dtype=torch.bool, device=z.device)
    used = torch.zeros_like(skip)
    for k in range(c):
        visit = active & ~skip[:, k]
        active &= ~(visit & (z_label > z_pred))  # checked before each step
        step = visit & active
        z_label = torch.where(step, z_label + magnitude[:, k], z_label)
        used[:, k] = step
    out = z.clone()
    out[rows, labels] = z_label
    return out, _unsort(used, order)


def adjust_v1(z: Tensor, labels: Tensor) -> Tensor:
    """rkd_v1: ``lower(z, y)`` where the teacher is correct, all zeros where it is wrong."""
    lowered, _ = lower(z, labels)
    correct = (z.argmax(dim=1) == labels).unsqueeze(1)
    return torch.where(correct, lowered, torch.zeros_like(z))


def adjust_v2(z: Tensor, labels: Tensor) -> Tensor:
    """rkd_v2: ``lower(z, y)`` where the teacher is correct, ``raise_label(z, y)`` where wrong."""
    return _v2_v3(z, labels, zero_used=False)


def adjust_v3(z: Tensor, labels: Tensor) -> Tensor:
    """rkd_v3: as rkd_v2, then every used class's logit is set to 0."""
    return _v2_v3(z, labels, zero_used=True)


def adjust_v4(z: Tensor, labels: Tensor) -> Tensor:
    """rkd_v4: ``lower(z, argmax z)`` for every row; ``labels`` are ignored."""
    lowered, _ = lower(z, z.argmax(dim=1))
    return lowered


def _v2_v3(z: Tensor, labels: Tensor, *, zero_used: bool) -> Tensor:
    correct = (z.argmax(dim=1) == labels).unsqueeze(1)
    lowered, used_lower = lower(z, labels)
    raised, used_raise = raise_label(z, labels)
    out = torch.where(correct, lowered, raised)
    if zero_used:
        out = out.masked_fill(torch.where(correct, used_lower, used_raise), 0.0)
    return out


def _one_hot(index: Tensor, num_classes: int) -> Tensor:
    return torch.nn.functional.one_hot(index, num_classes).bool()


def _unsort(sorted_mask: Tensor, order: Tensor) -> Tensor:
    """Undo ``gather(1, order)``: the mask back in class order."""
    return torch.zeros_like(sorted_mask).scatter(1, order, sorted_mask)


def _relative_kd(name: str, adjust: Callable[[Tensor, Tensor], Tensor]
                 ) -> Callable[..., Tensor]:
    def loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
             temperature: float) -> Tensor:
        targets = soft_targets(adjust(teacher_logits.float(), labels), temperature)
        return kl_t(targets, student_logits, temperature)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = (f"{name}: the soft term ``KL_T(softmax(a(z_t, y) / T), z_s)`` with ``a`` = "
                    f":func:`{adjust.__name__}`.")
    return loss


rkd_v1 = _relative_kd("rkd_v1", adjust_v1)
rkd_v2 = _relative_kd("rkd_v2", adjust_v2)
rkd_v3 = _relative_kd("rkd_v3", adjust_v3)
rkd_v4 = _relative_kd("rkd_v4", adjust_v4)
