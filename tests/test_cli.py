"""``kdtune train`` / ``kdtune teacher`` in-process (``main([...])``), the refusals the other
commands make before they read a store, plus one real subprocess proving that ``python -m
kdtune`` works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdtune.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "16", "--epochs", "1", "--device", "cpu"]
METRICS = {"val_accuracy", "test_accuracy", "params", "flops", "latency_ms_b1",
           "latency_ms_b256", "train_time_s"}


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)  # keeps the test's KDTUNE_CACHE
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


# -- train ----------------------------------------------------------------------------------
def test_train_prints_metrics_and_json_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--method", "none", *TINY, "--json"]) == 0
    out, err = capsys.readouterr()
    metrics = last_json(out)
    assert metrics.keys() >= METRICS and "speedup" not in metrics
    assert "val accuracy" in out and "student (none)" in out  # the table
    assert "epoch 1/1" in err  # progress goes to stderr


def test_train_with_teacher_reports_speedup(teacher_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--method", "vanilla", "--teacher", str(teacher_path), "--alpha", "0.3",
            "--temperature", "2", *TINY, "--json"]
    assert main(argv) == 0
    metrics = last_json(capsys.readouterr().out)
    assert (METRICS | {"speedup", "teacher_params"}) <= metrics.keys()
    assert metrics["speedup"] > 0


def test_train_times_latency_by_the_one_policy(teacher_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``kdtune train`` trains with the threads it is given (here 2, every core of a 2-core
    machine); its latency figures are timed as a sweep trial times them, with the policy's
    one thread: the figure it reports for the student (and the teacher) is the one this
    process holds for that architecture, timed once, that a trial of any CPU count would
    read. Each figure comes with its spread."""
    from kdtune.config import TrainConfig
    from kdtune.metrics import LATENCY_POLICY, cpu_latency, torch_threads
    from kdtune.teacher import load_teacher
    from kdtune.trainer import build_student, load_data
    from kdtune.vocabulary import (
        LATENCY_FIGURES,
        LATENCY_SPREADS,
        TEACHER_LATENCY,
        TEACHER_LATENCY_SPREAD,
    )

    argv = ["train", "--method", "vanilla", "--teacher", str(teacher_path), "--hidden", "27",
            "--epochs", "1", "--device", "cpu", "--threads", "2", "--json"]
    before = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(before)
    metrics = last_json(capsys.readouterr().out)
    config = TrainConfig(hidden=(27,))
    data = load_data(config)
    student = build_student(config, data)
    for batch_size, name in LATENCY_FIGURES.items():
        with torch_threads(3):  # a trial with 3 CPUs: the same figure
            figure = cpu_latency(student, data.in_shape, batch_size)
        assert figure.threads == LATENCY_POLICY.threads == 1
        assert metrics[name] == figure.ms
        assert metrics[LATENCY_SPREADS[batch_size]] == figure.iqr_ms >= 0
    teacher = load_teacher(teacher_path).latency(256)
    assert teacher.threads == 1
    assert metrics[TEACHER_LATENCY] == teacher.ms
    assert metrics[TEACHER_LATENCY_SPREAD] == teacher.iqr_ms >= 0
    assert metrics["speedup"] == pytest.approx(teacher.ms / metrics[LATENCY_FIGURES[256]])


