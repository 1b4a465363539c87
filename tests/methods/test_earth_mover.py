"""Tests for earth-mover KD: the mass transfer by hand, against a loop reference, and the loss."""

from __future__ import annotations

import math

import pytest
import torch

from kdtune.methods import distillation_loss
from kdtune.methods.earth_mover import earth_mover_targets, move_mass_to_label


def test_transfer_by_hand() -> None:
    p = torch.tensor([
        # y 0, argmax 1: visit 2 (0.06): 0.36 < 0.4, move -> 0.42; next: 0.42 >= 0.4, stop
        [0.36, 0.40, 0.06, 0.09, 0.09],
        # y 2 is the argmax: untouched
        [0.10, 0.20, 0.30, 0.15, 0.25],
        # y 4, argmax 0: visit 1 (0.05), 2 (0.1), 3 (0.15) then 0.5 >= 0.5 before class 0
        [0.50, 0.05, 0.10, 0.15, 0.20],
        # y 1, argmax 0: everything but class 0 moves, then class 0 too (0.3 + ... < 0.55)
        [0.55, 0.05, 0.10, 0.15, 0.15],
    ])
    out = move_mass_to_label(p, torch.tensor([0, 2, 4, 1]))
    torch.testing.assert_close(out, torch.tensor([
        [0.42, 0.40, 0.0, 0.09, 0.09],
        [0.10, 0.20, 0.30, 0.15, 0.25],
        [0.50, 0.0, 0.0, 0.0, 0.50],
        [0.0, 1.0, 0.0, 0.0, 0.0],
    ]))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(4))
    assert p[0, 2].item() == pytest.approx(0.06)  # input untouched


def test_targets_use_the_temperature() -> None:
    p = torch.tensor([[0.36, 0.40, 0.06, 0.09, 0.09]])
    teacher = 2.0 * p.log()  # softmax(teacher / 2) == p
    out = earth_mover_targets(teacher, torch.tensor([0]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[0.42, 0.40, 0.0, 0.09, 0.09]]))


def test_loss_by_hand() -> None:
    teacher = 2.0 * torch.tensor([[0.36, 0.40, 0.06, 0.09, 0.09]]).log()
    student = torch.tensor([[0.5, 1.0, -1.0, 0.0, 0.2]])
    target, t, alpha = [0.42, 0.40, 0.0, 0.09, 0.09], 2.0, 0.3
    log_norm = math.log(sum(math.exp(z / t) for z in student[0].tolist()))
    kl = t**2 * sum(
        pc * (math.log(pc) - (z / t - log_norm))
        for pc, z in zip(target, student[0].tolist(), strict=True)
        if pc > 0
    )
    ce = math.log(sum(math.exp(z) for z in student[0].tolist())) - 0.5
    loss = distillation_loss("earth_mover", student, teacher, torch.tensor([0]), alpha=alpha,
                             temperature=t)
    assert loss.item() == pytest.approx(alpha * ce + (1 - alpha) * kl, rel=1e-5)


def _ref_move(p: list[float], y: int) -> list[float]:
    c = len(p)
    if max(range(c), key=lambda i: (p[i], -i)) == y:
        return list(p)
    q = list(p)
    for j in sorted(range(c), key=lambda i: (p[i], i)):
        if j == y:
            continue
        if q[y] >= max(q[k] for k in range(c) if k != y):
            break
        q[y] += q[j]
        q[j] = 0.0
    return q


@pytest.mark.parametrize("c", [2, 3, 10])
def test_matches_loop_reference(c: int) -> None:
    """Probabilities in units of 1/64 (exact in float32), so ties and sums are exact."""
    g = torch.Generator().manual_seed(c)
    units = torch.randint(0, c, (500, 64), generator=g)
    p = torch.nn.functional.one_hot(units, c).sum(dim=1).float() / 64
    labels = torch.randint(0, c, (500,), generator=g)
    out = move_mass_to_label(p, labels)
    pairs = zip(p.tolist(), labels.tolist(), strict=True)
    assert out.tolist() == [_ref_move(row, y) for row, y in pairs]
    # afterwards the label always holds (one of) the largest probabilities
    rows = torch.arange(500)
    others = out.clone()
    others[rows, labels] = -1.0
    assert (out[rows, labels] >= others.amax(dim=1)).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(500))
