"""The registry: registering a method with its own hyper-parameter reaches config, CLI and
search-space validation with no edit under ``kdtune/``; names are global; unregistering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor

from kdtune.cli import main
from kdtune.errors import KdtuneError
from kdtune.methods import (
    Param,
    all_params,
    distillation_loss,
    get_method,
    list_methods,
    method_params,
    register_method,
    unregister_method,
)
from kdtune.methods.catalog import LOGIT_STANDARDIZATION
from kdtune.methods.vanilla import kl_t, soft_targets
from kdtune.resolve import config_from_dict
from kdtune.tune.space import load_space

GAIN = Param("kd_gain", float, 1.0, low=0, high=10, help="multiplies the soft term")


@pytest.fixture
def gain_kd() -> Iterator[str]:
    """A method registered by the test: vanilla's term times its own ``kd_gain``."""

    @register_method("gain_kd", params=[GAIN, LOGIT_STANDARDIZATION],
                     formula="`kd_gain · KL_T(softmax(z_t/T), z_s)`", paper="a test")
    def gain_kd(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                temperature: float, kd_gain: float, logit_standardization: bool) -> Tensor:
        return kd_gain * kl_t(soft_targets(teacher_logits, temperature), student_logits,
                              temperature)

    yield "gain_kd"
    unregister_method("gain_kd")


def train_help(capsys: pytest.CaptureFixture[str]) -> str:
    """``kdtune train --help`` as printed."""
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def _batch() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.arange(8) % 5


def test_a_registered_method_and_its_parameter(gain_kd: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert list_methods()[-1] == gain_kd
    assert method_params(gain_kd) == {"kd_gain": GAIN,
                                      "logit_standardization": LOGIT_STANDARDIZATION}
    s, t, y = _batch()
    one = distillation_loss(gain_kd, s, t, y, alpha=0.0, temperature=2.0)
    three = distillation_loss(gain_kd, s, t, y, alpha=0.0, temperature=2.0, kd_gain=3)
    vanilla = distillation_loss("vanilla", s, t, y, alpha=0.0, temperature=2.0)
    torch.testing.assert_close(one, vanilla)
    torch.testing.assert_close(three, 3 * vanilla)
    cfg = config_from_dict({"method": gain_kd, "kd_gain": 2.5})
    assert cfg.to_dict()["kd_gain"] == 2.5 and config_from_dict(cfg.to_dict()) == cfg
    assert "--kd-gain" in train_help(capsys) and gain_kd in train_help(capsys)


def test_cli_trains_a_method_registered_in_the_test(gain_kd: str, teacher_path: Path,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["train", "--method", gain_kd, "--teacher", str(teacher_path), "--hidden", "8",
            "--epochs", "1", "--device", "cpu", "--threads", "1"]
    assert main([*argv, "--kd-gain", "3", "--logit-standardization", "--out", str(out)]) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["method"] == gain_kd and written["kd_gain"] == 3.0
    assert written["logit_standardization"] is True
    capsys.readouterr()
    assert main([*argv, "--kd-gain", "11", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "kdtune train: error: kd_gain 11.0 must be a number in [0, 10]"
    assert not (tmp_path / "bad").exists()


def _space(tmp_path: Path, parameters: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "fixed": {"dataset": "digits", "model": "mlp", "epochs": 2},
        "teacher": {"model": "mlp", "hidden": [16], "epochs": 1},
        "parameters": parameters,
        "search": {"num_samples": 4, "sampler": "tpe"},
    }, sort_keys=False))
    return path


def test_space_searches_a_method_registered_in_the_test(gain_kd: str, tmp_path: Path) -> None:
    method = {"type": "categorical", "choices": ["vanilla", gain_kd]}
    gain = {"type": "float", "low": 0.5, "high": 4}
    space = load_space(_space(tmp_path, {"method": method,
                                         "kd_gain": {**gain, "when": {"method": [gain_kd]}}}))
    assert space.parameter("kd_gain").when == (("method", (gain_kd,)),)
    with pytest.raises(KdtuneError) as info:  # read by gain_kd only: a condition is needed
        load_space(_space(tmp_path, {"method": method, "kd_gain": gain}))
    assert str(info.value).endswith(f"parameters.kd_gain: active with method vanilla, which "
                                    f"does not use kd_gain; add when: {{method: [{gain_kd}]}}")
    with pytest.raises(KdtuneError, match=r"parameters.kd_gain.high: kd_gain 20.0 must be a "
                                          r"number in \[0, 10\]"):
        load_space(_space(tmp_path, {"method": method, "kd_gain": {
            **gain, "high": 20, "when": {"method": [gain_kd]}}}))


def test_unregistering_removes_method_parameter_and_flag(
        capsys: pytest.CaptureFixture[str]) -> None:
    def fn(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
           temperature: float, kd_gain: float) -> Tensor:
        return kd_gain * student_logits.float().sum(dim=1)

    register_method("gone", params=[GAIN])(fn)
    assert "kd_gain" in all_params() and "--kd-gain" in train_help(capsys)
    unregister_method("gone")
    assert "gone" not in list_methods() and "kd_gain" not in all_params()
    assert "logit_standardization" in all_params()  # still declared by other methods
    assert "--kd-gain" not in train_help(capsys)
    with pytest.raises(KdtuneError, match="unknown key 'kd_gain'"):
        config_from_dict({"kd_gain": 2})


def test_parameter_names_are_global() -> None:
    def fn(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
           temperature: float, nckd_weight: float) -> Tensor:
        return student_logits.sum(dim=1) * 0

    other = Param("nckd_weight", float, 2.0, low=0, help="another default")
    with pytest.raises(ValueError, match="'nckd_weight' is already registered with another"):
        register_method("clash", params=[other])(fn)
    assert "clash" not in list_methods()
    same = method_params("dkd")["nckd_weight"]
    register_method("reuses", params=[same])(fn)  # the same spec: allowed
    try:
        assert method_params("reuses") == {"nckd_weight": same}
    finally:
        unregister_method("reuses")
    assert all_params()["nckd_weight"] is same  # dkd still declares it


@pytest.mark.parametrize("field", ["lr", "epochs", "teacher", "method_params"])
def test_parameters_may_not_shadow_config_fields(field: str) -> None:
    with pytest.raises(ValueError, match=f"parameter '{field}' is a TrainConfig field"):
        register_method("shadow", params=[Param(field, float, 1.0)])
    assert "shadow" not in list_methods()


def test_bad_registrations() -> None:
    with pytest.raises(ValueError, match="not a valid parameter name"):
        Param("temperature", float, 1.0)
    with pytest.raises(KdtuneError, match="must be a number >= 0"):
        Param("w", float, -1.0, low=0)  # the default must be valid
    with pytest.raises(TypeError, match="must take"):
        register_method("bad", params=[GAIN])(
            lambda student_logits, teacher_logits, labels, *, temperature: None)
    with pytest.raises(ValueError, match="already registered"):
        register_method("dkd")(get_method("dkd").fn)
    assert list_methods().count("dkd") == 1 and "bad" not in list_methods()


def test_method_params_is_the_methods_own() -> None:
    for method in list_methods():
        spec = get_method(method)
        assert set(method_params(method)) == {p.name for p in spec.params}
        assert not {"alpha", "temperature", "kd_warmup"} & set(method_params(method))
