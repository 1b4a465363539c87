"""Bad input of every kind is one line on stderr naming the value and what is allowed, exit
code 2, no traceback, nothing written -- before Ray starts, or (resources) before any trial.
And the security defaults: every ``torch.load`` loads weights only, and a teacher checkpoint
carrying a pickle payload is refused without running it.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
import yaml

from kdtune.cli import main

from .harness import REPO, write_space


def one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    shown = capsys.readouterr()
    lines = shown.err.strip().splitlines()
    assert len(lines) == 1, shown.err
    assert lines[0].startswith(f"kdtune {command}: error: "), lines[0]
    assert "Traceback" not in shown.err + shown.out
    return lines[0]


MALFORMED = [
    (["--mlflow-uri", "http//127.0.0.1:5000"], "http//127.0.0.1:5000"),
    (["--mlflow-uri", "http://:5000"], "names no host"),
    (["--mlflow-uri", "http://127.0.0.1:99999"], "port"),
    (["--mlflow-uri", "sqlite:/runs/mlflow.db"], "sqlite:///PATH"),
    (["--mlflow-uri", "ftp://127.0.0.1/x"], "unknown scheme 'ftp'"),
    (["--mlflow-uri", "http://kd:hunter2@127.0.0.1:notaport"], "kd:***@"),
    (["--storage", "s3:/bucket/kdtune"], "without '://'"),
    (["--storage", "gopher://host/x"], "unknown scheme 'gopher'"),
    (["--study-storage", "postgresql:/kdtune"], "not an SQLAlchemy URL"),
    (["--study-storage", "postgress://kd@127.0.0.1/kdtune"], "unknown database"),
    (["--study-storage", "postgresql://kd:hunter2@/kdtune"], "names no host"),
]


@pytest.mark.parametrize(("flags", "shown"), MALFORMED)
@pytest.mark.parametrize("command", ["search", "resume", "best"])
def test_malformed_store_urls(command: str, flags: list[str], shown: str, teacher_path: Path,
                              tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = [str(write_space(tmp_path, teacher_path))] if command == "search" else ["faults"]
    assert main([command, *first, *flags]) == 2
    line = one_line(capsys, command)
    assert shown in line and "hunter2" not in line, line
    assert not (tmp_path / "kdtune-runs").exists()


@pytest.mark.parametrize(("parameters", "key", "shown"), [
    ({"hidden": {"type": "categorical", "choices": [[8], [0]]}},
     "parameters.hidden.choices", "0 is not allowed"),
    ({"dropout": {"type": "categorical", "choices": [0.1, 1.5]}},
     "parameters.dropout.choices", "dropout 1.5"),
    ({"hidden": {"type": "categorical", "choices": [[8, 16], [16, -4]]}},
     "parameters.hidden.choices", "-4 is not allowed"),
    ({"method": {"type": "categorical", "choices": ["vanilla", "vanila"]}},
     "parameters.method.choices", "did you mean 'vanilla'"),
    ({"feature_method": {"type": "categorical", "choices": ["none", "at"]}},
     "parameters.feature_method.choices", "'at' needs feature maps"),
])
def test_every_value_a_space_can_produce_is_checked(parameters: dict, key: str, shown: str,
                                                    teacher_path: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, teacher_path, parameters=parameters,
                        search={"num_samples": 2, "sampler": "random"})
    assert main(["search", str(space)]) == 2
    line = one_line(capsys, "search")
    assert key in line and shown in line, line
    assert not (tmp_path / "kdtune-runs").exists()


def test_list_flags_take_the_forms_a_user_types(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "student"
    assert main(["train", "--method", "none", "--hidden", "16", "16", "--epochs", "1",
                 "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["hidden"] == [16, 16]
    capsys.readouterr()
    assert main(["train", "--model", "resnet", "--blocks", "1", "-1", "0", "0",
                 "--method", "none", "--epochs", "1"]) == 2
    assert "-1" in one_line(capsys, "train")


def test_a_diverging_run_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--method", "none", "--hidden", "16", "--epochs", "3", "--lr", "1000",
                 "--device", "cpu", "--threads", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) - sum("epoch" in ln and "loss" in ln and "error" not in ln
                          for ln in err) == 1
    assert "lower the learning rate" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_trial_that_can_never_be_placed_is_one_line_before_any_trial(
        faults_ray: None, store_template: Path, teacher_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path, teacher_path, resources={"cpus": 64, "gpus": 0})
    store = tmp_path / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    assert main(["search", str(space), "--mlflow-uri", uri, "--storage",
                 str(store / "ray")]) == 2
    line = one_line(capsys, "search")
    assert "64 CPU(s)" in line and "no node" in line, line
    from kdtune.tracking import Tracker
    from kdtune.tune.study import SweepStudy

    assert not store.exists()  # the refused start removed the store it had begun
    assert Tracker(uri).sweep_names() == []  # nothing registered, no trial started
    assert not SweepStudy(f"sqlite:///{store / 'optuna.db'}", "faults").exists()
    assert not (store / "ray" / "faults").exists()


def test_a_refused_start_leaves_an_existing_store_as_it_was(
        faults_ray: None, store_template: Path, teacher_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Only what the refused start itself created goes: a store that was there stays."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "notes.txt").write_text("mine")
    space = write_space(tmp_path, teacher_path, resources={"cpus": 64, "gpus": 0})
    assert main(["search", str(space), "--mlflow-uri", f"sqlite:///{store / 'mlflow.db'}",
                 "--storage", str(store / "ray")]) == 2
    one_line(capsys, "search")
    assert sorted(p.name for p in store.iterdir()) == ["notes.txt"]


class Payload:
    """Pickles as a call of ``os.system``: loading it with pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_a_teacher_carrying_a_pickle_payload_is_refused(teacher_path: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    checkpoint = torch.load(teacher_path, weights_only=True)
    checkpoint["metrics"] = Payload(f"touch {marker}")
    torch.save(checkpoint, evil)
    assert main(["train", "--teacher", str(evil), "--epochs", "1"]) == 2
    assert str(evil) in one_line(capsys, "train")
    space = write_space(tmp_path, evil)
    assert main(["search", str(space)]) == 2
    assert str(evil) in one_line(capsys, "search")
    assert not marker.exists()
    assert not (tmp_path / "kdtune-runs").exists()


def test_every_torch_load_loads_weights_only() -> None:
    calls = []
    for path in (REPO / "kdtune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "load" and isinstance(node.func.value, ast.Name) and \
                    node.func.value.id == "torch":
                weights = {k.arg: k.value for k in node.keywords}.get("weights_only")
                calls.append((path.name, node.lineno,
                              isinstance(weights, ast.Constant) and weights.value is True))
    assert calls and all(ok for *_, ok in calls), calls


def test_on_an_autoscaling_cluster_such_a_trial_is_a_warning(
        faults_ray: None, teacher_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from kdtune.errors import KdtuneError
    from kdtune.tune.ray_session import check_resources
    from kdtune.tune.space import load_space

    space = load_space(write_space(tmp_path, teacher_path, resources={"cpus": 64, "gpus": 1}))
    shown = io.StringIO()
    monkeypatch.setenv("KDTUNE_AUTOSCALING", "1")
    check_resources(space, Console(file=shown, width=300))  # the trials will wait for a node
    assert shown.getvalue().startswith("warning: resources: a trial asks for 64 CPU(s) and 1 "
                                       "GPU(s)"), shown.getvalue()
    monkeypatch.setenv("KDTUNE_AUTOSCALING", "0")
    with pytest.raises(KdtuneError, match="no node of the Ray cluster has them"):
        check_resources(space, Console(file=shown))


# -- where a command writes: checked before it works, nothing created --------------------------
def unwritable_places(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """command -> (argv, the flag named): each writes below ``blocker``, a file."""
    blocker = tmp_path / "blocker"
    store = ["--mlflow-uri", f"sqlite:///{tmp_path / 'nothing-here' / 'mlflow.db'}"]
    return {
        "train": (["train", "--method", "none", "--epochs", "1", "--out",
                   str(blocker / "run")], "--out"),
        "teacher": (["teacher", "--epochs", "1", "--out", str(blocker / "teachers")], "--out"),
        "demo": (["demo", "--out", str(blocker / "teachers")], "--out"),
        "export": (["export", "asha", "--format", "onnx", "--out",
                    str(blocker / "student.onnx"), *store], "--out"),
        "report": (["report", "asha", "--out", str(blocker / "r.html"), *store], "--out"),
        "best": (["best", "asha", "--config-out", str(blocker / "best.yaml"), *store],
                 "--config-out"),
    }


@pytest.mark.parametrize("command", ["train", "teacher", "demo", "export", "report", "best"])
def test_an_output_place_that_cannot_be_created_is_one_line_before_any_work(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out /etc/passwd/x``: a file where a folder would have to be. Refused before any
    training or store access (the store named here does not exist: that would be the error
    otherwise), nothing created."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blocker").write_text("a file\n")
    argv, flag = unwritable_places(tmp_path)[command]
    assert main(argv) == 2
    line = one_line(capsys, command)
    assert f"{flag} {tmp_path / 'blocker'}/" in line, line
    assert f"cannot be created, {tmp_path / 'blocker'} is a file, not a folder" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_an_output_folder_without_write_permission_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write in any folder")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["train", "--method", "none", "--epochs", "1", "--out",
                     str(locked / "run")]) == 2
        assert f"no permission to write in {locked}" in one_line(capsys, "train")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# -- --address: its form, before Ray starts ------------------------------------------------------
@pytest.mark.parametrize(("address", "shown"), [
    ("10.0.0.1", "'10.0.0.1' is not a Ray cluster address; give auto or HOST:PORT"),
    ("10.0.0.1:99999", "'10.0.0.1:99999': the port must be a number in 1..65535"),
    ("10.0.0.1:0", "the port must be a number in 1..65535"),
    (":6379", "':6379' is not a Ray cluster address"),
    ("http://10.0.0.1:6379", "is not a Ray cluster address"),
])
@pytest.mark.parametrize("command", ["search", "resume", "finalize"])
def test_a_malformed_ray_address_is_one_line(command: str, address: str, shown: str,
                                             teacher_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = [str(write_space(tmp_path, teacher_path))] if command == "search" else ["faults"]
    assert main([command, *first, "--address", address]) == 2
    line = one_line(capsys, command)
    assert f"--address {shown}" in line or shown in line, line
    assert "(the head node, e.g. 10.0.0.1:6379)" in line
    assert not (tmp_path / "kdtune-runs").exists()
