"""A real sweep end to end (local Ray, Optuna, ASHA, SQLite MLflow), and `kdtune search` on bad
input.

The 8-trial sweep (``asha_sweep`` in conftest) runs once; these tests read its MLflow record,
its Ray experiment folder and the Optuna study that the searcher saved there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from optuna.trial import TrialState

import kdtune
from kdtune.cli import main
from kdtune.resolve import config_from_dict
from kdtune.runs import decode_param, run_config
from kdtune.vocabulary import LATENCY_SPREAD_METRICS, TEACHER_LATENCY_SPREAD

from .conftest import BASE_SPACE, SweepRecord, sqlite_uri, write_space

EPOCHS = BASE_SPACE["fixed"]["epochs"]
FINAL = ("params", "flops", "latency_ms_b1", "latency_ms_b256", "speedup",
         "train_time_s")
SPREADS = (*LATENCY_SPREAD_METRICS, TEACHER_LATENCY_SPREAD)
RUNGS = {1, 2, 4}  # grace 1, reduction factor 2, max_t 6


def searched_params(record: SweepRecord) -> dict[str, dict[str, Any]]:
    """Ray trial id -> the parameters Ray gave the trial (its ``params.json``)."""
    import json

    out = {}
    for folder in record.experiment_dir.glob("trial_*"):
        out[folder.name.removeprefix("trial_")] = json.loads((folder / "params.json").read_text())
    return out


def study_of(record: SweepRecord) -> Any:
    """The sweep's Optuna study, in the study storage beside its MLflow store."""
    from kdtune.tune.study import SweepStudy

    url = record.tracker().sweep_run(record.name).data.tags["kdtune.study_storage"]
    return SweepStudy(url, record.name)


def study_trials_by_ray_id(record: SweepRecord) -> dict[str, Any]:
    return study_of(record).sweep_trials()


# -- the MLflow record --------------------------------------------------------------------------
def test_one_parent_and_one_child_run_per_trial(asha_sweep: SweepRecord) -> None:
    tracker = asha_sweep.tracker()
    sweeps = tracker.list_sweeps()
    assert list(sweeps["name"]) == ["asha"]
    runs = tracker.trial_runs("asha")
    assert len(runs) == 8 and runs["trial_id"].is_unique
    assert set(runs["trial_id"]) == set(searched_params(asha_sweep))
    assert set(runs["status"]) <= {"FINISHED", "KILLED"}
    # ASHA stopped some trials and let others through
    assert (runs["status"] == "KILLED").any(), runs[["trial_id", "status"]]
    assert (runs["status"] == "FINISHED").any(), runs[["trial_id", "status"]]


def test_parent_run_is_finished_and_tagged(asha_sweep: SweepRecord) -> None:
    tracker = asha_sweep.tracker()
    parent = tracker.sweep_run("asha")
    assert parent.info.status == "FINISHED"
    tags, params = parent.data.tags, parent.data.params
    digest = hashlib.sha256(asha_sweep.space.read_bytes()).hexdigest()
    assert tags["kdtune.space_sha256"] == digest
    assert tags["kdtune.space_file"] == str(asha_sweep.space)
    assert tags["kdtune.version"] == kdtune.__version__
    assert tags["kdtune.git_sha"]
    assert tags["kdtune.ray_address"] == "local"
    assert tags["kdtune.storage"] == str(asha_sweep.experiment_dir)
    assert tags["kdtune.num_samples"] == "8" and params["objective.metrics"] == "val_accuracy"
    assert tags["kdtune.study_storage"] == f"sqlite:///{asha_sweep.storage.parent}/optuna.db"
    assert params["searched"].split(",") == list(BASE_SPACE["parameters"])
    assert Path(params["teacher"]).is_file()  # trained once, on the driver
    artifacts = [a.path for a in tracker.client.list_artifacts(parent.info.run_id)]
    assert asha_sweep.space.name in artifacts