def test_config_file_with_flag_override_and_out(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "student.yaml"
    config.write_text("method: none\nhidden: 16-16\nepochs: 3\nweight_decay: 0.001\n"
                      "lr: 0.1\ndevice: cpu\n")
    out_dir = tmp_path / "run"
    assert main(["train", "--config", str(config), "--epochs", "1", "--out", str(out_dir),
                 "--json"]) == 0
    stdout, err = capsys.readouterr()
    metrics = last_json(stdout)
    assert metrics["epochs"] == 1 and "epoch 2/" not in err  # the flag won over the file

    assert sorted(p.name for p in out_dir.iterdir()) == ["config.yaml", "metrics.json",
                                                          "student.pt"]
    written = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert written["epochs"] == 1 and written["weight_decay"] == 0.001
    assert written["hidden"] == [16, 16]
    assert json.loads((out_dir / "metrics.json").read_text()) == metrics
    student = torch.load(out_dir / "student.pt", weights_only=True)
    assert student["format"] == "kdtune-student/1" and student["config"]["lr"] == 0.1
    assert student["state_dict"]["1.weight"].shape == (16, 64)


# -- bad input ------------------------------------------------------------------------------
BAD_TRAIN = {
    # id: (extra argv, text the error must contain)
    "unknown-method": (["--method", "rkd5"], "'rkd5'"),
    "alpha": (["--alpha", "1.5"], "alpha 1.5"),
    "alpha-negative": (["--alpha=-0.1"], "alpha -0.1"),
    "temperature": (["--temperature", "0"], "temperature 0"),
    "blocks-negative": (["--method", "none", "--model", "resnet", "--blocks", "-1,1,0,0"],
                        "[-1, 1, 0, 0]"),
    "blocks-negative-eq": (["--method", "none", "--model", "resnet", "--blocks=-1,1,0,0"],
                           "[-1, 1, 0, 0]"),
    "blocks-zero": (["--method", "none", "--model", "resnet", "--blocks", "0,0,0,0"],
                    "[0, 0, 0, 0]"),
    "hidden-text": (["--method", "none", "--hidden", "big"], "'big'"),
    "mnist-no-root": (["--method", "none", "--dataset", "mnist"], "--data-root"),
    "no-teacher": (["--method", "vanilla"], "'vanilla' needs a teacher"),
    "missing-teacher": (["--teacher", "missing.pt"], "'missing.pt' does not exist"),
    "two-temperature": (["--method", "two_temperature", "--t-right", "2"], "t_wrong"),
    "epochs-zero": (["--method", "none", "--epochs", "0"], "epochs 0"),
    "model-option": (["--method", "none", "--model", "mlp", "--blocks", "1,1,0,0"],
                     "'blocks'"),
    "unknown-flag": (["--temprature", "3"],
                     "kdtune train: error: unknown flag --temprature (did you mean "
                     "--temperature?)"),
    "unknown-flag-eq": (["--temprature=3"], "unknown flag --temprature (did you mean"),
    "unknown-method-flag": (["--method", "dkd", "--nckd-wieght", "6"],
                            "unknown flag --nckd-wieght (did you mean --nckd-weight?)"),
    "stray-word": (["sixty"], "unexpected argument 'sixty'"),
    "bad-int": (["--epochs", "two"], "'two'"),
}


def run_bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("extra", "fragment"), BAD_TRAIN.values(), ids=BAD_TRAIN.keys())
def test_bad_train_input(extra: list[str], fragment: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    argv = ["train", "--epochs", "1", *extra, "--out", str(out_dir)]
    code, _, err = run_bad(argv, capsys)
    assert_one_line_error(code, err, fragment)
    assert not out_dir.exists()


@pytest.mark.parametrize(("text", "fragment"), [
    ("temprature: 3\n", "'temprature' (did you mean 'temperature'?)"),
    ("alpha: [0.5\n", "invalid YAML"),
    ("method: rkd5\n", "'rkd5'"),
])
def test_bad_config_file(text: str, fragment: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    out_dir = tmp_path / "out"
    code, _, err = run_bad(["train", "--config", str(config), "--out", str(out_dir)], capsys)
    assert_one_line_error(code, err, fragment)
    assert not out_dir.exists()


def test_missing_data_root_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    root = tmp_path / "no-mnist-here"
    code, _, err = run_bad(["train", "--method", "none", "--dataset", "mnist", "--data-root",
                            str(root), "--out", str(out_dir)], capsys)
    assert_one_line_error(code, err, str(root))
    assert "--download" in err and not out_dir.exists()


def test_bad_teacher_input_writes_nothing(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "teachers"
    code, _, err = run_bad(["teacher", "--hidden", "0", "--out", str(out_dir)], capsys)
    assert_one_line_error(code, err, "hidden [0]")
    assert not out_dir.exists()


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_bad([], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "line"), [
    (["serach", "space.yaml"], "kdtune: error: unknown command 'serach'; choose one of: train, "
     "teacher, search, resume, best, finalize, dashboard, export, report, demo, space-schema "
     "(did you mean 'search'?)"),
    (["best", "--tpo", "3"], "kdtune best: error: unknown flag --tpo (did you mean --top?)"),
    (["best", "--zzzz"], "kdtune best: error: unknown flag --zzzz (see kdtune best --help)"),
    (["search", "space.yaml", "--num-smaples", "3"],
     "kdtune search: error: unknown flag --num-smaples (did you mean --num-samples?)"),
    (["export", "x", "--format", "onnx", "--out", "s.onnx", "--trail", "x#1"],
     "kdtune export: error: unknown flag --trail (did you mean --trial?)"),
])
def test_unknown_command_or_flag_names_the_closest(argv: list[str], line: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_bad(argv, capsys)
    assert (code, out, err) == (2, "", line + "\n")
    assert list(tmp_path.iterdir()) == []


STORE_COMMANDS = {
    "resume": ["resume", "x"], "best": ["best", "x"], "finalize": ["finalize", "x"],
    "dashboard": ["dashboard", "x"], "report": ["report", "x", "--out", "r.html"],
    "export": ["export", "x", "--format", "onnx", "--out", "s.onnx"],
}


@pytest.mark.parametrize("argv", STORE_COMMANDS.values(), ids=STORE_COMMANDS.keys())
def test_every_store_command_checks_the_tracking_uri_it_is_given(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``: one line naming it, nothing written."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_bad([*argv, "--mlflow-uri", "runs.db"], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"kdtune {argv[0]}: error: --mlflow-uri 'runs.db' is not a URI; "
                          "give http(s)://"), err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite://runs.db")
    code, out, err = run_bad(argv, capsys)
    assert (code, out, err) == (2, "", f"kdtune {argv[0]}: error: MLFLOW_TRACKING_URI "
                                "'sqlite://runs.db': an SQLite store is sqlite:///PATH (three "
                                "slashes, then the file)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_given_as_the_teacher_says_what_is_expected(
        teacher_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "teachers"
    folder.mkdir()
    (folder / teacher_path.name).write_bytes(teacher_path.read_bytes())
    code, _, err = run_bad(["train", "--teacher", str(folder), *TINY], capsys)
    assert_one_line_error(code, err, f"teacher '{folder}' is a folder (it holds "
                                     f"{teacher_path.name}); give a teacher checkpoint file "
                                     f"(.pt) from `kdtune teacher`, e.g. "
                                     f"{folder / teacher_path.name}")
    assert "does not exist" not in err


# -- a finished run is never written over silently ------------------------------------------
def test_a_saved_config_trains_again_without_writing_over_its_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run1 = tmp_path / "run1"
    assert main(["train", "--method", "none", *TINY, "--out", str(run1)]) == 0
    saved = yaml.safe_load((run1 / "config.yaml").read_text())
    assert "out" not in saved and saved["hidden"] == [16]
    assert "out" not in torch.load(run1 / "student.pt", weights_only=True)["config"]
    before = {p.name: p.read_bytes() for p in run1.iterdir()}
    capsys.readouterr()

    # training again from the saved config (for longer) writes nothing anywhere
    assert main(["train", "--config", str(run1 / "config.yaml"), "--epochs", "2",
                 "--json"]) == 0
    assert last_json(capsys.readouterr().out)["epochs"] == 2
    assert {p.name: p.read_bytes() for p in run1.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1"]


def test_out_holding_a_finished_run_is_refused_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run1 = tmp_path / "run1"
    assert main(["train", "--method", "none", *TINY, "--out", str(run1)]) == 0
    before = {p.name: p.read_bytes() for p in run1.iterdir()}
    capsys.readouterr()
    # a config that names the folder (as configs saved by `kdtune train` once did) ...
    old = tmp_path / "old.yaml"
    old.write_text(f"method: none\nhidden: 16\nepochs: 1\ndevice: cpu\nout: {run1}\n")
    code, _, err = run_bad(["train", "--config", str(old), "--epochs", "2"], capsys)
    assert_one_line_error(code, err, f"--out {run1} already holds a finished run (student.pt, "
                                     "metrics.json, config.yaml); give another folder, or add "
                                     "--force to replace it")
    assert "epoch" not in err  # refused before training
    # ... and --out on the command line
    code, _, err = run_bad(["train", "--method", "none", *TINY, "--out", str(run1)], capsys)
    assert_one_line_error(code, err, "already holds a finished run")
    assert {p.name: p.read_bytes() for p in run1.iterdir()} == before

    assert main(["train", "--config", str(old), "--epochs", "2", "--force", "--json"]) == 0
    metrics = last_json(capsys.readouterr().out)
    assert json.loads((run1 / "metrics.json").read_text()) == metrics and metrics["epochs"] == 2
    assert (run1 / "student.pt").read_bytes() != before["student.pt"]
    assert "out" not in yaml.safe_load((run1 / "config.yaml").read_text())


# -- teacher --------------------------------------------------------------------------------
def test_teacher_writes_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "teachers"
    argv = ["teacher", "--hidden", "16", "--epochs", "1", "--device", "cpu", "--out",
            str(out_dir), "--json"]
    assert main(argv) == 0
    first = last_json(capsys.readouterr().out)
    files = list(out_dir.glob("*.pt"))
    assert len(files) == 1 and first["teacher"] == str(files[0])
    assert torch.load(files[0], weights_only=True)["data"]["dataset"] == "digits"

    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "(reused: same config)" in out and "epoch 1/1" not in err
    assert last_json(out)["teacher"] == str(files[0]) and list(out_dir.glob("*.pt")) == files


def test_teacher_out_from_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "teacher.yaml"
    config.write_text(f"hidden: 16\nepochs: 1\ndevice: cpu\nout: {tmp_path / 'from-file'}\n"
                      "method: vanilla\n")  # a student's config: the method is ignored
    assert main(["teacher", "--config", str(config)]) == 0
    capsys.readouterr()
    assert len(list((tmp_path / "from-file").glob("teacher-mlp-*.pt"))) == 1
    assert not (tmp_path / "kdtune-runs").exists()


# -- the real entry point -------------------------------------------------------------------
def test_python_m_kdtune_help_and_version() -> None:
    env = subprocess_env()
    done = subprocess.run([sys.executable, "-m", "kdtune", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and "train" in done.stdout and "teacher" in done.stdout
    done = subprocess.run([sys.executable, "-m", "kdtune", "train", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "--temperature" in done.stdout
    done = subprocess.run([sys.executable, "-m", "kdtune", "--version"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("kdtune ")


def test_python_m_kdtune_train_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kdtune", "train", "--method", "none", *TINY, "--threads", "1",
         "--json"], capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path,
        timeout=300)
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout).keys() >= METRICS
    assert list(tmp_path.iterdir()) == []  # nothing written without --out
