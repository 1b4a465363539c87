"""``kdtune finalize`` run the way a user runs it (the CLI, the session's Ray, a real MLflow
store): finalists chosen on validation, re-trained on fresh seeds beside their baselines, the
test set read only here, the intervals computed from the logged runs, and the finalist runs
kept apart from the sweep's trials."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from kdtune.cli import main
from kdtune.finalize import (
    finalist_jobs,
    fresh_seeds,
    job_key,
    summarise,
    t_interval,
    trial_id_of,
)
from kdtune.resolve import config_from_dict
from kdtune.runs import run_config
from kdtune.sweep_results import final_mask

from .conftest import BASE_SPACE, SweepRecord, new_store, sqlite_uri, write_space

TOP, SEEDS = 2, 2


@pytest.fixture(scope="module")
def finalized(ray_session: None, mlflow_template: Path, teacher_path: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepRecord, Any, list[str]]:
    """A finished 4-trial sweep (seed 0), then ``kdtune finalize --top 2 --seeds 2``."""
    root = tmp_path_factory.mktemp("finalize")
    space = write_space(root, name="fin", teacher={"path": str(teacher_path)},
                        fixed={**BASE_SPACE["fixed"], "epochs": 2},
                        parameters={
                            "method": {"type": "categorical", "choices": ["none", "vanilla"]},
                            "hidden": {"type": "categorical", "choices": [[8], [16]]},
                            "lr": {"type": "categorical", "choices": [0.05, 0.1]}},
                        search={"sampler": "grid", "num_samples": 4, "max_concurrent": 2,
                                "seed": 0},
                        scheduler={"type": "none"})
    store = new_store(root / "store", mlflow_template)
    flags = ["--mlflow-uri", sqlite_uri(store), "--storage", str(store / "ray")]
    assert main(["search", str(space), *flags]) == 0
    record = SweepRecord("fin", space, sqlite_uri(store), store / "ray", None, "")
    best_before = record.tracker().best_configs("fin", metrics=["val_accuracy"],
                                                modes=["max"], top=TOP)
    return record, best_before, flags


def test_finalists_train_on_fresh_seeds_beside_their_baselines(
        finalized: tuple[SweepRecord, Any, list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    record, best, flags = finalized
    capsys.readouterr()
    assert main(["finalize", "fin", "--top", str(TOP), "--seeds", str(SEEDS), *flags,
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tracker = record.tracker()
    runs = tracker.final_runs("fin")
    assert (runs["tags.kdtune.stage"] == "final").all()
    roles = runs["tags.kdtune.role"]
    kd, alone = runs[roles == "kd"], runs[roles == "student_alone"]
    assert (roles == "teacher").sum() == 1
    chosen = [trial_id_of(r) for _, r in best.iterrows()]
    assert all(c.startswith("fin#") for c in chosen)  # readable ids: NAME#<Optuna number>
    assert len(kd) == TOP * SEEDS and set(kd["tags.kdtune.finalist"]) == set(chosen)
    assert set(kd["tags.kdtune.id"]) == {f"{c}/seed{s}" for c in chosen for s in (1, 2)}
    assert {json.loads(s) for s in runs.loc[roles != "teacher", "params.seed"]} == \
        set(fresh_seeds([0], SEEDS)) == {1, 2}  # seeds the sweep did not use
    assert set(alone["params.method"]) == {"none"} and len(alone) % SEEDS == 0
    assert runs.loc[roles != "teacher", "metrics.test_accuracy"].between(0, 1).all()
    assert (runs["status"] == "FINISHED").all()
    # one latency per architecture, with its spread: the one the sweep's trials reported
    # (the sweep's board)
    trials = tracker.trial_runs("fin")
    for hidden, group in runs[roles != "teacher"].groupby("params.hidden"):
        for metric in ("metrics.latency_ms_b1", "metrics.latency_ms_b1_iqr"):
            sweep_figure = trials.loc[trials["params.hidden"] == hidden, metric]
            assert set(group[metric]) == {sweep_figure.iloc[0]}, (hidden, metric)
    teacher_run = runs[roles == "teacher"].iloc[0]  # the teacher's, as the trials reported it
    for metric, teacher_metric in (("latency_ms_b256", "teacher_latency_ms_b256"),
                                   ("latency_ms_b256_iqr", "teacher_latency_ms_b256_iqr")):
        assert teacher_run[f"metrics.{metric}"] == \
            trials[f"metrics.{teacher_metric}"].dropna().iloc[0]
    for hidden, group in kd.groupby("params.hidden"):  # and the same speedup over the teacher
        sweep_speedup = trials.loc[trials["params.hidden"] == hidden, "metrics.speedup"]
        assert set(group["metrics.speedup"]) == {sweep_speedup.iloc[0]}, hidden

    # the table: the logged numbers, with t-intervals over the seeds
    rows = {r["finalist"]: r for r in out["finalists"]}
    assert [r["finalist"] for r in out["finalists"]] == chosen  # best first
    teacher = out["teacher_test_accuracy"]
    assert teacher == runs.loc[roles == "teacher", "metrics.test_accuracy"].iloc[0]
    for finalist, row in rows.items():
        mine = kd[kd["tags.kdtune.finalist"] == finalist].sort_values("params.seed")
        values = list(mine["metrics.test_accuracy"])
        assert row["seeds"] == SEEDS
        assert row["test_accuracy"] == pytest.approx(statistics.fmean(values))
        assert row["ci95"] == pytest.approx(list(t_interval(values)))
        config = {k: json.loads(mine.iloc[0][f"params.{k}"]) if k != "method"
                  else mine.iloc[0]["params.method"] for k in ("method", "hidden", "lr")}
        base = alone[(alone["params.hidden"] == mine.iloc[0]["params.hidden"])
                     & (alone["params.lr"] == mine.iloc[0]["params.lr"])
                     ].sort_values("params.seed")
        assert len(base) == SEEDS, config
        paired = [a - b for a, b in zip(values, base["metrics.test_accuracy"], strict=True)]
        assert row["gain"] == pytest.approx(statistics.fmean(paired))
        if row["gain_ci95"] is not None:
            low, high = row["gain_ci95"]
            assert row["significant"] == (not low <= 0 <= high)
        if "gap_closed" in row:
            assert row["gap_closed"] == pytest.approx(
                row["gain"] / (teacher - row["student_alone"]))
    # the same table on the parent run
    parent = tracker.sweep_run("fin").info.run_id
    names = {a.path for a in tracker.client.list_artifacts(parent, "finalize")}
    assert {"finalize/finalists.json", "finalize/finalists.csv"} <= names


def test_finalize_again_trains_nothing_and_shows_the_same_table(
        finalized: tuple[SweepRecord, Any, list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    record, _, flags = finalized
    before = record.tracker().final_runs("fin")
    capsys.readouterr()
    argv = ["finalize", "fin", "--top", str(TOP), "--seeds", str(SEEDS), *flags]
    assert main([*argv, "--format", "json"]) == 0
    out = capsys.readouterr().out
    needed = len(before) - 1  # every run but the teacher's
    assert f"{needed} runs, {needed} finished already (reused), 0 to train" in out
    assert set(record.tracker().final_runs("fin")["run_id"]) == set(before["run_id"])
    rows = json.loads(out.strip().splitlines()[-1])["finalists"]
    assert len(rows) == TOP and all(r["seeds"] == SEEDS for r in rows)


def test_export_takes_and_names_a_finalists_seed_run(
        finalized: tuple[SweepRecord, Any, list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Once finalize has run, ``kdtune export`` writes the best finalist's run, says which by
    its readable id (``fin#N/seedS``), and takes that id as ``--trial``."""
    record, _, flags = finalized
    assert main(["finalize", "fin", "--top", str(TOP), "--seeds", str(SEEDS), *flags]) == 0
    capsys.readouterr()
    store = flags[:2]  # --mlflow-uri URI
    assert main(["export", "fin", "--format", "pt2", "--out", str(tmp_path / "a.pt2"),
                 *store]) == 0
    said = capsys.readouterr().out
    match = re.match(r"exported (fin#\d+/seed\d+) of sweep 'fin' \(Ray trial \S+, MLflow run "
                     r"(\w+)\)", said)
    assert match, said
    label, run_id = match.groups()
    tracker = record.tracker()
    runs, trials = tracker.final_runs("fin"), tracker.trial_runs("fin")
    row = runs[runs["run_id"] == run_id].iloc[0]
    assert row["tags.kdtune.id"] == label and row["tags.kdtune.role"] == "kd"
    finalist = row["tags.kdtune.finalist"]  # the trial it re-trains
    trial = trials[(trials["trial_id"] == finalist) | (trials["tags.kdtune.id"] == finalist)
                   ].iloc[0]
    assert label == f"{trial['tags.kdtune.id']}/seed{json.loads(row['params.seed'])}"
    assert main(["export", "fin", "--format", "pt2", "--out", str(tmp_path / "b.pt2"),
                 "--trial", label, *store]) == 0
    assert capsys.readouterr().out.startswith(f"exported {label} of sweep 'fin' ")
    assert json.loads((tmp_path / "b.pt2.json").read_text())["run_id"] == run_id