def test_child_params_are_the_full_resolved_config(asha_sweep: SweepRecord,
                                                    tmp_path: Path) -> None:
    tracker = asha_sweep.tracker()
    searched = searched_params(asha_sweep)
    teacher = tracker.sweep_run("asha").data.params["teacher"]
    for _, row in tracker.trial_runs("asha").iterrows():
        run = tracker.client.get_run(row["run_id"])
        params = run.data.params
        config = run_config(params)
        assert set(params) == set(config.to_dict()) | {"seeds"}  # the method's own keys only
        # fixed + the trial's own parameters + what the search layer fills in
        assert (config.dataset, config.model, config.epochs, config.batch_size) == \
            ("digits", "mlp", EPOCHS, 64)
        assert config.teacher == teacher and config.device == "cpu" and config.seed == 0
        assert decode_param(params["seeds"]) == [0]
        flat = config.to_dict()
        for key, value in searched[row["trial_id"]].items():
            got = flat[key]
            assert (list(got) if isinstance(got, tuple) else got) == pytest.approx(value), key
        # the resolved config is also an artifact, readable by `kdtune train --config` (without
        # `out`: training from it again writes nowhere unless told)
        local = tracker.client.download_artifacts(row["run_id"], "config.yaml", str(tmp_path))
        on_disk = yaml.safe_load(Path(local).read_text())
        assert on_disk == {k: decode_param(v) for k, v in params.items() if k != "out"}


def test_per_epoch_history_and_final_metrics(asha_sweep: SweepRecord) -> None:
    tracker = asha_sweep.tracker()
    for _, row in tracker.trial_runs("asha").iterrows():
        run_id, status = row["run_id"], row["status"]
        history = tracker.client.get_metric_history(run_id, "val_accuracy")
        steps = [m.step for m in history]
        last = EPOCHS if status == "FINISHED" else int(row["tags.kdtune.rung"])
        assert steps == list(range(1, last + 1)), (row["trial_id"], status, steps)
        assert row["metrics.val_accuracy"] == history[-1].value
        if status == "FINISHED":
            for name in FINAL:
                assert row[f"metrics.{name}"] > 0, name
            for name in SPREADS:  # each latency figure's spread, beside it
                assert row[f"metrics.{name}"] >= 0, name
            assert "metrics.test_accuracy" not in row  # search trials never read the test set
        else:  # KILLED by ASHA at a rung, with the rung as a tag
            assert status == "KILLED"
            assert last in RUNGS and last < EPOCHS
            assert row["metrics.train_time_s"] > 0  # the compute it used, for cost accounting


def test_trials_report_their_time_in_the_trainer(asha_sweep: SweepRecord) -> None:
    """``trainer_s`` (Ray's record only) grows each epoch and holds the training loop plus
    what the trainer does beside it (building the run, validation), never less."""
    import json

    from kdtune.tune.trainable import TRAINER_KEY

    folders = list(asha_sweep.experiment_dir.glob("trial_*"))
    assert len(folders) == 8
    for folder in folders:
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
        in_trainer = [r[TRAINER_KEY] for r in rows]
        assert in_trainer == sorted(in_trainer) and len(set(in_trainer)) == len(rows)
        for r in rows:
            assert r[TRAINER_KEY] > r["elapsed_s"] > 0
    runs = asha_sweep.tracker().trial_runs("asha")
    assert not any(TRAINER_KEY in c for c in runs.columns)  # not an MLflow metric


def test_best_student_weights_are_logged(asha_sweep: SweepRecord, tmp_path: Path) -> None:
    tracker = asha_sweep.tracker()
    runs = tracker.trial_runs("asha")
    finished = runs[runs["status"] == "FINISHED"]
    best = finished.sort_values("metrics.val_accuracy", ascending=False, kind="stable").iloc[0]
    with_weights = [r for r in runs["run_id"]
                    if "student.pt" in {a.path for a in tracker.client.list_artifacts(r)}]
    assert with_weights == [best["run_id"]]
    local = tracker.client.download_artifacts(best["run_id"], "student.pt", str(tmp_path))
    saved = torch.load(local, weights_only=True)
    assert saved["format"] == "kdtune-student/1"
    config = config_from_dict(saved["config"])
    assert config.hidden == tuple(decode_param(best["params.hidden"]))
    # the weights are the trained student's: its first layer has the configured width
    first = next(v for k, v in saved["state_dict"].items() if k.endswith("weight"))
    assert first.shape == (config.hidden[0], 64)


