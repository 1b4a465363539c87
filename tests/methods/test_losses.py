"""Tests for kdtune.methods: the shared terms, the original methods by hand, and bad arguments.

The suite every registered method passes is ``test_contract.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from kdtune.errors import KdtuneError
from kdtune.methods import (
    adjust_teacher_logits,
    distillation_loss,
    get_method,
    list_methods,
)
from kdtune.methods.two_temperature import sample_temperatures
from kdtune.methods.vanilla import kl_t, spherical_logits

METHODS = list_methods()
ADJUSTING = [m for m in METHODS if get_method(m).adjusts_teacher]
NOT_ADJUSTING = [m for m in METHODS if not get_method(m).adjusts_teacher]


def _batch(n: int = 16, c: int = 5, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c, generator=g) * 3
    teacher = torch.randn(n, c, generator=g) * 3
    labels = torch.randint(0, c, (n,), generator=g)
    return student, teacher, labels


def _ce(student: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(student.float(), labels)


def _ref_kl(p: list[float], z_s: list[float], t: float) -> float:
    """``T**2 * sum p (log p - log_softmax(z_s / T))`` in plain Python."""
    top = max(z / t for z in z_s)
    log_norm = top + math.log(sum(math.exp(z / t - top) for z in z_s))
    pairs = zip(p, z_s, strict=True)
    return t**2 * sum(pc * (math.log(pc) - (z / t - log_norm)) for pc, z in pairs if pc > 0)


def _ref_softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _ref_ce(z_s: list[float], y: int) -> float:
    return math.log(sum(math.exp(z) for z in z_s)) - z_s[y]


def test_none_needs_no_teacher_and_ignores_alpha_and_temperature() -> None:
    student, _, labels = _batch()
    loss = distillation_loss("none", student, None, labels, alpha=0.3, temperature=0)
    torch.testing.assert_close(loss, _ce(student, labels))


# --- shared terms and the vanilla family ---------------------------------------------------


@pytest.mark.parametrize("t", [1.0, 4.0, 0.5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_vanilla_matches_kl_div_reference(alpha: float, t: float) -> None:
    student, teacher, labels = _batch(n=20, c=7, seed=5)
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student / t, dim=1),
        nn.functional.softmax(teacher / t, dim=1),
        reduction="batchmean",
    ) * t**2
    expected = alpha * nn.functional.cross_entropy(student, labels) + (1 - alpha) * soft
    loss = distillation_loss("vanilla", student, teacher, labels, alpha=alpha, temperature=t)
    torch.testing.assert_close(loss, expected)


def test_vanilla_by_hand() -> None:
    z_s, z_t, t = [1.0, 0.0, -1.0], [2.0, 0.5, 0.0], 2.0
    expected = 0.25 * _ref_ce(z_s, 1) + 0.75 * _ref_kl(_ref_softmax(z_t, t), z_s, t)
    loss = distillation_loss("vanilla", torch.tensor([z_s]), torch.tensor([z_t]),
                             torch.tensor([1]), alpha=0.25, temperature=t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_kl_t_zero_log_zero() -> None:
    """Classes with p = 0 add nothing, even where the student's probability underflows."""
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    z_s = torch.tensor([[0.0, 0.0, 200.0], [0.0, 0.0, -1e30]])
    kl = kl_t(p, z_s, 2.0)
    assert torch.isfinite(kl).all()
    # row 0: 4 * (0 - log_softmax([0, 0, 100])_0) = 4 * log(2 + e^100) ~= 400
    assert kl[0].item() == pytest.approx(400.0, rel=1e-6)
    # row 1: the student matches p on the classes that matter, so KL = 0
    assert kl[1].item() == pytest.approx(0.0, abs=1e-6)


def test_spherical_rescaling_by_hand() -> None:
    student = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    teacher = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 6.0]])  # norms 5 and 6: l = 5.5
    s, t = spherical_logits(student, teacher)
    torch.testing.assert_close(s, torch.tensor([[5.5, 0.0, 0.0], [0.0, 5.5, 0.0]]))
    torch.testing.assert_close(t, torch.tensor([[3.3, 4.4, 0.0], [0.0, 0.0, 5.5]]))
    labels = torch.tensor([1, 2])
    temp = 2.0
    pairs = zip(s.tolist(), t.tolist(), strict=True)
    soft = [_ref_kl(_ref_softmax(tt, temp), ss, temp) for ss, tt in pairs]
    pairs = zip(student.tolist(), labels.tolist(), strict=True)
    hard = [_ref_ce(zs, y) for zs, y in pairs]  # CE on the raw logits
    expected = sum(0.4 * h + 0.6 * k for h, k in zip(hard, soft, strict=True)) / 2
    loss = distillation_loss("spherical", student, teacher, labels, alpha=0.4, temperature=temp)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_spherical_is_vanilla_on_rescaled_logits() -> None:
    student, teacher, labels = _batch()
    s, t = spherical_logits(student, teacher)
    ours = distillation_loss("spherical", student, teacher, labels, alpha=0.0, temperature=3.0)
    ref = distillation_loss("vanilla", s, t, labels, alpha=0.0, temperature=3.0)
    torch.testing.assert_close(ours, ref)


