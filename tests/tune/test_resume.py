"""`kdtune search` killed with SIGKILL mid-sweep, then `kdtune resume`: nothing lost, nothing
duplicated, finished trials not run again.

The sweep runs as a real subprocess (``python -m kdtune search``) with its own local Ray. Two
things keep that Ray apart from the test session's (``ray_session``):

* ``ray.init()`` with no address joins the cluster named by ``RAY_ADDRESS`` or by
  ``<RAY_TMPDIR>/ray/ray_current_cluster`` (written by ``ray start``), else starts a new one;
  a Ray started in-process by ``ray.init()`` writes neither, so the test session's Ray is not
  joined. kdtune's ``init_ray`` now passes ``address="local"`` anyway (a sweep without
  ``--address`` never joins a ``ray start`` cluster of this machine).
* The subprocess gets its own short ``RAY_TMPDIR`` (Unix socket paths must stay under ~107
  characters, so not under pytest's tmp_path) and no ``RAY_ADDRESS``. Its Ray processes
  (GCS, raylet, workers) are started without a new session, so they share the driver's
  process group: ``os.killpg`` kills the whole run at once. Anything left is found by process
  group or by the temp folder in its command line and killed by pid; the test session's Ray
  is never touched.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from kdtune.cli import main
from kdtune.tracking import Tracker
from kdtune.tune.space import grid_points, load_space, suggest
from kdtune.tune.study import SweepStudy
from tests.faults.harness import kill_all, processes_of, ray_temp

from .conftest import BASE_SPACE, new_store, sqlite_uri, write_space

REPO = Path(__file__).resolve().parents[2]
SAMPLES, EPOCHS = 8, 12
RUNGS = {6}  # grace 6, reduction factor 2, max_t 12: about half the trials stop at epoch 6


def kdtune_env(ray_tmp: Path) -> dict[str, str]:
    env = dict(os.environ)  # keeps the test's KDTUNE_CACHE
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = str(ray_tmp)
    # the trials' own temp folders (a checkpoint being written when SIGKILL hits stays behind)
    (ray_tmp / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(ray_tmp / "tmp")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_kdtune(argv: list[str], *, cwd: Path, env: dict[str, str], marker: str,
               timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m kdtune ARGV`` in its own session; its Ray is cleaned up afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "kdtune", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_all(proc.pid, marker)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    with ray_temp() as path:
        yield path


def snapshot(tracker: Tracker, run_id: str) -> dict:
    run = tracker.client.get_run(run_id)
    history = tracker.client.get_metric_history(run_id, "val_accuracy")
    return {"status": run.info.status, "end_time": run.info.end_time,
            "metrics": dict(run.data.metrics),
            "history": [(m.step, m.value) for m in history]}


#: A grid of 12 configurations (conditions, lists as values) for the grid variant: the sweep
#: runs a seeded sample of SAMPLES of them.
GRID = {
    "method": {"type": "categorical", "choices": ["none", "vanilla"]},
    "temperature": {"type": "categorical", "choices": [2, 4], "when": {"method": ["vanilla"]}},
    "hidden": {"type": "categorical", "choices": [[8], [16]]},
    "lr": {"type": "categorical", "choices": [0.05, 0.1]},
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_sigkill_mid_sweep_then_resume(sampler: str, tmp_path: Path, teacher_path: Path,
                                       ray_tmp: Path, mlflow_template: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(
        tmp_path, name="killed", teacher={"path": str(teacher_path)},
        fixed={**BASE_SPACE["fixed"], "epochs": EPOCHS},
        parameters=GRID if sampler == "grid" else BASE_SPACE["parameters"],
        search={"num_samples": SAMPLES, "max_concurrent": 2, "sampler": sampler, "seed": 5},
        scheduler={"type": "asha", "grace_period": 6, "reduction_factor": 2})
    store = new_store(tmp_path / "store", mlflow_template)
    uri, storage = sqlite_uri(store), store / "ray"
    flags = ["--mlflow-uri", uri, "--storage", str(storage)]
    env = kdtune_env(ray_tmp)
    where = {"cwd": tmp_path, "env": env, "marker": str(ray_tmp)}
    log = tmp_path / "search.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdtune", "search", str(space), *flags],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    pgid = proc.pid
    try:
        # -- wait for two finished trials, then SIGKILL the driver and its Ray -------------
        tracker = Tracker(uri)
        deadline = time.monotonic() + 240
        runs = None
        while time.monotonic() < deadline and proc.poll() is None:
            # not before the driver has created the store: opening a SQLite store that is
            # being created runs MLflow's migrations twice at once ("table already exists")
            if "starting a local Ray" in log.read_text() and \
                    tracker.find_sweep("killed") is not None:
                runs = tracker.trial_runs("killed")
                if (runs["status"] == "FINISHED").sum() >= 2:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, f"search ended before the kill:\n{log.read_text()}"
        assert runs is not None and (runs["status"] == "FINISHED").sum() >= 2, log.read_text()
        assert kill_all(pgid, str(ray_tmp)) == [], "Ray processes of the killed run survived"
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        runs = tracker.trial_runs("killed")
        ended = runs[runs["status"].isin(["FINISHED", "KILLED"])]
        assert len(ended) < SAMPLES, "nothing left to resume"
        assert tracker.sweep_run("killed").info.status == "RUNNING"
        before = {r: snapshot(tracker, r) for r in runs.loc[runs["status"] == "FINISHED",
                                                           "run_id"]}

        # -- resume refuses a wrong storage folder or a changed space file ------------------
        # (in-process: both fail before Ray starts)
        assert main(["resume", "killed", "--mlflow-uri", uri, "--storage",
                     str(tmp_path / "elsewhere")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "no Ray experiment state" in err, err
        original = space.read_text()
        space.write_text(original + "# edited\n")
        assert main(["resume", "killed", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "changed since sweep 'killed' started" in err, err
        space.write_text(original)
        assert tracker.trial_runs("killed")["run_id"].tolist() == runs["run_id"].tolist()

        # -- resume ----------------------------------------------------------------------
        resumed = run_kdtune(["resume", "killed", *flags], timeout=300, **where)
        (tmp_path / "resume.log").write_text(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resuming sweep 'killed'" in resumed.stdout
        assert "Token authentication is enabled" not in resumed.stderr  # Ray's default, hidden
        assert f"finished: {SAMPLES} trials" in resumed.stdout

        runs = tracker.trial_runs("killed")
        assert len(runs) == SAMPLES and runs["trial_id"].is_unique, runs[["trial_id", "status"]]
        assert set(runs["status"]) <= {"FINISHED", "KILLED"}, runs[["trial_id", "status"]]
        assert tracker.sweep_run("killed").info.status == "FINISHED"
        # trials finished before the kill: same run, same record, not trained again
        for run_id, old in before.items():
            assert run_id in set(runs["run_id"])
            assert snapshot(tracker, run_id) == old, run_id
        # no epoch logged twice, anywhere; killed runs stopped at a rung
        for _, row in runs.iterrows():
            steps = [m.step for m in tracker.client.get_metric_history(row["run_id"],
                                                                        "val_accuracy")]
            last = EPOCHS if row["status"] == "FINISHED" else int(row["tags.kdtune.rung"])
            assert steps == list(range(1, last + 1)), (row["trial_id"], row["status"], steps)
            if row["status"] == "KILLED":
                assert last in RUNGS
            else:
                assert row["metrics.val_accuracy"] > 0 and row["metrics.params"] > 0
        # one latency per architecture, with its spread, whether trained before the kill or
        # after the resume
        done = runs[runs["status"] == "FINISHED"]
        for metric in ("metrics.latency_ms_b1", "metrics.latency_ms_b1_iqr"):
            assert (done.groupby("params.hidden")[metric].nunique() == 1).all(), metric
        # the study agrees with MLflow: one trial each, pruned = killed; a trial re-asked
        # after the crash is FAIL and marked, and its configuration ran as another trial
        study = SweepStudy(sqlite_uri(store).replace("mlflow.db", "optuna.db"), "killed")
        by_id = study.sweep_trials()
        assert set(by_id) == set(runs["trial_id"])
        for t in study.trials():
            if t.number not in {s.number for s in by_id.values()}:
                assert t.state == TrialState.FAIL, t
                assert "reasked_after_resume" in t.user_attrs or "repeat_of" in t.user_attrs
        for _, row in runs.iterrows():
            want = TrialState.PRUNED if row["status"] == "KILLED" else TrialState.COMPLETE
            assert by_id[row["trial_id"]].state == want, row["trial_id"]
        if sampler == "grid":  # exactly the sampled grid points, each once
            trained = sorted(json.dumps(suggest(optuna.trial.FixedTrial(t.params),
                                                load_space(space)), sort_keys=True)
                             for t in by_id.values())
            points = grid_points(load_space(space), SAMPLES)
            assert trained == sorted(json.dumps(p, sort_keys=True) for p in points)

        # -- resuming a finished sweep does nothing -----------------------------------------
        assert main(["resume", "killed", *flags]) == 0
        assert "already finished" in capsys.readouterr().out
        assert len(tracker.trial_runs("killed")) == SAMPLES
    finally:
        kill_all(pgid, str(ray_tmp))
    assert processes_of(pgid, str(ray_tmp)) == []


# -- the pieces that make a resume idempotent, each in a state a crash can leave ----------------
class FakeTrial:
    """What kdtune's MLflow callback reads from a Ray trial."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config, self.last_result = trial_id, config, {}


