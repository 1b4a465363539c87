"""`kdtune best`: formats, ranking, --config-out for `kdtune train`, answers from MLflow alone,
and the Pareto front of a multi-objective (NSGA-II) sweep."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdtune.cli import main
from kdtune.resolve import config_from_yaml
from kdtune.runs import decode_param
from kdtune.tracking import best_configs

from .conftest import (
    BASE_SPACE,
    SweepRecord,
    last_json,
    new_store,
    run_in_process,
    write_space,
)


def best_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    assert main(["best", *argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def finished_runs(record: SweepRecord) -> pd.DataFrame:
    runs = record.tracker().trial_runs(record.name)
    return runs[runs["status"] == "FINISHED"]


# -- one objective (the shared ASHA sweep) -------------------------------------------------------
def test_best_json_lists_finished_trials_best_first(asha_sweep: SweepRecord,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rows = best_json(capsys, "asha", *asha_sweep.cli_store())
    finished = finished_runs(asha_sweep)
    assert len(rows) == len(finished) >= 1  # KILLED trials are never "best"
    expected = finished.sort_values("metrics.val_accuracy", ascending=False, kind="stable")
    assert [r["trial_id"] for r in rows] == list(expected["trial_id"])
    assert [r["id"] for r in rows] == list(expected["tags.kdtune.id"])  # readable: asha#3
    assert all(r["id"].startswith("asha#") and r["id"][5:].isdigit() for r in rows)
    assert [r["val_accuracy"] for r in rows] == list(expected["metrics.val_accuracy"])
    first = rows[0]
    assert "test_accuracy" not in first  # validation only: search trials never read the test set
    assert {"run_id", "val_accuracy", "params", "latency_ms_b1",
            "speedup"} <= set(first)
    assert {"method", "hidden", "lr"} <= set(first)  # the searched parameters
    best = expected.iloc[0]
    assert first["run_id"] == best["run_id"]
    assert first["method"] == decode_param(best["params.method"])


def test_best_csv_and_table(asha_sweep: SweepRecord, capsys: pytest.CaptureFixture[str]) -> None:
    rows = best_json(capsys, "asha", *asha_sweep.cli_store())
    assert main(["best", "asha", *asha_sweep.cli_store(), "--format", "csv"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("id,trial_id,run_id,val_accuracy,")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [(r["id"], r["trial_id"], r["run_id"]) for r in parsed] == \
        [(r["id"], r["trial_id"], r["run_id"]) for r in rows]
    assert float(parsed[0]["val_accuracy"]) == pytest.approx(rows[0]["val_accuracy"])
    assert main(["best", "asha", *asha_sweep.cli_store()]) == 0
    table = capsys.readouterr().out
    assert "best of sweep 'asha'" in table
    assert all(r["id"] in table for r in rows)  # the readable id, not Ray's nor MLflow's
    assert rows[0]["trial_id"] not in table and rows[0]["run_id"] not in table


def test_best_top_and_other_metric(asha_sweep: SweepRecord,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    finished = finished_runs(asha_sweep)
    rows = best_json(capsys, "asha", *asha_sweep.cli_store(), "--top", "1")
    assert len(rows) == 1
    rows = best_json(capsys, "asha", *asha_sweep.cli_store(), "--metric", "latency_ms_b1")
    by_latency = finished.sort_values("metrics.latency_ms_b1", kind="stable")
    assert [r["trial_id"] for r in rows] == list(by_latency["trial_id"])
    assert "latency_ms_b1" in rows[0]
    # --top 0 and an unknown metric are one-line errors
    assert main(["best", "asha", *asha_sweep.cli_store(), "--top", "0"]) == 2
    assert main(["best", "asha", *asha_sweep.cli_store(), "--metric", "val_acc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "did you mean 'val_accuracy'" in err[1]


def test_best_unknown_sweep_exits_2(asha_sweep: SweepRecord,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["best", "ahsa", *asha_sweep.cli_store()]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdtune best: error: ")
    assert "'ahsa'" in lines[0] and "asha" in lines[0] and "Traceback" not in err
    assert out == ""


def test_config_out_retrains_with_kdtune_train(asha_sweep: SweepRecord, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "best.yaml"
    best_id = best_json(capsys, "asha", *asha_sweep.cli_store(), "--top", "1")[0]["id"]
    assert main(["best", "asha", *asha_sweep.cli_store(), "--top", "1",
                 "--config-out", str(out)]) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said == (f"config of {best_id} written to {out}; retrain with "
                    f"`kdtune train --config {out}`")
    written = yaml.safe_load(out.read_text())
    best = finished_runs(asha_sweep).sort_values("metrics.val_accuracy", ascending=False,
                                                 kind="stable").iloc[0]
    for key in ("method", "hidden", "lr", "epochs", "teacher", "dataset"):
        assert written[key] == decode_param(best[f"params.{key}"]), key
    assert "seeds" not in written and "out" not in written
    config_from_yaml(out)  # valid as it is

    assert main(["train", "--config", str(out), "--epochs", "1", "--json"]) == 0
    metrics = last_json(capsys.readouterr().out)
    assert metrics["epochs"] == 1 and 0 < metrics["test_accuracy"] <= 1


BEST_IN_A_FRESH_PROCESS = """
import contextlib, io, json, sys
from kdtune.cli import main
shown = io.StringIO()
with contextlib.redirect_stdout(shown):
    code = main({argv!r})
