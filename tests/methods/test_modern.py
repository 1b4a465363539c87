"""dkd, dist, logit standardization and tf_kd against small cases computed in plain Python."""

from __future__ import annotations

import math

import pytest
import torch

from kdtune.methods import distillation_loss

Z_S = [[1.0, 0.0, -1.0, 0.5], [0.2, 2.0, -0.3, 0.1], [-1.0, 0.5, 1.5, 0.0]]
Z_T = [[2.0, 0.5, 0.0, -0.5], [0.0, 1.0, 1.5, -1.0], [0.3, -0.2, 2.5, 0.4]]
Y = [0, 2, 2]  # the teacher is wrong on row 1


def softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True) if a > 0)


def ce(z: list[float], y: int) -> float:
    return -math.log(softmax(z)[y])


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def loss(method: str, alpha: float, t: float, **params: object) -> float:
    return distillation_loss(method, torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y),
                             alpha=alpha, temperature=t, **params).item()


def ref_dkd(zs: list[float], zt: list[float], y: int, t: float, a: float, b: float) -> float:
    ps, pt = softmax(zs, t), softmax(zt, t)
    tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    others = [c for c in range(len(zs)) if c != y]
    nckd = kl(softmax([zt[c] for c in others], t), softmax([zs[c] for c in others], t))
    return t**2 * (a * tckd + b * nckd)


@pytest.mark.parametrize(("t", "a", "b"), [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0), (2.0, 0.0, 1.0)])
def test_dkd_by_hand(t: float, a: float, b: float) -> None:
    soft = mean([ref_dkd(zs, zt, y, t, a, b) for zs, zt, y in zip(Z_S, Z_T, Y, strict=True)])
    hard = mean([ce(zs, y) for zs, y in zip(Z_S, Y, strict=True)])
    expected = 0.3 * hard + 0.7 * soft
    assert loss("dkd", 0.3, t, tckd_weight=a, nckd_weight=b) == pytest.approx(expected,
                                                                               rel=1e-5)


def test_dkd_defaults_are_1_and_8() -> None:
    assert loss("dkd", 0.0, 4.0) == pytest.approx(loss("dkd", 0.0, 4.0, tckd_weight=1,
                                                       nckd_weight=8), rel=1e-7)
    assert loss("dkd", 0.0, 4.0) != pytest.approx(loss("dkd", 0.0, 4.0, nckd_weight=7))


def test_dkd_with_equal_weights_is_vanilla() -> None:
    """KL = TCKD + (1 - p_t[y]) NCKD: with one row where p_t[y] ~ 0 the NCKD weight is moot."""
    z_s, z_t, y = torch.tensor([[0.3, 1.0, -2.0]]), torch.tensor([[-30.0, 1.0, 0.5]]), [0]
    dkd = distillation_loss("dkd", z_s, z_t, torch.tensor(y), alpha=0.0, temperature=1.0,
                            tckd_weight=1.0, nckd_weight=1.0)
    vanilla = distillation_loss("vanilla", z_s, z_t, torch.tensor(y), alpha=0.0,
                                temperature=1.0)
    torch.testing.assert_close(dkd, vanilla)


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = mean(a), mean(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    num = sum(x * y for x, y in zip(da, db, strict=True))
    return num / (math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(y * y for y in db)) + 1e-8)


@pytest.mark.parametrize(("t", "beta", "gamma"), [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5),
                                                  (2.0, 0.0, 3.0)])
def test_dist_by_hand(t: float, beta: float, gamma: float) -> None:
    ps = [softmax(z, t) for z in Z_S]
    pt = [softmax(z, t) for z in Z_T]
    inter = 1 - mean([pearson(a, b) for a, b in zip(ps, pt, strict=True)])
    cols = range(len(Z_S[0]))
    intra = 1 - mean([pearson([r[c] for r in ps], [r[c] for r in pt]) for c in cols])
    soft = t**2 * (beta * inter + gamma * intra)
    hard = mean([ce(zs, y) for zs, y in zip(Z_S, Y, strict=True)])
    expected = 0.25 * hard + 0.75 * soft
    got = loss("dist", 0.25, t, dist_beta=beta, dist_gamma=gamma)
    assert got == pytest.approx(expected, rel=1e-5)


def test_dist_is_zero_when_the_student_matches() -> None:
    z = torch.tensor(Z_T)
    soft = distillation_loss("dist", z, z, torch.tensor(Y), alpha=0.0, temperature=2.0)
    assert soft.item() == pytest.approx(0.0, abs=1e-4)  # eps 1e-8 against small norms


def standardize(z: list[float]) -> list[float]:
    m = mean(z)
    sd = math.sqrt(sum((x - m) ** 2 for x in z) / (len(z) - 1))  # unbiased, as torch.std
    return [(x - m) / (1e-7 + sd) for x in z]


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_vanilla_with_logit_standardization_by_hand(t: float) -> None:
    soft = mean([t**2 * kl(softmax(standardize(zt), t), softmax(standardize(zs), t))
                 for zs, zt in zip(Z_S, Z_T, strict=True)])
    hard = mean([ce(zs, y) for zs, y in zip(Z_S, Y, strict=True)])  # CE on the raw logits
    expected = 0.4 * hard + 0.6 * soft
    got = loss("vanilla", 0.4, t, logit_standardization=True)
    assert got == pytest.approx(expected, rel=1e-5)
    assert loss("vanilla", 0.4, t) != pytest.approx(got)


def test_dkd_with_logit_standardization_by_hand() -> None:
    soft = mean([ref_dkd(standardize(zs), standardize(zt), y, 2.0, 1.0, 8.0)
                 for zs, zt, y in zip(Z_S, Z_T, Y, strict=True)])
    hard = mean([ce(zs, y) for zs, y in zip(Z_S, Y, strict=True)])
    expected = 0.5 * hard + 0.5 * soft
    assert loss("dkd", 0.5, 2.0, logit_standardization=True) == pytest.approx(expected,
                                                                               rel=1e-5)


def test_logit_standardization_ignores_shift_and_scale_of_the_teacher() -> None:
    z_s, z_t, y = torch.tensor(Z_S), torch.tensor(Z_T), torch.tensor(Y)
    a = distillation_loss("vanilla", z_s, z_t, y, alpha=0.0, temperature=2.0,
                          logit_standardization=True)
    b = distillation_loss("vanilla", z_s, 5.0 * z_t + 3.0, y, alpha=0.0, temperature=2.0,
                          logit_standardization=True)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("t", "peak"), [(1.0, 0.9), (4.0, 0.6), (2.0, 1.0)])
def test_tf_kd_by_hand(t: float, peak: float) -> None:
    c = len(Z_S[0])
    soft = []
    for zs, y in zip(Z_S, Y, strict=True):
        virtual = [peak if k == y else (1 - peak) / (c - 1) for k in range(c)]  # not softened
        soft.append(t**2 * kl(virtual, softmax(zs, t)))
    hard = mean([ce(zs, y) for zs, y in zip(Z_S, Y, strict=True)])
    expected = 0.2 * hard + 0.8 * mean(soft)
    got = distillation_loss("tf_kd", torch.tensor(Z_S), None, torch.tensor(Y), alpha=0.2,
                            temperature=t, tf_peak=peak).item()
    assert got == pytest.approx(expected, rel=1e-5)