def epoch_result(epoch: int, planned: int = 4, **final: float) -> dict:
    return {"epoch": epoch, "epochs_planned": planned, "val_accuracy": 0.5 + epoch / 100,
            "val_loss": 1.0 / epoch, "train_loss": 1.0 / epoch, "lr": 0.1, **final}


def test_mlflow_record_survives_a_restore_without_duplicates(tmp_path: Path,
                                                             mlflow_template: Path) -> None:
    """Ray restores the callback from its pickle; trials then report again what they had."""
    from kdtune.tune.callbacks import MlflowTrials
    from kdtune.tune.trainable import TrialSettings

    tracker = Tracker(sqlite_uri(new_store(tmp_path / "store", mlflow_template)))
    parent = tracker.start_sweep("s", params={"objective.metrics": "val_accuracy"})
    settings = TrialSettings(fixed={"dataset": "digits", "model": "mlp", "epochs": 4},
                             seeds=(0,))
    config = {"method": "none", "hidden": [8], "lr": 0.1}
    done, killed, running = (FakeTrial(t, config) for t in ("done", "killed", "running"))

    def feed(callback: MlflowTrials, trial: FakeTrial, epochs: range, end: bool,
             **final: float) -> None:
        callback.on_trial_start(0, [], trial)
        for epoch in epochs:
            trial.last_result = epoch_result(epoch, **(final if epoch == 4 else {}))
            callback.on_trial_result(0, [], trial, trial.last_result)
        if end:
            callback.on_trial_complete(0, [], trial)

    first = MlflowTrials(tracker, parent, "s", settings)
    feed(first, done, range(1, 5), True, test_accuracy=0.9, params=610.0)
    feed(first, killed, range(1, 3), True)
    feed(first, running, range(1, 3), False)
    first.flush()  # the writes of a running trial are queued on the writer thread
    runs = tracker.trial_runs("s").set_index("trial_id")
    assert runs.loc["done", "status"] == "FINISHED" and runs.loc["killed", "status"] == "KILLED"
    assert runs.loc["killed", "tags.kdtune.rung"] == "2"
    before = {t: snapshot(tracker, runs.loc[t, "run_id"]) for t in ("done", "killed")}
    assert before["done"]["history"] == [(s, 0.5 + s / 100) for s in range(1, 5)]

    # after the crash: Ray had them all RUNNING; the restored trials report again
    second = pickle.loads(pickle.dumps(first))
    assert second.run_ids == {}
    feed(second, done, range(4, 5), True, test_accuracy=0.8, params=610.0)  # "end again"
    feed(second, killed, range(2, 3), True)  # replays the epoch it was stopped at
    feed(second, running, range(2, 5), True, test_accuracy=0.7, params=610.0)  # from epoch 2

    runs = tracker.trial_runs("s").set_index("trial_id")
    assert len(runs) == 3  # the same runs, reopened or left alone
    for t in ("done", "killed"):
        assert snapshot(tracker, runs.loc[t, "run_id"]) == before[t], t
    after = snapshot(tracker, runs.loc["running", "run_id"])
    assert after["status"] == "FINISHED"
    assert [s for s, _ in after["history"]] == [1, 2, 3, 4]
    assert after["metrics"]["test_accuracy"] == 0.7