def test_two_temperature_per_sample_by_hand() -> None:
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 3.0]])
    labels = torch.tensor([0, 0, 2])  # right, wrong, right
    student = torch.tensor([[0.5, 0.0, -0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t = sample_temperatures(teacher, labels, t_right=1.5, t_wrong=4.0)
    torch.testing.assert_close(t, torch.tensor([1.5, 4.0, 1.5]))
    expected = sum(
        0.2 * _ref_ce(zs, y) + 0.8 * _ref_kl(_ref_softmax(zt, ti), zs, ti)
        for zs, zt, y, ti in zip(
            student.tolist(), teacher.tolist(), labels.tolist(), t.tolist(), strict=True
        )
    ) / 3
    loss = distillation_loss("two_temperature", student, teacher, labels, alpha=0.2,
                             temperature=99.0, t_right=1.5, t_wrong=4.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # equal temperatures reduce it to vanilla
    same = distillation_loss("two_temperature", student, teacher, labels, alpha=0.2,
                             temperature=1.0, t_right=3.0, t_wrong=3.0)
    vanilla = distillation_loss("vanilla", student, teacher, labels, alpha=0.2, temperature=3.0)
    torch.testing.assert_close(same, vanilla)


# --- bad arguments -------------------------------------------------------------------------


def _call(method: str = "vanilla", **kw: object) -> Tensor:
    student, teacher, labels = _batch(n=4, c=3)
    args: dict[str, object] = {"alpha": 0.5, "temperature": 4.0} | kw
    return distillation_loss(method, student, teacher, labels, **args)  # type: ignore[arg-type]


def test_unknown_method_lists_the_methods() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'rkd5'; choose one of: none, vanilla,"):
        _call("rkd5")
    with pytest.raises(KdtuneError, match="earth_mover"):
        get_method("rkd5")
    with pytest.raises(KdtuneError, match="did you mean 'vanilla'"):
        adjust_teacher_logits("vanila", torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match=rf"alpha {alpha} is outside \[0, 1\]"):
        _call(alpha=alpha)


@pytest.mark.parametrize("alpha", ["0.5x", None, True])
def test_alpha_not_a_number(alpha: object) -> None:
    with pytest.raises(ValueError, match=r"alpha .* must be a number in \[0, 1\]"):
        _call(alpha=alpha)


@pytest.mark.parametrize("method", [m for m in METHODS if get_method(m).uses_temperature])
@pytest.mark.parametrize("t", [0, -1.0, float("nan")])
def test_temperature_must_be_positive(method: str, t: float) -> None:
    with pytest.raises(ValueError, match=rf"temperature {t} must be > 0"):
        _call(method, temperature=t)


def test_temperature_must_be_finite() -> None:
    with pytest.raises(ValueError, match="temperature inf must be finite"):
        _call(temperature=float("inf"))


@pytest.mark.parametrize(
    ("kw", "missing"), [({}, "t_right and t_wrong"), ({"t_right": 2.0}, "t_wrong"),
                        ({"t_wrong": 2.0}, "t_right"), ({"t_right": None, "t_wrong": 3.0},
                                                         "t_right")]
)
def test_two_temperature_needs_both(kw: dict[str, float], missing: str) -> None:
    with pytest.raises(ValueError, match=rf"'two_temperature' needs {missing} \(t_"):
        _call("two_temperature", **kw)


@pytest.mark.parametrize("which", ["t_right", "t_wrong"])
@pytest.mark.parametrize("value", [0, -2.0])
def test_two_temperature_values_positive(which: str, value: float) -> None:
    kw = {"t_right": 2.0, "t_wrong": 3.0, which: value}
    with pytest.raises(ValueError, match=rf"{which} {value} must be a number > 0"):
        _call("two_temperature", **kw)


def test_temperature_ignored_where_unused() -> None:
    _call("two_temperature", temperature=0, t_right=1.0, t_wrong=2.0)
    _call("none", temperature=-1.0, alpha=7)  # none reads neither


def test_parameters_of_other_methods_are_refused() -> None:
    with pytest.raises(KdtuneError, match="method 'vanilla' does not take 't_right'; its "
                                          "parameters: logit_standardization"):
        _call("vanilla", t_right=2.0)


def test_shape_errors() -> None:
    student, teacher, labels = _batch(n=4, c=3)
    with pytest.raises(ValueError, match="do not match"):
        distillation_loss("vanilla", student, teacher[:, :2], labels, alpha=0.5, temperature=1)
    with pytest.raises(ValueError, match="labels must be an integer tensor of shape"):
        distillation_loss("vanilla", student, teacher, labels[:3], alpha=0.5, temperature=1)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        distillation_loss("vanilla", student, teacher, labels.float(), alpha=0.5, temperature=1)
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        distillation_loss("vanilla", student[0], teacher[0], labels, alpha=0.5, temperature=1)
    with pytest.raises(ValueError, match="empty batch"):
        distillation_loss("none", student[:0], None, labels[:0], alpha=0.5, temperature=1)


@pytest.mark.parametrize("method", NOT_ADJUSTING)
def test_adjust_refused_for_other_methods(method: str) -> None:
    with pytest.raises(ValueError, match="methods that do: rkd_v1, rkd_v2, rkd_v3, rkd_v4"):
        adjust_teacher_logits(method, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