def test_asha_rungs_are_saved_in_the_study(asha_sweep: SweepRecord) -> None:
    """Every rung decision is on the study's trial, with the value it was made on."""
    by_id = study_trials_by_ray_id(asha_sweep)
    runs = asha_sweep.tracker().trial_runs("asha")
    for _, row in runs.iterrows():
        attrs = by_id[row["trial_id"]].user_attrs
        decided = {int(k.removeprefix("rung_")): v for k, v in attrs.items()
                   if k.startswith("rung_")}
        last = EPOCHS if row["status"] == "FINISHED" else int(row["tags.kdtune.rung"])
        assert set(decided) == {r for r in RUNGS if r <= last}, (row["trial_id"], decided)
        for rung, record in decided.items():
            assert record["keep"] == (rung != last or row["status"] == "FINISHED")
            history = asha_sweep.tracker().client.get_metric_history(row["run_id"],
                                                                    "val_accuracy")
            assert record["values"] == [pytest.approx(h.value) for h in history
                                        if h.step == rung]


# -- the Optuna side ----------------------------------------------------------------------------
def test_conditional_parameters_absent_in_optuna(asha_sweep: SweepRecord) -> None:
    trials = list(study_trials_by_ray_id(asha_sweep).values())
    assert len(trials) == 8
    methods = {t.params["method"] for t in trials}
    assert methods == {"none", "vanilla", "two_temperature"}, methods  # every branch sampled
    for t in trials:
        keys = set(t.params)
        method = t.params["method"]
        assert {"method", "hidden", "lr"} <= keys
        assert ("t_right" in keys) == ("t_wrong" in keys) == (method == "two_temperature")
        assert ("alpha" in keys) == (method != "none")
        assert ("temperature" in keys) == (method == "vanilla")
    # and the Ray trials got exactly those parameters
    searched = searched_params(asha_sweep)
    for trial_id, t in study_trials_by_ray_id(asha_sweep).items():
        assert set(searched[trial_id]) == set(t.params)


def test_optuna_sees_asha_stopped_trials_as_pruned(asha_sweep: SweepRecord) -> None:
    by_id = study_trials_by_ray_id(asha_sweep)
    runs = asha_sweep.tracker().trial_runs("asha")
    assert set(by_id) == set(runs["trial_id"])
    for _, row in runs.iterrows():
        t = by_id[row["trial_id"]]
        if row["status"] == "KILLED":
            rung = int(row["tags.kdtune.rung"])
            assert t.state == TrialState.PRUNED, (row["trial_id"], t.state)
            # every epoch it trained, up to the rung that stopped it, as intermediate values
            assert sorted(t.intermediate_values) == list(range(1, rung + 1))
            assert t.intermediate_values[rung] == pytest.approx(row["metrics.val_accuracy"])
        else:
            assert t.state == TrialState.COMPLETE, (row["trial_id"], t.state)
            assert t.value == pytest.approx(row["metrics.val_accuracy"])
            assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))


