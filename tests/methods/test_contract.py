"""The suite every registered method and feature method passes (parametrized over the
registries, so a new one, including one from a plugin, is tested without naming it here)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from method_values import bad_values, valid_params, variants
from torch import Tensor, nn

from kdtune.errors import KdtuneError
from kdtune.methods import (
    all_params,
    distillation_loss,
    feature_method_params,
    get_feature_method,
    get_method,
    list_feature_methods,
    list_methods,
    method_params,
    training_loss,
)
from kdtune.resolve import config_from_dict

METHODS = list_methods()
WITH_ALPHA = [m for m in METHODS if get_method(m).uses_alpha]
PER_SAMPLE = [m for m in METHODS if not get_method(m).batch_level]
VARIANTS = [(m, v) for m in METHODS for v in variants(m)]
PARAMS = [(m, n) for m in METHODS for n in method_params(m)]
BAD = [(m, n, v) for m, n in PARAMS for v in bad_values(method_params(m)[n])]


def _batch(n: int = 16, c: int = 5, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * 3, torch.randn(n, c, generator=g) * 3,
            torch.randint(0, c, (n,), generator=g))


def _ce(student: Tensor, labels: Tensor) -> Tensor:
    return nn.functional.cross_entropy(student.float(), labels)


def _cases() -> dict[str, tuple[Tensor, Tensor, Tensor, float]]:
    student, teacher, labels = _batch(n=32, c=10)
    signs = torch.where(torch.rand(32, 10, generator=torch.Generator().manual_seed(1)) > 0.5, 1, -1)
    peaked = nn.functional.one_hot(labels, 10).float() * 1000.0
    return {
        "random_T4": (student, teacher, labels, 4.0),
        "1e4_T0.5": (1e4 * signs, -1e4 * signs, labels, 0.5),
        "1e4_T20": (1e4 * signs, 1e4 * signs.flip(0), labels, 20.0),
        "1e4_agree_T0.5": (1e4 * signs, 1e4 * signs, labels, 0.5),
        "peaked_teacher_T1": (student, peaked, labels, 1.0),
        "peaked_opposite_T1": (-peaked, peaked, labels, 1.0),
        "all_zero_T3": (torch.zeros(32, 10), torch.zeros(32, 10), labels, 3.0),
        "one_row_T2": (student[:1], teacher[:1], labels[:1], 2.0),
        "half_T4": (student.half(), teacher.half(), labels, 4.0),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("method", "variant"), VARIANTS)
def test_scalar_float32_with_finite_gradients(method: str, variant: str, case: str) -> None:
    student, teacher, labels, t = CASES[case]
    params = variants(method)[variant]
    student = student.clone().requires_grad_(True)
    for alpha in (0.0, 0.5):
        loss = distillation_loss(method, student, teacher, labels, alpha=alpha, temperature=t,
                                 **params)
        assert loss.shape == () and loss.dtype == torch.float32
        assert torch.isfinite(loss), (method, variant, case, alpha, loss)
        (grad,) = torch.autograd.grad(loss, student)
        assert grad.shape == student.shape and torch.isfinite(grad).all()


@pytest.mark.parametrize("method", WITH_ALPHA)
def test_alpha_one_is_cross_entropy(method: str) -> None:
    student, teacher, labels = _batch()
    loss = distillation_loss(method, student, teacher, labels, alpha=1.0, temperature=4.0,
                             **valid_params(method))
    torch.testing.assert_close(loss, _ce(student, labels))


@pytest.mark.parametrize("method", [m for m in METHODS if not get_method(m).uses_alpha])
def test_without_alpha_the_loss_is_cross_entropy(method: str) -> None:
    student, teacher, labels = _batch()
    for alpha in (0.0, 0.3):
        loss = distillation_loss(method, student, teacher, labels, alpha=alpha,
                                 temperature=4.0, **valid_params(method))
        torch.testing.assert_close(loss, _ce(student, labels))


@pytest.mark.parametrize(("method", "variant"), [(m, v) for m, v in VARIANTS if m in WITH_ALPHA])
def test_linear_in_alpha_and_soft_term_is_not_trivial(method: str, variant: str) -> None:
    """alpha * CE + (1 - alpha) * soft, where soft (alpha 0) is not CE."""
    student, teacher, labels = _batch()
    params = variants(method)[variant]
    soft = distillation_loss(method, student, teacher, labels, alpha=0.0, temperature=4.0,
                             **params)
    mixed = distillation_loss(method, student, teacher, labels, alpha=0.3, temperature=4.0,
                              **params)
    torch.testing.assert_close(mixed, 0.3 * _ce(student, labels) + 0.7 * soft)
    assert not torch.isclose(soft, _ce(student, labels))


@pytest.mark.parametrize("method", WITH_ALPHA)
@pytest.mark.parametrize("scale", [0.25, 1.0])
def test_warm_up_scales_the_soft_term_only(method: str, scale: float) -> None:
    student, teacher, labels = _batch()
    params = valid_params(method)
    soft = distillation_loss(method, student, teacher, labels, alpha=0.0, temperature=2.0,
                             **params)
    loss = training_loss(method, student, teacher, labels, alpha=0.4, temperature=2.0,
                         params=params, kd_scale=scale)
    torch.testing.assert_close(loss, 0.4 * _ce(student, labels) + scale * 0.6 * soft)


@pytest.mark.parametrize(("method", "variant"), VARIANTS)
def test_deterministic_and_inputs_untouched(method: str, variant: str) -> None:
    student, teacher, labels = _batch(seed=4)
    copies = (student.clone(), teacher.clone(), labels.clone())
    params = variants(method)[variant]
    a = distillation_loss(method, student, teacher, labels, alpha=0.2, temperature=3.0, **params)
    b = distillation_loss(method, student, teacher, labels, alpha=0.2, temperature=3.0, **params)
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip((student, teacher, labels), copies, strict=True))


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_per_sample_methods_average_independent_rows(method: str) -> None:
    """A per-sample soft term: the batch loss is the mean of the one-row losses."""
    student, teacher, labels = _batch(n=12, c=6, seed=3)
    params = valid_params(method)
    batch = distillation_loss(method, student, teacher, labels, alpha=0.2, temperature=4.0,
                              **params)
    rows = [distillation_loss(method, student[i:i + 1], teacher[i:i + 1], labels[i:i + 1],
                              alpha=0.2, temperature=4.0, **params) for i in range(12)]
    torch.testing.assert_close(batch, torch.stack(rows).mean())


@pytest.mark.parametrize("method", METHODS)
def test_teacher_is_not_differentiated(method: str) -> None:
    student, teacher, labels = _batch()
    teacher = teacher.clone().requires_grad_(True)
    loss = distillation_loss(method, student.requires_grad_(True), teacher, labels, alpha=0.5,
                             temperature=4.0, **valid_params(method))
    loss.backward()
    assert teacher.grad is None


@pytest.mark.parametrize("method", METHODS)
def test_teacher_required_or_ignored(method: str) -> None:
    student, teacher, labels = _batch()
    params = valid_params(method)
    if get_method(method).needs_teacher:
        with pytest.raises(KdtuneError, match="needs teacher logits; methods without a teacher"):
            distillation_loss(method, student, None, labels, alpha=0.5, temperature=4.0,
                              **params)
    else:
        without = distillation_loss(method, student, None, labels, alpha=0.5, temperature=4.0,
                                    **params)
        with_one = distillation_loss(method, student, teacher, labels, alpha=0.5,
                                     temperature=4.0, **params)
        assert torch.equal(without, with_one)


@pytest.mark.parametrize("method", METHODS)
def test_half_inputs_computed_in_float32(method: str) -> None:
    student, teacher, labels = _batch(n=8, c=4)
    params = valid_params(method)
    low = distillation_loss(method, student.half(), teacher.half(), labels, alpha=0.4,
                            temperature=4.0, **params)
    full = distillation_loss(method, student.half().float(), teacher.half().float(), labels,
                             alpha=0.4, temperature=4.0, **params)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_omitted_parameters_take_their_defaults(method: str) -> None:
    student, teacher, labels = _batch()
    required = valid_params(method)
    defaults = {n: p.default for n, p in method_params(method).items() if not p.required}
    implicit = distillation_loss(method, student, teacher, labels, alpha=0.5, temperature=2.0,
                                 **required)
    explicit = distillation_loss(method, student, teacher, labels, alpha=0.5, temperature=2.0,
                                 **required, **defaults)
    assert torch.equal(implicit, explicit)
    for name in required:
        with pytest.raises(KdtuneError, match=rf"'{method}' needs .*{name}"):
            distillation_loss(method, student, teacher, labels, alpha=0.5, temperature=2.0,
                              **{k: v for k, v in required.items() if k != name})


@pytest.mark.parametrize(("method", "name", "value"), BAD,
                         ids=[f"{m}-{n}-{v}" for m, n, v in BAD])
def test_bad_parameter_values_are_one_line_errors(method: str, name: str, value: object) -> None:
    student, teacher, labels = _batch()
    param = method_params(method)[name]
    with pytest.raises(KdtuneError) as info:
        distillation_loss(method, student, teacher, labels, alpha=0.5, temperature=2.0,
                          **{**valid_params(method), name: value})
    msg = str(info.value)
    assert msg == f"{name} {value!r} must be {param.allowed()}"
    assert "\n" not in msg


@pytest.mark.parametrize("method", METHODS)
def test_unknown_parameter_names_the_methods_parameters(method: str) -> None:
    student, teacher, labels = _batch()
    with pytest.raises(KdtuneError) as info:
        distillation_loss(method, student, teacher, labels, alpha=0.5, temperature=2.0,
                          **valid_params(method), no_such_knob=1.0)
    own = ", ".join(method_params(method)) or "(none)"
    assert str(info.value) == (f"method {method!r} does not take 'no_such_knob'; its "
                               f"parameters: {own}")


@pytest.mark.parametrize("method", [m for m in METHODS if get_method(m).uses_temperature])
@pytest.mark.parametrize("t", [0, -1.0, float("nan")])
def test_temperature_must_be_positive(method: str, t: float) -> None:
    student, teacher, labels = _batch()
    with pytest.raises(KdtuneError, match=rf"temperature {t} must be > 0"):
        distillation_loss(method, student, teacher, labels, alpha=0.5, temperature=t,
                          **valid_params(method))


# -- every registered method and feature method as a config, a flag and a docs row ----------
FEATURE_METHODS = list_feature_methods()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_becomes_a_config_and_back(method: str) -> None:
    spec = get_method(method)
    cfg = config_from_dict({"method": method, **valid_params(method)})
    assert config_from_dict(cfg.to_dict()) == cfg
    assert set(cfg.method_params) == set(method_params(method))
    assert spec.formula and spec.paper and spec.kind  # its row in docs/methods.md
    for p in spec.params:
        assert p.help, f"{method}: parameter {p.name} has no help for its --{p.name} flag"


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_every_feature_method_becomes_a_config_and_back(name: str) -> None:
    spec = get_feature_method(name)
    cfg = config_from_dict({"method": "none", "feature_method": name})
    assert config_from_dict(cfg.to_dict()) == cfg
    assert set(cfg.method_params) == set(feature_method_params(name))
    assert all(cfg.method_params[p.name] is not None for p in spec.params)  # all defaulted
    assert spec.formula and spec.paper and spec.kind
    for key in all_params():  # reads its own parameters among the feature methods' only
        if key in feature_method_params(name):
            assert spec.reads(key)
    with pytest.raises(KdtuneError, match=f"feature method {name!r} does not take 'xyz'"):
        spec.resolve({"xyz": 1})


@pytest.mark.parametrize(("kind", "names", "get"), [
    ("method", METHODS, get_method),
    ("feature method", FEATURE_METHODS, get_feature_method),
])
def test_unknown_names_say_did_you_mean(kind: str, names: list[str], get: Any) -> None:
    for name in names:
        assert get(name).name == name
        with pytest.raises(KdtuneError) as info:
            get(name + "x")
        assert str(info.value).startswith(f"unknown {kind} {name + 'x'!r}; choose one of: ")
        assert f"did you mean {name!r}" in str(info.value)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_function_takes_what_its_spec_declares(method: str) -> None:
    """The built-in functions are named in kdtune.methods.catalog and imported on first use:
    each exists and takes the parameters its spec declares."""
    get_method(method).check_signature()


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_every_feature_function_takes_what_its_spec_declares(name: str) -> None:
    get_feature_method(name).check_signature()
