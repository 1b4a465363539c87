"""What the stored Optuna study gives users, each run the way a user runs it (``kdtune`` through
its CLI, the session's Ray, a real MLflow store): extending a finished sweep, warm-starting
one sweep from another, listing sweeps, parameter importances, optuna-dashboard, and
multi-objective early stopping on Pareto rank."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kdtune.cli import main
from kdtune.tune.scheduler import rung_keeps
from kdtune.tune.study import SweepStudy

from .conftest import BASE_SPACE, SweepRecord, new_store, sqlite_uri, write_space

REPO = Path(__file__).resolve().parents[2]


def store_flags(store: Path) -> list[str]:
    return ["--mlflow-uri", sqlite_uri(store), "--storage", str(store / "ray")]


def study_at(store: Path, name: str) -> SweepStudy:
    return SweepStudy(f"sqlite:///{store.resolve() / 'optuna.db'}", name)


def json_rows(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_sweep(ray_session: None, mlflow_template: Path, teacher_path: Path,
                tmp_path_factory: pytest.TempPathFactory) -> SweepRecord:
    """A finished 4-trial TPE sweep (no early stopping), extended by the first test."""
    root = tmp_path_factory.mktemp("small-sweep")
    space = write_space(root, name="small", teacher={"path": str(teacher_path)},
                        fixed={**BASE_SPACE["fixed"], "epochs": 2},
                        search={"num_samples": 4, "max_concurrent": 2, "sampler": "tpe",
                                "seed": 3},
                        scheduler={"type": "none"})
    store = new_store(root / "store", mlflow_template)
    assert main(["search", str(space), *store_flags(store)]) == 0
    return SweepRecord("small", space, sqlite_uri(store), store / "ray", None, "")


def test_resume_with_more_samples_extends_a_finished_sweep(
        small_sweep: SweepRecord, capsys: pytest.CaptureFixture[str]) -> None:
    store = small_sweep.storage.parent
    tracker = small_sweep.tracker()
    before = tracker.trial_runs("small")
    assert len(before) == 4
    study = study_at(store, "small")
    configs_before = {json.dumps(t.params, sort_keys=True) for t in study.sweep_trials().values()}
    capsys.readouterr()

    assert main(["resume", "small", "--num-samples", "6", *store_flags(store)]) == 0
    out = capsys.readouterr().out
    assert "4 of 6 trials so far" in out and "finished: 6 trials" in out
    after = tracker.trial_runs("small")
    assert len(after) == 6 and after["trial_id"].is_unique
    assert set(before["run_id"]) < set(after["run_id"])  # the first four untouched, two more
    assert tracker.sweep_run("small").info.status == "FINISHED"
    assert tracker.sweep_run("small").data.tags["kdtune.num_samples"] == "6"
    trials = study_at(store, "small").sweep_trials()
    assert set(trials) == set(after["trial_id"])
    configs = {json.dumps(t.params, sort_keys=True) for t in trials.values()}
    assert len(configs) == 6 and configs_before < configs  # the searcher went on, no repeat
    # the extension ran as a second Ray experiment inside the sweep's folder
    assert len(list((small_sweep.experiment_dir / "extend-2").glob("trial_*"))) == 2

    # asking for fewer trials than it has is a one-line error
    assert main(["resume", "small", "--num-samples", "3", *store_flags(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fewer than the 6 trials" in err


def test_best_lists_the_sweeps(small_sweep: SweepRecord,
                               capsys: pytest.CaptureFixture[str]) -> None:
    store = small_sweep.storage.parent
    assert main(["best", "--list", *store_flags(store), "--format", "json"]) == 0
    rows = json_rows(capsys)
    (row,) = [r for r in rows if r["name"] == "small"]
    runs = small_sweep.tracker().trial_runs("small")
    assert row["state"] == "FINISHED" and row["objective"] == "val_accuracy"
    assert row["trials"] == f"{len(runs)}/{len(runs)}"
    assert row["best"] == pytest.approx(runs["metrics.val_accuracy"].max())


def test_best_importance_reads_the_study(small_sweep: SweepRecord,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    store = small_sweep.storage.parent
    assert main(["best", "small", "--importance", *store_flags(store), "--format", "json"]) == 0
    rows = json_rows(capsys)
    assert rows and {r["parameter"] for r in rows} <= set(BASE_SPACE["parameters"])
    assert sum(r["val_accuracy"] for r in rows) == pytest.approx(1.0)  # normalised by Optuna


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_serves_the_study(small_sweep: SweepRecord, tmp_path: Path) -> None:
    store = small_sweep.storage.parent
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdtune", "dashboard", "small",
                             "--port", str(port), *store_flags(store)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, proc.stdout.read() if proc.stdout else ""
        (summary,) = [s for s in studies if s["study_name"] == "small"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/"
                                    f"{summary['study_id']}", timeout=10) as r:
            detail = json.loads(r.read())
        trials = study_at(store, "small").sweep_trials()
        listed = {t["number"] for t in detail["trials"]}
        assert {t.number for t in trials.values()} <= listed
        # it listens on 127.0.0.1 only
        import psutil

        listening = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_warm_start_runs_the_best_configs_of_another_sweep_first(
        small_sweep: SweepRecord, tmp_path: Path, teacher_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = small_sweep.storage.parent
    space = write_space(tmp_path, name="warm", teacher={"path": str(teacher_path)},
                        fixed={**BASE_SPACE["fixed"], "epochs": 2},
                        search={"num_samples": 3, "max_concurrent": 1, "sampler": "tpe",
                                "seed": 9, "warm_start": {"from": "small", "top": 2}},
                        scheduler={"type": "none"})
    assert main(["search", str(space), *store_flags(store)]) == 0
    assert "warm start: 2 configuration(s) of sweep 'small'" in capsys.readouterr().out
    import optuna

    from kdtune.runs import config_from_run
    from kdtune.tune.space import load_space, params_in_space, suggest

    loaded = load_space(space)
    best_small = small_sweep.tracker().best_configs("small", metrics=["val_accuracy"],
                                                    modes=["max"])
    wanted = [c for c in (params_in_space(loaded, config_from_run(r))
                          for _, r in best_small.iterrows()) if c is not None][:2]
    warm = study_at(store, "warm")
    first_two = sorted(warm.sweep_trials().values(), key=lambda t: t.number)[:2]
    assert [suggest(optuna.trial.FixedTrial(t.params), loaded) for t in first_two] == wanted
    assert len(warm.sweep_trials()) == 3  # the warm configs count toward num_samples
    assert len(study_at(store, "small").sweep_trials()) == 6  # the other study is untouched


def test_multi_objective_asha_stops_on_pareto_rank(ray_session: None, mlflow_template: Path,
                                                   teacher_path: Path, tmp_path: Path) -> None:
    """accuracy x parameters: at some rung a trial among the most accurate is dominated
    (as accurate or less, and bigger) and stopped: ranking on accuracy alone kept it."""
    space = write_space(tmp_path, name="mo", teacher={"path": str(teacher_path)},
                        fixed={**BASE_SPACE["fixed"], "epochs": 4},
                        parameters={
                            "hidden": {"type": "categorical",
                                       "choices": [[4], [8], [16], [32], [64]]},
                            "lr": {"type": "logfloat", "low": 0.02, "high": 0.3}},
                        objective=[{"metric": "val_accuracy", "mode": "max"},
                                   {"metric": "params", "mode": "min"}],
                        search={"num_samples": 10, "max_concurrent": 1, "sampler": "nsga2",
                                "seed": 1},
                        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    store = new_store(tmp_path / "store", mlflow_template)
    assert main(["search", str(space), *store_flags(store)]) == 0
    rf, pareto_only = 2, []
    trials = study_at(store, "mo").sweep_trials()
    for milestone in (1, 2):
        key = f"rung_{milestone}"
        records = sorted((t.user_attrs[key] | {"id": i} for i, t in trials.items()
                          if key in t.user_attrs), key=lambda r: r["order"])
        for r in records:
            earlier = [x["values"] for x in records if x["order"] < r["order"]]
            assert r["keep"] == rung_keeps([*earlier, r["values"]], ["max", "min"], rf)
            by_accuracy = rung_keeps([[v[0]] for v in earlier] + [[r["values"][0]]], ["max"], rf)
            if not r["keep"] and by_accuracy:
                pareto_only.append(r["id"])
    assert pareto_only, "no trial was stopped that accuracy alone would have kept"
    runs = SweepRecord("mo", space, sqlite_uri(store), store / "ray", None, "").tracker() \
        .trial_runs("mo").set_index("trial_id")
    for trial_id in pareto_only:
        assert runs.loc[trial_id, "status"] == "KILLED"
    # every result carried the cost objectives from epoch 1 on, so each rung has them
    assert all(len(t.user_attrs["rung_1"]["values"]) == 2 for t in trials.values())