def test_resume_of_a_finished_sweep_does_nothing(asha_sweep: SweepRecord,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tracker = asha_sweep.tracker()
    before = tracker.trial_runs("asha")[["run_id", "status", "end_time"]]
    assert main(["resume", "asha", *asha_sweep.cli_store()]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out
    after = tracker.trial_runs("asha")[["run_id", "status", "end_time"]]
    assert before.equals(after)


# -- a grid ---------------------------------------------------------------------------------------
def test_a_whole_conditional_grid_runs_each_configuration_once(
        ray_session: None, mlflow_template: Path, teacher_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``sampler: grid`` through ``kdtune search``: conditions, lists as values, ASHA."""
    import json

    from kdtune.tune.space import expand_grid, load_space

    space = write_space(tmp_path, name="grid", teacher={"path": str(teacher_path)},
                        fixed={**BASE_SPACE["fixed"], "epochs": 2}, parameters={
        "method": {"type": "categorical", "choices": ["none", "vanilla"]},
        "temperature": {"type": "categorical", "choices": [2, 4], "when": {"method": ["vanilla"]}},
        "hidden": {"type": "categorical", "choices": [[8], [8, 8]]}},
        search={"sampler": "grid", "max_concurrent": 2})
    grid = expand_grid(load_space(space))
    assert len(grid) == 6
    store = tmp_path / "store"
    flags = ["--mlflow-uri", sqlite_uri(store), "--storage", str(store / "ray")]
    assert main(["search", str(space), *flags]) == 0, capsys.readouterr()
    assert "sweep 'grid': 6 trials" in capsys.readouterr().out
    record = SweepRecord("grid", space, sqlite_uri(store), store / "ray", None, "")
    trained = sorted(json.dumps(c, sort_keys=True) for c in searched_params(record).values())
    assert trained == sorted(json.dumps(c, sort_keys=True) for c in grid)  # each once
    runs = record.tracker().trial_runs("grid")
    assert len(runs) == 6 and set(runs["trial_id"]) == set(searched_params(record))
    assert main(["best", "grid", *flags, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rows and {r["trial_id"] for r in rows} <= set(runs["trial_id"])


# -- bad input ----------------------------------------------------------------------------------
def _store_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() \
        else []


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"kdtune {command}: error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", ["missing-file", "unknown-key", "zero-samples"])
def test_search_bad_input_exits_2_and_writes_nothing(case: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default store would be ./kdtune-runs
    store = tmp_path / "store"
    space = tmp_path / "nope.yaml"
    extra: list[str] = []
    if case == "unknown-key":
        space = write_space(tmp_path, search={**BASE_SPACE["search"], "num_sample": 3})
    elif case == "zero-samples":
        space = write_space(tmp_path)
        extra = ["--num-samples", "0"]
    argv = ["search", str(space), "--mlflow-uri", sqlite_uri(store),
            "--storage", str(store / "ray"), *extra]
    assert main(argv) == 2
    line = _one_line_error(capsys, "search")
    expected = {"missing-file": "nope.yaml", "unknown-key": "search.num_sample",
                "zero-samples": "--num-samples 0"}[case]
    assert expected in line
    assert not store.exists() and not (tmp_path / "kdtune-runs").exists()


def test_search_with_a_taken_name_exits_2(asha_sweep: SweepRecord, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    tracker = asha_sweep.tracker()
    parents_before = list(tracker.list_sweeps()["run_id"])
    files_before = _store_files(asha_sweep.storage)
    # same storage: the Ray experiment folder exists
    assert main(["search", str(asha_sweep.space), "--name", "asha",
                 *asha_sweep.cli_store()]) == 2
    assert "already exists" in _one_line_error(capsys, "search")
    # another storage, same MLflow store: the name is taken there
    other = tmp_path / "ray"
    assert main(["search", str(asha_sweep.space), "--name", "asha", "--mlflow-uri",
                 asha_sweep.uri, "--storage", str(other)]) == 2
    assert "already exists" in _one_line_error(capsys, "search")
    assert list(tracker.list_sweeps()["run_id"]) == parents_before
    assert _store_files(asha_sweep.storage) == files_before
    assert not (other / "asha").exists()


def test_resume_unknown_sweep_exits_2(asha_sweep: SweepRecord, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", "ashaa", *asha_sweep.cli_store()]) == 2
    line = _one_line_error(capsys, "resume")
    assert "'ashaa'" in line and "did you mean 'asha'" in line
    # no store at all: nothing is created
    store = tmp_path / "none"
    assert main(["resume", "asha", "--mlflow-uri", sqlite_uri(store), "--storage",
                 str(store / "ray")]) == 2
    _one_line_error(capsys, "resume")
    assert not store.exists()

