"""TrainConfig and kdtune.resolve: coercion from YAML/CLI values, validation, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kdtune.config import TrainConfig
from kdtune.errors import KdtuneError
from kdtune.resolve import (
    config_from_dict,
    config_from_yaml,
    replace_config,
    resolve_config,
)


def test_a_config_is_a_plain_value_that_imports_no_registry() -> None:
    """Importing the config and building one loads neither torch nor a registry."""
    script = ("import json, sys, kdtune.config; "
              "kdtune.config.TrainConfig(method='dkd', model='resnet', dataset='cifar10', "
              "method_params={'nckd_weight': 2.0}).to_dict(); "
              "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith("
              "('kdtune.methods', 'kdtune.models', 'kdtune.data', 'kdtune.resolve')))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(done.stdout) == []


def test_defaults_are_valid_and_round_trip() -> None:
    cfg = resolve_config(TrainConfig())
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.method_params == {"logit_standardization": False}  # vanilla's defaults
    assert resolve_config(cfg) is cfg  # resolved already


def test_replace_changes_fields_and_leaves_the_methods_to_resolve() -> None:
    cfg = config_from_dict({"method": "dkd", "nckd_weight": "6"})
    assert cfg.replace(seed=3).method_params == cfg.method_params
    with pytest.raises(TypeError, match="replace_config"):
        cfg.replace(method="vanilla")
    vanilla = replace_config(cfg, method="vanilla")
    assert vanilla.method_params == {"logit_standardization": False}


def test_trainconfig_checks_its_own_fields_and_leaves_names_to_resolve() -> None:
    with pytest.raises(KdtuneError, match="alpha 2"):
        TrainConfig(alpha=2.0)
    plain = TrainConfig(method="rkd5", model="mpl")  # names are the registries' business
    with pytest.raises(KdtuneError, match="unknown model 'mpl'"):
        resolve_config(plain)


@pytest.mark.parametrize(("raw", "expected"), [
    ("300-300", (300, 300)),
    ("1200", (1200,)),
    (" 64 ", (64,)),
    ("1,1,0,0", (1, 1, 0, 0)),
    ("1, 2, 0, 0", (1, 2, 0, 0)),
    ([300, 300], (300, 300)),
    ((50,), (50,)),
    (300, (300,)),
    ("", ()),
])
def test_int_lists_are_coerced(raw: object, expected: tuple[int, ...]) -> None:
    assert config_from_dict({"hidden": raw}).hidden == expected
    assert config_from_dict({"blocks": raw}).blocks == expected


def test_negative_list_keeps_its_sign() -> None:
    # "-1,1,0,0" must not turn into (1, 1, 0, 0); the model refuses the -1 later.
    assert config_from_dict({"blocks": "-1,1,0,0"}).blocks == (-1, 1, 0, 0)
    with pytest.raises(KdtuneError, match="'-1-1'"):
        config_from_dict({"hidden": "-1-1"})


def test_scalars_are_coerced() -> None:
    cfg = config_from_dict({"alpha": 1, "temperature": "3", "epochs": 5.0, "lr": 1,
                            "seed": "7", "download": "yes", "train_per_class": 10,
                            "teacher": None})
    assert (cfg.alpha, cfg.temperature, cfg.epochs, cfg.lr, cfg.seed) == (1.0, 3.0, 5, 1.0, 7)
    assert isinstance(cfg.alpha, float) and isinstance(cfg.epochs, int)
    assert cfg.download is True and cfg.teacher is None


@pytest.mark.parametrize(("data", "fragment"), [
    ({"epochs": 2.5}, "expected an integer"),
    ({"epochs": True}, "expected an integer"),
    ({"alpha": "high"}, "expected a number"),
    ({"hidden": "3x3"}, "expected integers like 300-300"),
    ({"hidden": {"a": 1}}, "expected a list of integers"),
    ({"download": "maybe"}, "expected true or false"),
])
def test_bad_types_are_one_line_errors(data: dict, fragment: str) -> None:
    with pytest.raises(KdtuneError, match=fragment) as info:
        config_from_dict(data)
    assert "\n" not in str(info.value)
    assert next(iter(data)) in str(info.value)


@pytest.mark.parametrize(("key", "suggestion"), [
    ("temprature", "temperature"), ("alhpa", "alpha"), ("hiden", "hidden"),
    ("train_per_clas", "train_per_class"),
])
def test_unknown_key_suggests_the_closest(key: str, suggestion: str) -> None:
    with pytest.raises(KdtuneError) as info:
        config_from_dict({key: 1})
    msg = str(info.value)
    assert f"unknown key {key!r}" in msg
    assert f"did you mean {suggestion!r}" in msg


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"alpha": 1.5}, "alpha 1.5"),
    ({"alpha": -0.1}, "alpha -0.1"),
    ({"temperature": 0}, "temperature 0"),
    ({"temperature": -2}, "temperature -2"),
    ({"method": "two_temperature", "t_wrong": 2.0}, "t_right"),
    ({"method": "two_temperature", "t_right": 2.0}, "t_wrong"),
    ({"method": "two_temperature", "t_right": 0.0, "t_wrong": 2.0}, "t_right 0.0 must be a "
                                                                     "number > 0"),
    ({"method": "dkd", "nckd_weight": -1}, "nckd_weight -1.0 must be a number >= 0"),
    ({"method": "tf_kd", "tf_peak": 1.5}, "tf_peak 1.5 must be a number in [0, 1]"),
    ({"method": "dkd", "logit_standardization": "maybe"}, "logit_standardization: expected "
                                                          "true or false, got 'maybe'"),
    ({"method": "vanilla", "nckd_weight": 6}, "method 'vanilla' does not take 'nckd_weight'; "
                                              "its parameters: logit_standardization"),
    ({"kd_warmup": -1}, "kd_warmup -1 must be >= 0"),
    ({"epochs": 0}, "epochs 0"),
    ({"batch_size": 0}, "batch_size 0"),
    ({"lr": 0}, "lr 0"),
    ({"train_per_class": 0}, "train_per_class 0"),
    ({"val_fraction": 0.9}, "val_fraction 0.9"),
    ({"method": "rkd5"}, "unknown method 'rkd5'"),
    ({"model": "mpl"}, "unknown model 'mpl'"),
    ({"dataset": "digit"}, "unknown dataset 'digit'"),
    ({"schedule": "linear"}, "unknown schedule 'linear'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_invalid_values_are_refused(changes: dict, fragment: str) -> None:
    with pytest.raises(KdtuneError) as info:
        config_from_dict(changes)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(KdtuneError) as info:
        resolve_config(TrainConfig(method="rkd5"))
    assert "vanilla" in str(info.value) and "did you mean 'rkd_v" in str(info.value)


def test_two_temperature_valid_and_temperature_unused() -> None:
    cfg = resolve_config(TrainConfig(method="two_temperature",
                                     method_params={"t_right": 2.0, "t_wrong": 6}))
    assert cfg.method_params == {"t_right": 2.0, "t_wrong": 6.0}
    # `none` has no soft term, so its temperature is not checked
    assert resolve_config(TrainConfig(method="none", temperature=0)).temperature == 0


def test_replace_validates() -> None:
    with pytest.raises(KdtuneError, match="alpha"):
        TrainConfig().replace(alpha=2.0)


def test_model_kwargs_only_set_fields() -> None:
    cfg = TrainConfig(model="resnet", blocks=(1, 1, 0, 0), stem_stride=2)
    assert cfg.model_kwargs() == {"blocks": (1, 1, 0, 0), "stem_stride": 2}
    assert TrainConfig().model_kwargs() == {}


def test_from_yaml_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("method: none\nhidden: 300-300\nalpha: 0.2\nepochs: 3\n")
    cfg = config_from_yaml(path, alpha=0.7, epochs="9")
    assert (cfg.method, cfg.hidden, cfg.alpha, cfg.epochs) == ("none", (300, 300), 0.7, 9)
    assert config_from_yaml(path).alpha == 0.2


def test_from_yaml_empty_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert config_from_yaml(path) == resolve_config(TrainConfig())


def test_from_yaml_unknown_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("temprature: 3\n")
    with pytest.raises(KdtuneError) as info:
        config_from_yaml(path)
    assert str(path) in str(info.value) and "did you mean 'temperature'" in str(info.value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("alpha: [0.1\nepochs: 3\n", "invalid YAML"),
    ("method: none\n  - x: : :\n", "invalid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_yaml_is_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(KdtuneError) as info:
        config_from_yaml(path)
    msg = str(info.value)
    assert fragment in msg and str(path) in msg and "\n" not in msg


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(KdtuneError, match="cannot read config"):
        config_from_yaml(tmp_path / "nope.yaml")


def test_method_parameters_are_flat_keys_with_their_defaults_filled_in() -> None:
    from kdtune.methods import method_params

    cfg = config_from_dict({"method": "dkd", "nckd_weight": "6", "kd_warmup": 5})
    defaults = {n: p.default for n, p in method_params("dkd").items()}
    assert cfg.method_params == {**defaults, "nckd_weight": 6.0}
    flat = cfg.to_dict()
    assert "method_params" not in flat and flat["nckd_weight"] == 6.0 and flat["kd_warmup"] == 5
    assert {k: flat[k] for k in defaults} == cfg.method_params
    assert config_from_dict(flat) == cfg
    # a method's keys appear for that method only
    assert not set(method_params("dkd")) - {"logit_standardization"} & set(
        resolve_config(TrainConfig()).to_dict())


def test_every_method_round_trips_through_to_dict() -> None:
    from kdtune.methods import list_methods, method_params

    for method in list_methods():
        given = {n: (p.default if p.default is not None else 3.0)
                 for n, p in method_params(method).items()}
        cfg = config_from_dict({"method": method, **given})
        assert config_from_dict(cfg.to_dict()) == cfg
        assert set(cfg.method_params) == set(method_params(method))


def test_unset_method_parameters_are_not_given(tmp_path: Path) -> None:
    """A config file written before parameters were per-method (t_right: null for every
    method) still loads."""
    path = tmp_path / "old.yaml"
    path.write_text("method: vanilla\nt_right: null\nt_wrong: null\nalpha: 0.3\n")
    cfg = config_from_yaml(path)
    assert cfg.method == "vanilla" and cfg.alpha == 0.3
    assert cfg.method_params == {"logit_standardization": False}
    path.write_text("method: two_temperature\nt_right: 2\nt_wrong: 5\n")
    assert config_from_yaml(path).method_params == {"t_right": 2.0, "t_wrong": 5.0}


def test_replace_with_another_method_keeps_the_parameters_it_declares() -> None:
    cfg = config_from_dict({"method": "dkd", "nckd_weight": 2,
                            "logit_standardization": True})
    assert replace_config(cfg, alpha=0.2).method_params["nckd_weight"] == 2.0
    assert replace_config(cfg, method="vanilla").method_params == {
        "logit_standardization": True}
    assert replace_config(cfg, method="none").method_params == {}
    assert replace_config(cfg, method="dist").method_params == {"dist_beta": 1.0,
                                                                "dist_gamma": 1.0}
    with pytest.raises(KdtuneError, match="method 'vanilla' does not take 'dist_beta'"):
        replace_config(cfg, method="vanilla", method_params={"dist_beta": 2})
    with pytest.raises(KdtuneError, match="'two_temperature' needs t_right and t_wrong"):
        replace_config(cfg, method="two_temperature")


@pytest.mark.parametrize(("value", "kind", "expected"), [
    ("7", int, 7), (7.0, int, 7), ("1e3", int, 1000), (2.5, int, None), (True, int, None),
    ("3", float, 3.0), (1, float, 1.0), (False, float, None), ("high", float, None),
    ("Yes", bool, True), ("0", bool, False), ("maybe", bool, None), (1, bool, None),
    (1, str, "1"), ("last", str, "last"), (True, str, None),
])
def test_config_fields_and_method_parameters_coerce_alike(value: object, kind: type,
                                                         expected: object) -> None:
    """One coercion (kdtune.coerce) for a config field and a method parameter of one type."""
    from kdtune.coerce import coerce
    from kdtune.methods import Param

    param = Param("some_param", kind)
    if expected is None:
        with pytest.raises(KdtuneError, match="where: expected"):
            coerce(value, kind, "where")
        with pytest.raises(KdtuneError, match=f"some_param {value!r} must be"):
            param.check(value)
    else:
        assert coerce(value, kind, "where") == expected
        assert coerce(value, kind | None, "where") == expected
        assert param.check(value) == expected and type(param.check(value)) is kind


def test_train_and_teacher_flags_are_the_config_fields_metadata_names() -> None:
    """Every field whose metadata names a flag group is a flag of `kdtune train` and of
    `kdtune teacher` (distillation: train only), in that group, with that help."""
    import dataclasses

    from kdtune.cli import build_parser

    parser = build_parser(method_flags=False)
    train, teacher = parser.commands["train"], parser.commands["teacher"]
    text = train.format_help()
    sections = {part.split(":", 1)[0]: " ".join(part.split())
                for part in re.split(r"\n(?=\S[^\n]*:\n)", text)}
    flagged = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag")]
    assert {f.name for f in flagged} >= {"dataset", "hidden", "blocks", "alpha", "epochs",
                                         "compile", "teacher_outputs"}
    for f in flagged:
        flag = "--" + f.name.replace("_", "-")
        assert flag in sections[f.metadata["flag"]], (flag, f.metadata["flag"])
        assert " ".join(f.metadata["help"].split()) in sections[f.metadata["flag"]]
        assert flag in train.flags()
        assert (flag in teacher.flags()) == (f.metadata["flag"] != "distillation")
