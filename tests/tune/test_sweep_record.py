"""What a sweep writes about itself: every child run's readable id, each driver run's start
and end, a sweep whose every trial failed recorded as FAILED, and the sampler seed of a sweep
started while another sweep of the same file runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdtune.cli import main
from kdtune.runs import driver_run_seconds
from kdtune.tracking import Tracker

from .conftest import SweepRecord, new_store, sqlite_uri, write_space

#: A space of two quick trials (no teacher: the student alone).
QUICK = {
    "fixed": {"dataset": "digits", "model": "mlp", "epochs": 1, "batch_size": 64,
              "method": "none", "seeds": [0]},
    "teacher": None,
    "parameters": {"hidden": {"type": "categorical", "choices": [[8], [16]]},
                   "lr": {"type": "categorical", "choices": [0.05, 0.1]}},
    "search": {"num_samples": 2, "max_concurrent": 2, "sampler": "random", "seed": 3},
    "scheduler": {"type": "none"},
}


def test_every_child_run_has_its_readable_id(asha_sweep: SweepRecord) -> None:
    from kdtune.tune.study import SweepStudy

    runs = asha_sweep.tracker().trial_runs("asha")
    study = SweepStudy(f"sqlite:///{asha_sweep.storage.parent}/optuna.db", "asha")
    numbers = {ray_id: t.number for ray_id, t in study.sweep_trials().items()}
    assert dict(zip(runs["trial_id"], runs["tags.kdtune.id"], strict=True)) == {
        ray_id: f"asha#{n}" for ray_id, n in numbers.items()}
    assert list(runs["run_name"]) == list(runs["tags.kdtune.id"])


def test_the_parent_run_records_each_driver_run(asha_sweep: SweepRecord) -> None:
    tracker = asha_sweep.tracker()
    parent = tracker.sweep_run("asha")
    (search,) = json.loads(parent.data.tags["kdtune.driver_runs"])
    assert search["kind"] == "search"
    seconds = driver_run_seconds(search)
    assert seconds is not None and seconds > 0
    runs = tracker.trial_runs("asha")  # every trial ran within it
    first = runs["start_time"].min().timestamp() * 1000
    last = runs["end_time"].max().timestamp() * 1000
    assert search["start"] <= first and last <= search["end"]


def test_a_sweep_whose_every_trial_failed_fails(ray_session: None, mlflow_template: Path,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path, name="doomed", **{
        **QUICK, "parameters": {"lr": {"type": "categorical", "choices": [1e6, 2e6]}},
        "fixed": {**QUICK["fixed"], "epochs": 2}})
    store = new_store(tmp_path / "store", mlflow_template)
    flags = ["--mlflow-uri", sqlite_uri(store), "--storage", str(store / "ray")]
    assert main(["search", str(space), *flags]) == 1
    shown = capsys.readouterr()
    errors = [ln for ln in shown.err.splitlines() if "error" in ln]
    assert len(errors) == 1, shown.err
    assert errors[0].startswith("kdtune search: error: all 2 trials of sweep 'doomed' failed: ")
    assert "nan" in errors[0].lower() or "inf" in errors[0].lower(), errors[0]
    assert "finished" not in shown.out
    tracker = Tracker(sqlite_uri(store))
    assert tracker.sweep_run("doomed").info.status == "FAILED"
    assert main(["best", "--list", *flags, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["name"] == "doomed" and row["state"] == "FAILED"
    # export says why there is nothing to export, and not to resume
    assert main(["export", "doomed", "--format", "onnx", "--out", str(tmp_path / "s.onnx"),
                 "--mlflow-uri", sqlite_uri(store)]) == 2
    line = capsys.readouterr().err.strip()
    assert "all its 2 trials failed" in line and "resume" not in line, line


def _hold_driver_lock(uri: str, name: str) -> Any:
    """This process holds sweep ``name``'s driver lock, as a driver running it would."""
    from kdtune.tune.study import DriverLock, SweepStudy

    lock = DriverLock(SweepStudy(uri, name))
    lock.acquire()
    return lock


def test_a_sweep_of_a_file_running_now_gets_another_seed(
        ray_session: None, mlflow_template: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path, name="busy", **QUICK)
    store = new_store(tmp_path / "store", mlflow_template)
    flags = ["--mlflow-uri", sqlite_uri(store), "--storage", str(store / "ray")]
    lock = _hold_driver_lock(f"sqlite:///{store / 'optuna.db'}", "busy")
    try:
        assert main(["search", str(space), *flags]) == 0
    finally:
        lock.release()
    out = capsys.readouterr().out
    assert "sampler seed 4 (search.seed 3 + 1: 1 other sweep(s) of this file run now)" in out
    tracker = Tracker(sqlite_uri(store))
    assert tracker.sweep_names() == ["busy-2"]
    # the progress lines name each trial by its readable id
    shown = sorted(ln.split()[0] for ln in out.splitlines() if ln.startswith("busy-2#"))
    assert shown == sorted(tracker.trial_runs("busy-2")["tags.kdtune.id"]), out
    assert tracker.sweep_run("busy-2").data.params["sampler_seed"] == "4"
    # run again later (nothing else running): the file's own seed, so a rerun reproduces
    assert main(["search", str(space), *flags]) == 0
    assert tracker.sweep_run("busy").data.params["sampler_seed"] == "3"


def test_a_second_grid_of_a_file_running_now_is_refused(
        ray_session: None, mlflow_template: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path, name="grid", **{
        **QUICK, "search": {"sampler": "grid", "max_concurrent": 2, "seed": 0}})
    store = new_store(tmp_path / "store", mlflow_template)
    lock = _hold_driver_lock(f"sqlite:///{store / 'optuna.db'}", "grid")
    try:
        assert main(["search", str(space), "--mlflow-uri", sqlite_uri(store),
                     "--storage", str(store / "ray")]) == 2
    finally:
        lock.release()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a grid sweep of" in lines[0] and "runs now as 'grid'" in lines[0]
    assert Tracker(sqlite_uri(store)).sweep_names() == []


def test_the_teacher_is_said_to_be_trained_or_reused_before_it_is(asha_sweep: SweepRecord
                                                                  ) -> None:
    """The first driver says it trains the teacher; a later one (resume, finalize) that finds
    it says so first, and trains nothing."""
    import io

    from rich.console import Console

    from kdtune.tune.prepare import prepare_context
    from kdtune.tune.space import load_space
    from kdtune.tune.stores import Store

    lines = asha_sweep.output.splitlines()
    assert lines[0] == "training the teacher once on the driver ..."
    assert lines[1].startswith("teacher: ") and "reused" not in lines[1]
    buffer = io.StringIO()
    store = Store.resolve(asha_sweep.uri, str(asha_sweep.storage))
    prepare_context(load_space(asha_sweep.space), store, Console(file=buffer, width=300), 8)
    said = buffer.getvalue().splitlines()
    assert said[0] == f"{lines[1]} (trained earlier with the same config)", said
    assert not any("training the teacher" in ln or ln.startswith("epoch") for ln in said)
