"""The feature methods: the pure terms' contract (parametrized over the feature registry, so a
new entry is tested automatically), hand-computed small cases of each formula, and the
config/CLI side of ``feature_method``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from kdtune.errors import KdtuneError
from kdtune.methods import (
    all_params,
    feature_loss,
    feature_method_params,
    get_feature_method,
    list_feature_methods,
)
from kdtune.methods.features import parse_stages, pure_feature_methods, stage_pairs
from kdtune.resolve import config_from_dict, replace_config

PURE = pure_feature_methods()


def _inputs(name: str, seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """Matched student/teacher lists for ``name``: two stage-map pairs, or one embedding."""
    g = torch.Generator().manual_seed(seed)
    if get_feature_method(name).inputs == "embedding":
        return [torch.randn(6, 5, generator=g)], [torch.randn(6, 7, generator=g)]
    adapted = get_feature_method(name).adapt  # adapters already applied: equal shapes
    s = [torch.randn(6, 4, 4, 4, generator=g), torch.randn(6, 8, 2, 2, generator=g)]
    t = ([torch.randn(6, 4, 4, 4, generator=g), torch.randn(6, 8, 2, 2, generator=g)]
         if adapted else
         [torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 5, 2, 2, generator=g)])
    return s, t


def test_registry_lists_the_methods_with_their_defaults() -> None:
    assert list_feature_methods()[:6] == ["none", "fitnet", "at", "sp", "relational", "pkt"]
    weights = {n: get_feature_method(n).defaults["feature_weight"]
               for n in list_feature_methods() if n != "none"}
    assert weights == {"fitnet": 100, "at": 1000, "sp": 3000, "relational": 1, "pkt": 30000,
                       **({"crd": 0.8} if "crd" in weights else {})}
    assert {"feature_weight", "stages", "p", "distance_weight", "angle_weight"} <= set(
        all_params())


@pytest.mark.parametrize("name", PURE)
def test_scalar_float32_finite_gradients_teacher_untouched(name: str) -> None:
    s, t = _inputs(name)
    s = [f.requires_grad_() for f in s]
    t = [f.requires_grad_() for f in t]
    before = [f.detach().clone() for f in (*s, *t)]
    loss = feature_loss(name, s, t)
    assert loss.shape == () and loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert loss.item() > 0
    loss.backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in s)
    assert all(f.grad is None for f in t)  # the teacher is a fixed target
    assert all(torch.equal(a, b) for a, b in zip(before, (*s, *t), strict=True))


@pytest.mark.parametrize("name", PURE)
def test_deterministic_zero_on_equal_features_half_in_float32(name: str) -> None:
    s, t = _inputs(name)
    assert torch.equal(feature_loss(name, s, t), feature_loss(name, s, t))
    same = feature_loss(name, s, [f.clone() for f in s]).item()
    assert same == pytest.approx(0.0, abs=1e-5)
    half = feature_loss(name, [f.half() for f in s], [f.half() for f in t])
    assert half.dtype == torch.float32 and math.isfinite(half.item())


@pytest.mark.parametrize("name", PURE)
def test_parameters_defaults_and_errors(name: str) -> None:
    s, t = _inputs(name)
    defaults = {k: get_feature_method(name).defaults.get(k, p.default)
                for k, p in feature_method_params(name).items()}
    assert torch.equal(feature_loss(name, s, t), feature_loss(name, s, t, **defaults))
    with pytest.raises(KdtuneError, match="does not take 'nckd_weight'") as info:
        feature_loss(name, s, t, nckd_weight=1.0)
    assert "\n" not in str(info.value)
    with pytest.raises(KdtuneError, match="feature_weight"):
        feature_loss(name, s, t, feature_weight=-1)
    with pytest.raises(KdtuneError, match="equally long"):
        feature_loss(name, s, [])


@pytest.mark.parametrize("name", PURE)
def test_feature_params_are_flat_config_keys(name: str) -> None:
    cfg = config_from_dict({"feature_method": name, "feature_weight": 7})
    assert cfg.method_params["feature_weight"] == 7.0
    assert config_from_dict(cfg.to_dict()) == cfg
    assert replace_config(cfg, method="dkd").method_params["feature_weight"] == 7.0
    assert "feature_weight" not in replace_config(cfg, feature_method="none").method_params


def test_fitnet_by_hand() -> None:
    s = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])]
    t = [torch.zeros(1, 2), torch.zeros(1, 2)]
    # pair 1: (1 + 4) / 2 = 2.5; pair 2: 16 / 2 = 8; mean 5.25
    assert feature_loss("fitnet", s, t).item() == pytest.approx(5.25)


def test_at_by_hand() -> None:
    s = torch.tensor([2.0, 0.0]).reshape(1, 1, 1, 2)   # a = normalize([4, 0]) = [1, 0]
    t = torch.tensor([0.0, -3.0]).reshape(1, 1, 1, 2)  # pow, not abs: [0, 9] -> [0, 1]
    assert feature_loss("at", [s], [t]).item() == pytest.approx(1.0)   # (1 + 1) / 2
    assert feature_loss("at", [s], [t], p=1).item() == pytest.approx(1.0)  # [1,0] vs [0,-1]
    # a 2x2 teacher map is pooled to the student's 1x2: [[1, 3], [1, 3]] -> [1, 3]
    t2 = torch.tensor([[1.0, 3.0], [1.0, 3.0]]).reshape(1, 1, 2, 2)
    s2 = torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    assert feature_loss("at", [s2], [t2]).item() == pytest.approx(0.0, abs=1e-7)
    # the sum over pairs
    assert feature_loss("at", [s, s], [t, t]).item() == pytest.approx(2.0)


def test_sp_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G = I
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G = ones -> rows [1/sqrt2, 1/sqrt2]
    expected = (4 - 2 * math.sqrt(2)) / 4
    assert feature_loss("sp", [s], [t]).item() == pytest.approx(expected)
    assert feature_loss("sp", [s, s], [t, t]).item() == pytest.approx(2 * expected)


def test_relational_distance_by_hand() -> None:
    s = torch.tensor([[0.0], [1.0], [3.0]])  # distances / 2: off-diagonal .5, 1.5, 1
    t = torch.tensor([[0.0], [2.0], [4.0]])  # distances / (8/3): .75, 1.5, .75
    # |diff| .25 at four entries: smooth-L1 0.5 * .25**2 each, over 9 entries; angles agree
    d = 4 * 0.5 * 0.25**2 / 9
    got = feature_loss("relational", [s], [t], distance_weight=1, angle_weight=0)
    assert got.item() == pytest.approx(d)
    assert feature_loss("relational", [s], [t]).item() == pytest.approx(25 * d)


def test_relational_angle_by_hand() -> None:
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    # differing cosines: 0 vs 1 (twice), 1/sqrt2 vs -1 (twice), 1/sqrt2 vs 1 (twice):
    # smooth-L1 sums to 3.5 over the 27 entries
    got = feature_loss("relational", [s], [t], distance_weight=0, angle_weight=1)
    assert got.item() == pytest.approx(3.5 / 27)


def test_pkt_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # P_s rows [2/3, 1/3], [1/3, 2/3]
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # P_t all 1/2
    assert feature_loss("pkt", [s], [t]).item() == pytest.approx(math.log(1.125) / 4, rel=1e-5)


def test_stage_selection_pairs_from_the_last_backwards() -> None:
    assert parse_stages("last") == [1] and parse_stages("all") == "all"
    assert stage_pairs("last", 3, 4) == [(2, 3)]
    assert stage_pairs("all", 3, 4) == [(0, 1), (1, 2), (2, 3)]
    assert stage_pairs("1,2", 3, 3) == [(1, 1), (2, 2)]
    with pytest.raises(KdtuneError, match="at most 3 pairs"):
        stage_pairs("4", 3, 5)
    with pytest.raises(KdtuneError, match="must be last, all"):
        config_from_dict({"feature_method": "at", "stages": "first"})


def test_config_errors_are_one_line() -> None:
    with pytest.raises(KdtuneError, match=r"unknown feature method 'fitnets'.*'fitnet'"):
        config_from_dict({"feature_method": "fitnets"})
    with pytest.raises(KdtuneError, match="does not take 'feature_weight'"):
        config_from_dict({"feature_weight": 3})
    with pytest.raises(KdtuneError, match="neither method 'vanilla' nor feature method 'pkt'"):
        config_from_dict({"feature_method": "pkt", "p": 2})
    with pytest.raises(KdtuneError, match="p 5 must be an integer in"):
        config_from_dict({"feature_method": "at", "p": 5})
    with pytest.raises(KdtuneError, match=r"needs \(N, C, H, W\) feature maps"):
        feature_loss("at", [torch.ones(2, 3)], [torch.ones(2, 3)])


def test_crd_is_stateful_and_by_hand() -> None:
    from kdtune.methods.crd import CRDTerm

    with pytest.raises(KdtuneError, match="stateful"):
        feature_loss("crd", [torch.ones(2, 3)], [torch.ones(2, 3)])
    spec = get_feature_method("crd")
    params = spec.resolve({"crd_negatives": 4096})
    torch.manual_seed(0)
    term = CRDTerm(spec, [torch.Size([4, 3])], [torch.Size([4, 5])], params, num_train=10)
    assert term.k == 9  # capped by the set size: every other sample
    idx = torch.tensor([0, 7])
    neg = term.negatives(idx)
    assert neg.shape == (2, 9) and not (neg == idx[:, None]).any()
    assert ((neg >= 0) & (neg < 10)).all()
    # NCE with noise probability K/n = 0.9: scores 0.9 everywhere give -log(1/2) per term
    p = torch.full((3, 10), 0.9)
    assert term.nce(p).item() == pytest.approx(10 * math.log(2), rel=1e-5)
    before = term.memory_s.clone()
    s, t = torch.randn(2, 3), torch.randn(2, 5)
    loss = term([s], [t], idx)
    assert math.isfinite(loss.item()) and (term.z > 0).all()
    z = term.z.clone()
    term([s], [t], idx)
    assert torch.equal(term.z, z)  # estimated on the first batch only
    v_s = torch.nn.functional.normalize(term.embed_s(s), dim=1).detach()
    once = torch.nn.functional.normalize(before[idx] * 0.5 + v_s * 0.5, dim=1)
    twice = torch.nn.functional.normalize(once * 0.5 + v_s * 0.5, dim=1)
    assert torch.allclose(term.memory_s[idx], twice, atol=1e-6)
    assert torch.equal(term.memory_s[2:7], before[2:7])