def test_the_sweep_is_untouched_and_never_read_the_test_set(
        finalized: tuple[SweepRecord, Any, list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    record, best, flags = finalized
    tracker = record.tracker()
    trials = tracker.trial_runs("fin")
    assert len(trials) == 4 and "tags.kdtune.stage" not in trials.columns
    assert "metrics.test_accuracy" not in trials.columns  # search trials never read it
    after = tracker.best_configs("fin", metrics=["val_accuracy"], modes=["max"], top=TOP)
    assert list(after["trial_id"]) == list(best["trial_id"])
    # best refuses to rank by the test set, in one line
    capsys.readouterr()
    assert main(["best", "fin", "--metric", "test_accuracy", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "never used to choose" in err
    # extending the sweep leaves the finalist runs where they are, and they are not counted
    final_before = set(tracker.final_runs("fin")["run_id"])
    assert main(["resume", "fin", "--num-samples", "5", *flags]) == 0
    assert set(tracker.final_runs("fin")["run_id"]) == final_before
    assert len(tracker.trial_runs("fin")) == 5


def test_a_larger_request_trains_exactly_the_missing_runs(
        finalized: tuple[SweepRecord, Any, list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """After the sweep grew to 5 trials: the top 3 of all 5, 3 seeds each. Finished runs of
    earlier requests are reused, each missing run trains once, the table shows 3 x 3."""
    record, _, flags = finalized
    tracker = record.tracker()
    before = tracker.final_runs("fin")
    top = tracker.best_configs("fin", metrics=["val_accuracy"], modes=["max"], top=3)
    jobs = finalist_jobs(top, fresh_seeds([0], 3))
    capsys.readouterr()
    assert main(["finalize", "fin", "--top", "3", "--seeds", "3", *flags,
                 "--format", "json"]) == 0
    out = capsys.readouterr().out
    runs = tracker.final_runs("fin")
    work = runs[runs["tags.kdtune.role"] != "teacher"]
    keys = [_key(r) for _, r in work.iterrows()]
    assert len(keys) == len(set(keys))  # no run trained twice
    wanted = {job_key(j["role"], j["finalist"], _config(j["params"]), j["seed"]) for j in jobs}
    assert wanted <= set(keys) and (work["status"] == "FINISHED").all()
    new = runs[~runs["run_id"].isin(before["run_id"])]
    reused = len(wanted & {_key(r) for _, r in before.iterrows()
                           if r["tags.kdtune.role"] != "teacher"})
    assert len(new) == len(wanted) - reused > 0
    assert f"{len(wanted)} runs, {reused} finished already (reused), {len(new)} to train" in out
    rows = json.loads(out.strip().splitlines()[-1])["finalists"]
    assert [r["finalist"] for r in rows] == [trial_id_of(r) for _, r in top.iterrows()]
    assert all(r["seeds"] == 3 for r in rows)


def test_a_smaller_top_leaves_the_others_out_of_the_table(
        finalized: tuple[SweepRecord, Any, list[str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    record, _, flags = finalized
    tracker = record.tracker()
    before = tracker.final_runs("fin")
    driver_runs = tracker.sweep_run("fin").data.tags["kdtune.driver_runs"]
    first = trial_id_of(tracker.best_configs("fin", metrics=["val_accuracy"], modes=["max"],
                                             top=1).iloc[0])
    capsys.readouterr()
    assert main(["finalize", "fin", "--top", "1", "--seeds", "2", *flags,
                 "--format", "json"]) == 0
    out = capsys.readouterr().out
    runs = tracker.final_runs("fin")
    assert set(runs["run_id"]) == set(before["run_id"])  # nothing trained, nothing removed
    rows = json.loads(out.strip().splitlines()[-1])["finalists"]
    assert [(r["finalist"], r["seeds"]) for r in rows] == [(first, 2)]  # what was asked
    kd = runs[runs["tags.kdtune.role"] == "kd"]
    out_of_top = kd["tags.kdtune.out_of_top"] == "true"
    assert set(kd.loc[out_of_top, "tags.kdtune.finalist"]) == \
        set(kd["tags.kdtune.finalist"]) - {first}
    assert "keep their runs" in out
    # the report and export see the finalists of this table only
    assert set(runs.loc[final_mask(runs, "kd"), "tags.kdtune.finalist"]) == {first}
    # the parent run records each driver run that trained: a finalize that reused every run
    # trained nothing and is not one
    parent = tracker.sweep_run("fin").data.tags["kdtune.driver_runs"]
    assert parent == driver_runs
    assert [r["kind"] for r in json.loads(parent)][:2] == ["search", "finalize"]


def _config(params: dict[str, Any]) -> Any:

    return config_from_dict(params)


def _key(row: Any) -> tuple[str, str, int]:

    config = run_config(row)
    return job_key(row["tags.kdtune.role"], row["tags.kdtune.finalist"], config,
                   json.loads(row["params.seed"]))


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "1"], "--seeds 1 must be >= 2"),
    (["--top", "0"], "--top 0 must be >= 1"),
])
def test_bad_finalize_input_is_one_line(finalized: tuple[SweepRecord, Any, list[str]],
                                        argv: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _, _, flags = finalized
    assert main(["finalize", "fin", *argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_each_finalist_is_paired_with_its_own_baseline_shared_or_not() -> None:
    """summarise on the runs finalist_jobs launches, logged as the MLflow callback logs them
    (``describe``): B's baseline is A's (the same student; run once, tagged A only), C's and
    D's differ from A's by one value each. A pairing by the ``kdtune.finalist`` tag leaves B
    without a baseline; one by part of the config mixes A's, C's and D's."""
    import pandas as pd

    from kdtune.runs import encode_param
    from kdtune.tune.callbacks import describe
    from kdtune.tune.trainable import TrialSettings

    fixed = {"dataset": "digits", "model": "mlp", "epochs": 2}
    finalists = {"A": ("vanilla", [8], 0.1), "B": ("none", [8], 0.1),
                 "C": ("vanilla", [16], 0.1), "D": ("vanilla", [8], 0.05),
                 "E": ("vanilla", [8], 0.1)}
    kd_knobs = {"E": {"alpha": 0.3, "temperature": 8.0}}  # E: A with other KD weights
    trials = pd.DataFrame([
        {"trial_id": t, **{f"params.{k}": encode_param(v) for k, v in config_from_dict(
            {**fixed, "method": m, "hidden": h, "lr": lr, "seed": 0, **kd_knobs.get(t, {})}
        ).to_dict().items()}}
        for t, (m, h, lr) in finalists.items()])
    seeds = [1, 2, 3]
    jobs = finalist_jobs(trials, seeds)
    alone_jobs = [j for j in jobs if j["role"] == "student_alone"]
    assert {j["finalist"] for j in alone_jobs} == {"A", "C", "D"}  # B and E share A's
    assert len(alone_jobs) == 3 * len(seeds)

    # test accuracies that tell every pairing apart: a student alone by (hidden, lr) and seed,
    # a distilled one by finalist and seed
    alone_acc = {("[8]", "0.1"): 0.50, ("[16]", "0.1"): 0.60, ("[8]", "0.05"): 0.70}
    settings = TrialSettings(fixed=fixed, seeds=(0,), teacher_path="/teacher.pt",
                             overrides={"device": "cpu", "threads": 1})
    rows = []
    for job in jobs:
        config, tags = describe(settings, {"job": job})
        params = {f"params.{k}": encode_param(v) for k, v in config.items()}
        seed = int(job["seed"])
        if job["role"] == "kd":
            accuracy = 0.80 + 0.01 * "ABCDE".index(job["finalist"]) + 0.001 * seed ** 2
        else:
            accuracy = alone_acc[params["params.hidden"], params["params.lr"]] + 0.002 * seed
        rows.append({"status": "FINISHED", **params, **{f"tags.{k}": v for k, v in tags.items()},
                     "metrics.test_accuracy": accuracy, "metrics.speedup": 5.0})
    table = {r["finalist"]: r for r in summarise(pd.DataFrame(rows), 0.95,
                                                  ["method", "hidden", "lr"])}
    assert set(table) == set(finalists)
    for finalist, (_, hidden, lr) in finalists.items():
        base = alone_acc[encode_param(hidden), encode_param(lr)]
        kd = [0.80 + 0.01 * "ABCDE".index(finalist) + 0.001 * s ** 2 for s in seeds]
        alone = [base + 0.002 * s for s in seeds]
        row = table[finalist]
        assert "student_alone" in row, f"{finalist}: no baseline found"
        assert row["student_alone"] == pytest.approx(statistics.fmean(alone)), finalist
        paired = [k - a for k, a in zip(kd, alone, strict=True)]
        assert row["gain"] == pytest.approx(statistics.fmean(paired)), finalist
        assert row["gain_ci95"] == pytest.approx(list(t_interval(paired))), finalist
        assert row["gap_closed"] == pytest.approx(row["gain"] / (0.95 - row["student_alone"]))


def test_the_baseline_of_a_feature_distiller_is_the_student_alone() -> None:
    """A finalist with a feature term (FitNet) gets a baseline without it: ``method: none``
    alone would still train the student on the teacher's features."""
    import pandas as pd

    from kdtune.finalize import baseline_key
    from kdtune.runs import encode_param

    config = config_from_dict({"dataset": "digits", "model": "mlp", "hidden": [8],
                               "method": "vanilla", "feature_method": "fitnet",
                               "feature_weight": 10.0, "seed": 0})
    trials = pd.DataFrame([{"trial_id": "A", **{f"params.{k}": encode_param(v)
                                                for k, v in config.to_dict().items()}}])
    jobs = finalist_jobs(trials, [1, 2])
    (alone,) = {repr(j["params"]): j["params"] for j in jobs
                if j["role"] == "student_alone"}.values()
    assert alone["method"] == "none" and alone["feature_method"] == "none"
    assert "feature_weight" not in alone
    kd = next(j["params"] for j in jobs if j["role"] == "kd")
    assert kd["feature_method"] == "fitnet" and kd["feature_weight"] == 10.0
    # summarise finds it from the finalist's config, and from the baseline's own
    assert baseline_key(config) == baseline_key(config_from_dict(alone))