def test_restore_finds_a_checkpoint_deleted_before_the_snapshot(asha_sweep, tmp_path: Path
                                                               ) -> None:
    """The snapshot names checkpoint N, Ray had already deleted it for N+1 (num_to_keep=1)."""
    from ray import tune

    from kdtune.tune.recovery import repair_checkpoints
    from kdtune.tune.trainable import run_trial

    copy = tmp_path / "exp"
    shutil.copytree(asha_sweep.experiment_dir, copy)

    def results() -> object:  # what resume reads: Ray's restored experiment, public API
        return tune.Tuner.restore(str(copy), trainable=run_trial).get_results()

    assert repair_checkpoints(results()) == 0  # intact: nothing to do
    trial_dir = sorted(copy.glob("trial_*"))[0]
    (named,) = trial_dir.glob("checkpoint_*")
    index = int(named.name.split("_")[1])
    later = trial_dir / f"checkpoint_{index + 1:06d}"
    named.rename(later)  # what a crash leaves: N gone, N+1 on storage
    newest = trial_dir / f"checkpoint_{index + 2:06d}"
    newest.mkdir()  # persisted by the trial, never registered: not the one to use
    assert repair_checkpoints(results()) == 1
    assert sorted(p.name for p in named.iterdir()) == sorted(p.name for p in later.iterdir())
    for f in later.iterdir():
        assert (named / f.name).read_bytes() == f.read_bytes()
    assert repair_checkpoints(results()) == 0
