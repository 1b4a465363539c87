"""Tests for relative KD (rkd_v1..rkd_v4): hand-computed rows, invariants, a loop reference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from kdtune.methods import adjust_teacher_logits, distillation_loss, get_method, list_methods
from kdtune.methods.relative import lower

ADJUSTING = [m for m in list_methods() if get_method(m).adjusts_teacher]


def _adjust(method: str, rows: list[list[float]], labels: list[int]) -> Tensor:
    return adjust_teacher_logits(method, torch.tensor(rows), torch.tensor(labels))


# --- hand-computed rows ----------------------------------------------------------------------


def test_lower_by_hand() -> None:
    z = torch.tensor([
        # top 0, s = 2 (class 1); visit 2 (-1.5): 4-1.5=2.5 >= 2; 4 (0.5): 2.0 >= 2; 3 (1.0): stop
        [4.0, 2.0, -1.5, 1.0, 0.5],
        # top 0, s = 1 (class 1); visit 2 (-2.5): 3-2.5=0.5 < 1 stop, though class 3 would fit
        [3.0, 1.0, -2.5, -0.2, 0.0],
        # top 2, s = 1 (class 4); visit 1 (-1), 0 (0), 3 (0.5): 5 -> 4 -> 4 -> 3.5, all used
        [0.0, -1.0, 5.0, 0.5, 1.0],
    ])
    out, used = lower(z, torch.tensor([0, 0, 2]))
    torch.testing.assert_close(out, torch.tensor([
        [2.0, 2.0, -1.5, 1.0, 0.5],
        [3.0, 1.0, -2.5, -0.2, 0.0],
        [0.0, -1.0, 3.5, 0.5, 1.0],
    ]))
    assert used.tolist() == [
        [False, False, True, False, True],
        [False, False, False, False, False],
        [True, True, False, True, False],
    ]
    assert torch.equal(z[0], torch.tensor([4.0, 2.0, -1.5, 1.0, 0.5]))  # input untouched


def test_v1_by_hand() -> None:
    rows = [[4.0, 2.0, -1.5, 1.0, 0.5], [1.0, 2.0, 0.0, -1.0, 0.5]]
    out = _adjust("rkd_v1", rows, [0, 0])  # row 0 correct: lower(); row 1 wrong: zeros
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, -1.5, 1.0, 0.5], [0.0] * 5]))


def test_v2_wrong_branch_by_hand() -> None:
    rows = [
        # y 0, p 1 (3.0); visit 4 (-2): 0.5 -> 2.5; visit 2 (-1): 2.5 -> 3.5; 3.5 > 3: stop
        [0.5, 3.0, -1.0, 0.8, -2.0],
        # y 0, p 1; visit 2 (0.5): -1 -> -0.5; no class left: the label is not restored
        [-1.0, 2.0, 0.5, 0.0, 0.0],
        # y 3, p 0; visit 1 (-0.5): 1 -> 1.5; 2 (0.25): 1.5 -> 1.75; 4 (1.5): 1.75 -> 3.25
        [2.0, -0.5, 0.25, 1.0, 1.5],
    ]
    out = _adjust("rkd_v2", rows, [0, 0, 3])
    torch.testing.assert_close(out, torch.tensor([
        [3.5, 3.0, -1.0, 0.8, -2.0],
        [-0.5, 2.0, 0.5, 0.0, 0.0],
        [2.0, -0.5, 0.25, 3.25, 1.5],
    ]))
    assert out.argmax(dim=1).tolist() == [0, 1, 3]
    # the correct branch of v2 is lower(), as in v1
    torch.testing.assert_close(
        _adjust("rkd_v2", [[4.0, 2.0, -1.5, 1.0, 0.5]], [0]),
        torch.tensor([[2.0, 2.0, -1.5, 1.0, 0.5]]),
    )


def test_v3_zeroes_used_classes_by_hand() -> None:
    rows = [
        [4.0, 2.0, -1.5, 1.0, 0.5],  # correct: classes 2 and 4 used by lower()
        [0.5, 3.0, -1.0, 0.8, -2.0],  # wrong: classes 4 and 2 used
        [3.0, 1.0, -2.5, -0.2, 0.0],  # correct, nothing used
        [2.0, -1.0, -1.5, -0.5, -3.0],  # correct; s = -0.5; visit 4 (-3): 2 - 3 < -0.5: stop
    ]
    out = _adjust("rkd_v3", rows, [0, 0, 0, 0])
    torch.testing.assert_close(out, torch.tensor([
        [2.0, 2.0, 0.0, 1.0, 0.0],
        [3.5, 3.0, 0.0, 0.8, 0.0],
        [3.0, 1.0, -2.5, -0.2, 0.0],
        [2.0, -1.0, -1.5, -0.5, -3.0],
    ]))


def test_v3_negative_row_by_hand() -> None:
    """With negative logits the label can drop below 0, under the zeroed classes."""
    # s = -0.5 (class 3); visit 2 (-1.5): 2 -> 0.5; visit 1 (-1): 0.5 -> -0.5 >= -0.5
    out = _adjust("rkd_v3", [[2.0, -1.0, -1.5, -0.5]], [0])
    torch.testing.assert_close(out, torch.tensor([[-0.5, 0.0, 0.0, -0.5]]))


def test_v4_by_hand_ignores_labels() -> None:
    rows = [
        # top 1, s = 3 (class 3); visit 2 (-2): 5 - 2 = 3 >= 3; 0 (1): 2 < 3 stop
        [1.0, 5.0, -2.0, 3.0],
        # top 0, s = 1 (class 2); visit 1 (-0.5): 1.5; 3 (0.25): 1.25
        [2.0, -0.5, 1.0, 0.25],
    ]
    for labels in ([0, 0], [1, 3], [3, 1]):
        torch.testing.assert_close(
            _adjust("rkd_v4", rows, labels),
            torch.tensor([[1.0, 3.0, -2.0, 3.0], [1.25, -0.5, 1.0, 0.25]]),
        )


# --- invariants on random batches --------------------------------------------------------------


def _random(n: int = 400, c: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2
    labels = torch.where(
        torch.rand(n, generator=g) < 0.5, z.argmax(dim=1), torch.randint(0, c, (n,), generator=g)
    )
    return z, labels


def _max_other(z: Tensor, cls: Tensor) -> Tensor:
    masked = z.clone()
    masked[torch.arange(len(z)), cls] = float("-inf")
    return masked.amax(dim=1)


@pytest.mark.parametrize("method", ["rkd_v1", "rkd_v2", "rkd_v3"])
def test_correct_rows_keep_the_label_on_top(method: str) -> None:
    z, labels = _random()
    out = adjust_teacher_logits(method, z, labels)
    rows = torch.arange(len(z))
    correct = z.argmax(dim=1) == labels
    assert correct.any()
    label_value = out[rows, labels]
    if method == "rkd_v3":  # zeroed classes may beat a label that dropped below 0
        kept = out.masked_fill(out == 0, float("-inf"))
        assert (label_value >= _max_other(kept, labels))[correct].all()
        assert (label_value >= _max_other(out, labels))[correct & (label_value >= 0)].all()
    else:
        assert (label_value >= _max_other(out, labels))[correct].all()
    # lowered, never raised
    assert (label_value <= z[rows, labels])[correct].all()


def test_v1_wrong_rows_are_zero() -> None:
    z, labels = _random()
    out = adjust_teacher_logits("rkd_v1", z, labels)
    wrong = z.argmax(dim=1) != labels
    assert wrong.any() and (out[wrong] == 0).all()


@pytest.mark.parametrize("method", ["rkd_v2", "rkd_v3"])
def test_wrong_rows_restored_where_the_rule_allows(method: str) -> None:
    z, labels = _random()
    out = adjust_teacher_logits(method, z, labels)
    rows = torch.arange(len(z))
    pred = z.argmax(dim=1)
    wrong = pred != labels
    # adding every other |z_j| lifts z[y] above z[p] exactly when the label gets restored
    budget = z.abs().sum(dim=1) - z[rows, labels].abs() - z[rows, pred].abs()
    can = wrong & (z[rows, labels] + budget > z[rows, pred])
    assert can.any() and (wrong & ~can).any()
    assert (out[rows, labels] > out[rows, pred])[can].all()
    if method == "rkd_v2":
        assert (out.argmax(dim=1) == labels)[can].all()
    assert (out[rows, labels] <= z[rows, pred])[wrong & ~can].all()
    assert (out[rows, pred] == z[rows, pred])[wrong].all()


def test_v4_keeps_the_argmax() -> None:
    z, labels = _random()
    out = adjust_teacher_logits("rkd_v4", z, labels)
    top = z.argmax(dim=1)
    assert (out[torch.arange(len(z)), top] >= _max_other(out, top)).all()
    assert (out.argmax(dim=1) == top).float().mean() > 0.9  # ties with s go to the lower index


@pytest.mark.parametrize("method", ADJUSTING)
def test_adjust_returns_new_tensor(method: str) -> None:
    z, labels = _random(n=20)
    before = z.clone()
    out = adjust_teacher_logits(method, z, labels)
    assert out is not z and out.data_ptr() != z.data_ptr()
    assert torch.equal(z, before)
    half = adjust_teacher_logits(method, z.half(), labels)
    assert half.dtype == torch.float16


@pytest.mark.parametrize("method", ADJUSTING)
def test_loss_is_vanilla_on_adjusted_logits(method: str) -> None:
    g = torch.Generator().manual_seed(7)
    student = torch.randn(30, 6, generator=g)
    z, labels = _random(n=30)
    adjusted = adjust_teacher_logits(method, z, labels)
    for alpha in (0.0, 0.6):
        ours = distillation_loss(method, student, z, labels, alpha=alpha, temperature=3.0)
        ref = distillation_loss("vanilla", student, adjusted, labels, alpha=alpha,
                                temperature=3.0)
        torch.testing.assert_close(ours, ref)


# --- a per-row loop reference, on logits that are exact in float32 (ties included) ----------


def _argmax(z: list[float]) -> int:
    return max(range(len(z)), key=lambda i: (z[i], -i))  # first of the largest


def _ref_lower(z: list[float], top: int) -> tuple[list[float], set[int]]:
    second = max((i for i in range(len(z)) if i != top), key=lambda i: (z[i], -i))
    s, out, used = z[second], list(z), set()
    for j in sorted(range(len(z)), key=lambda i: (z[i], i)):
        if j in (top, second):
            continue
        if out[top] - abs(z[j]) >= s:
            out[top] -= abs(z[j])
            used.add(j)
        else:
            break
    return out, used


def _ref_raise(z: list[float], y: int) -> tuple[list[float], set[int]]:
    p = _argmax(z)
    out, used = list(z), set()
    for j in sorted(range(len(z)), key=lambda i: (z[i], i)):
        if j in (y, p):
            continue
        if out[y] > z[p]:
            break
        out[y] += abs(z[j])
        used.add(j)
    return out, used


def _ref_adjust(method: str, z: list[float], y: int) -> list[float]:
    correct = _argmax(z) == y
    if method == "rkd_v4":
        return _ref_lower(z, _argmax(z))[0]
    if method == "rkd_v1":
        return _ref_lower(z, y)[0] if correct else [0.0] * len(z)
    out, used = _ref_lower(z, y) if correct else _ref_raise(z, y)
    if method == "rkd_v3":
        out = [0.0 if j in used else v for j, v in enumerate(out)]
    return out


@pytest.mark.parametrize("c", [2, 3, 7])
@pytest.mark.parametrize("method", ADJUSTING)
def test_matches_loop_reference(method: str, c: int) -> None:
    g = torch.Generator().manual_seed(c)
    z = torch.randint(-12, 13, (300, c), generator=g).float() / 4  # many ties, exact sums
    labels = torch.randint(0, c, (300,), generator=g)
    out = adjust_teacher_logits(method, z, labels)
    pairs = zip(z.tolist(), labels.tolist(), strict=True)
    expected = [_ref_adjust(method, row, y) for row, y in pairs]
    assert out.tolist() == expected