print(json.dumps({{"code": code, "shown": shown.getvalue(),
                  "imported": sorted(m for m in ("torch", "ray", "optuna", "kdtune.methods",
                                                 "kdtune.tune") if m in sys.modules)}}))
"""


@pytest.mark.parametrize("argv", [["best", "asha"], ["best", "--list"],
                                  ["best", "asha", "--format", "csv", "--top", "2"]])
def test_best_answers_from_mlflow_alone_without_torch_or_ray(
        argv: list[str], asha_sweep: SweepRecord, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``kdtune best`` (and ``--list``) in a fresh process: the answer it gives in this one,
    with no torch, Ray, Optuna, method registry or search layer imported on the way."""
    import os
    import subprocess
    import sys

    argv = [*argv, "--mlflow-uri", asha_sweep.uri]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", BEST_IN_A_FRESH_PROCESS.format(argv=argv)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["imported"] == [], report
    assert main(argv) == 0
    assert report["shown"] == capsys.readouterr().out


# -- several objectives ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nsga_sweep(ray_session: None, teacher_path: Path, mlflow_template: Path,
               tmp_path_factory: pytest.TempPathFactory) -> SweepRecord:
    """6 trials, NSGA-II on (val_accuracy max, params min), no ASHA; the session teacher."""
    root = tmp_path_factory.mktemp("nsga-sweep")
    parameters = dict(BASE_SPACE["parameters"])
    parameters["hidden"] = {"type": "categorical", "choices": [[8], [16], [32]]}
    space = write_space(
        root, name="nsga", teacher={"path": str(teacher_path)}, parameters=parameters,
        fixed={**BASE_SPACE["fixed"], "epochs": 4},
        objective=[{"metric": "val_accuracy", "mode": "max"},
                   {"metric": "params", "mode": "min"}],
        search={"num_samples": 6, "max_concurrent": 2, "sampler": "nsga2", "seed": 0},
        scheduler={"type": "none"})
    record = run_in_process(space, new_store(root / "store", mlflow_template))
    assert record.outcome.finished, record.output
    return record


def test_one_latency_per_architecture_in_a_sweep(nsga_sweep: SweepRecord) -> None:
    """6 finished trials over 3 widths: some share an architecture, and whichever of the two
    workers trained them, they report the one figure (and spread) the sweep's latency board
    holds."""
    runs = nsga_sweep.tracker().trial_runs("nsga")
    shared = 0
    for _, group in runs.groupby("params.hidden"):
        for metric in ("metrics.latency_ms_b1", "metrics.latency_ms_b256", "metrics.speedup",
                       "metrics.latency_ms_b1_iqr", "metrics.latency_ms_b256_iqr"):
            assert group[metric].nunique() == 1, group[["params.hidden", metric]]
        shared += len(group) > 1
    assert shared >= 1


def dominated(row: dict, others: pd.DataFrame) -> bool:
    acc, size = row["val_accuracy"], row["params"]
    better = ((others["metrics.val_accuracy"] >= acc) & (others["metrics.params"] <= size)
              & ((others["metrics.val_accuracy"] > acc) | (others["metrics.params"] < size)))
    return bool(better.any())


def test_multi_objective_best_is_the_pareto_front(nsga_sweep: SweepRecord, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    runs = nsga_sweep.tracker().trial_runs("nsga")
    assert len(runs) == 6 and set(runs["status"]) == {"FINISHED"}  # no scheduler: all finish
    rows = best_json(capsys, "nsga", *nsga_sweep.cli_store())
    assert rows and all({"val_accuracy", "params"} <= set(r) for r in rows)
    for row in rows:  # nothing listed is dominated by another finished trial ...
        assert not dominated(row, runs), row
    listed = {r["trial_id"] for r in rows}
    for _, run in runs.iterrows():  # ... and every non-dominated trial is listed
        row = {"val_accuracy": run["metrics.val_accuracy"], "params": run["metrics.params"]}
        if not dominated(row, runs):
            assert run["trial_id"] in listed
    assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows),
                                                       reverse=True)

    # one metric of the two, top 2
    top = best_json(capsys, "nsga", *nsga_sweep.cli_store(), "--metric", "val_accuracy",
                    "--top", "2")
    assert len(top) == 2 and top[0]["val_accuracy"] >= top[1]["val_accuracy"]
    # the Python API says the same
    frame = best_configs("nsga", tracking_uri=nsga_sweep.uri)
    assert list(frame["trial_id"]) == [r["trial_id"] for r in rows]

    # MLflow alone: the Ray storage gone, the answer is the same ...
    shutil.rmtree(nsga_sweep.storage)
    assert best_json(capsys, "nsga", *nsga_sweep.cli_store()) == rows
    # ... and from a copy of the database as the default store of another folder, no flags
    db = Path(nsga_sweep.uri.removeprefix("sqlite:///"))
    (tmp_path / "kdtune-runs").mkdir()
    shutil.copy(db, tmp_path / "kdtune-runs" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    assert best_json(capsys, "nsga") == rows
