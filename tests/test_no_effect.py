"""A value the user gave that changes nothing for the chosen input is refused in one line, exit
2, nothing written: on the command line, in a ``--config`` file and in a search space's
``fixed`` and ``teacher`` sections. Defaults, and a value with an effect, pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdtune.cli import main
from kdtune.config import TrainConfig
from kdtune.no_effect import CHECKED, no_effect
from kdtune.resolve import config_from_dict


def one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    shown = capsys.readouterr()
    lines = shown.err.strip().splitlines()
    assert len(lines) == 1, shown.err
    assert lines[0].startswith(f"kdtune {command}: error: "), lines[0]
    return lines[0]


#: (config, key): the key changes nothing in that config; and a config where it does.
NO_EFFECT = {
    "data_root": ({"dataset": "digits", "data_root": "my_images"},
                  {"dataset": "mnist", "data_root": "my_images"}),
    "download": ({"dataset": "synthetic", "download": True},
                 {"dataset": "cifar10", "download": True}),
    "augment": ({"dataset": "digits", "augment": True}, {"dataset": "synthetic", "augment": True}),
    "alpha": ({"method": "none", "alpha": 0.3}, {"method": "vanilla", "alpha": 0.3}),
    "temperature": ({"method": "two_temperature", "t_right": 2, "t_wrong": 4,
                     "temperature": 2}, {"method": "dkd", "temperature": 2}),
    "kd_warmup": ({"method": "none", "kd_warmup": 3},
                  {"method": "none", "feature_method": "sp", "kd_warmup": 3}),
    "teacher_outputs": ({"method": "tf_kd", "teacher_outputs": "live"},
                        {"method": "vanilla", "teacher_outputs": "live"}),
    "amp": ({"device": "cpu", "amp": False}, {"device": "cuda", "amp": False}),
    "channels_last": ({"model": "mlp", "channels_last": True},
                      {"model": "resnet", "blocks": [1, 1, 0, 0], "channels_last": True}),
}


def test_every_checked_key_has_a_case() -> None:
    assert set(NO_EFFECT) == set(CHECKED)


@pytest.mark.parametrize("key", sorted(NO_EFFECT))
def test_no_effect_names_the_reason_and_only_where_there_is_none(key: str) -> None:
    ignored, used = NO_EFFECT[key]
    assert no_effect(config_from_dict(ignored), key)
    assert no_effect(config_from_dict(used), key) is None


@pytest.mark.parametrize(("argv", "shown"), [
    (["train", "--data-root", "my_images"], "--data-root has no effect here: dataset 'digits' "
                                            "reads no files"),
    (["train", "--dataset", "synthetic", "--download"], "--download has no effect here"),
    (["train", "--augment"], "--augment has no effect here: dataset 'digits' has no "
                             "augmentation"),
    (["train", "--method", "none", "--temperature", "2"], "--temperature has no effect here: "
                                                         "method 'none' does not use "
                                                         "temperature"),
    (["train", "--method", "none", "--alpha", "0.2"], "--alpha has no effect here"),
    (["train", "--method", "none", "--kd-warmup", "2"], "--kd-warmup has no effect here"),
    (["train", "--method", "none", "--teacher-outputs", "live"], "--teacher-outputs has no "
                                                                 "effect here"),
    (["train", "--model", "mlp", "--channels-last"], "--channels-last has no effect here: "
                                                     "model 'mlp' has no convolution"),
    (["teacher", "--data-root", "my_images"], "--data-root has no effect here"),
])
def test_command_line_values_without_effect_are_refused(argv: list[str], shown: str,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 2
    line = one_line(capsys, argv[0])
    assert shown in line and "drop it" in line, line
    assert not out.exists() and not (tmp_path / "kdtune-runs").exists()


def test_a_config_file_value_without_effect_names_the_file(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "none", "data_root": "my_images"}))
    assert main(["train", "--config", str(config), "--epochs", "1"]) == 2
    line = one_line(capsys, "train")
    assert f"{config}: data_root has no effect here" in line, line


def test_defaults_and_values_with_an_effect_pass(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A saved config repeats every default (``download: false``, ``temperature: 4.0`` beside
    ``method: none``): it trains."""
    config = tmp_path / "saved.yaml"
    config.write_text(yaml.safe_dump({**TrainConfig(method="none", epochs=1, hidden=(8,),
                                                    device="cpu").to_dict(), "out": None}))
    assert main(["train", "--config", str(config)]) == 0, capsys.readouterr().err


SPACE = {
    "name": "effects",
    "fixed": {"dataset": "digits", "model": "mlp", "epochs": 1},
    "teacher": {"model": "mlp", "hidden": [16], "epochs": 1},
    "parameters": {"method": {"type": "categorical", "choices": ["none", "vanilla"]},
                   "hidden": {"type": "categorical", "choices": [[8], [16]]}},
    "search": {"num_samples": 2, "sampler": "random"},
}


@pytest.mark.parametrize(("changes", "shown"), [
    ({"fixed": {**SPACE["fixed"], "data_root": "my_images"}},
     "fixed.data_root: has no effect here: dataset 'digits' reads no files"),
    ({"fixed": {**SPACE["fixed"], "download": True}}, "fixed.download: has no effect here"),
    ({"fixed": {**SPACE["fixed"], "augment": False}}, "fixed.augment: has no effect here"),
    ({"fixed": {**SPACE["fixed"], "method": "none", "temperature": 2},
      "parameters": {"hidden": {"type": "categorical", "choices": [[8], [16]]}}},
     "fixed.temperature: has no effect here: method 'none' does not use temperature"),
    ({"teacher": {**SPACE["teacher"], "augment": True}},
     "teacher.augment has no effect here: dataset 'digits' has no augmentation"),
])
def test_a_space_value_without_effect_is_refused(changes: dict, shown: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, **changes}))
    assert main(["search", str(space)]) == 2
    line = one_line(capsys, "search")
    assert shown in line, line
    assert not (tmp_path / "kdtune-runs").exists()


def test_a_fixed_value_used_by_some_trials_passes(tmp_path: Path) -> None:
    """``temperature`` beside a searched method: the vanilla trials read it."""
    from kdtune.tune.space import load_space

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "fixed": {**SPACE["fixed"], "temperature": 2}}))
    assert load_space(space).fixed["temperature"] == 2
