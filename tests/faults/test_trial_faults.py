"""A trial's worker process dies: the trial continues from its last checkpoint, in the same
MLflow run, with no epoch missing or logged twice. A trial fails by itself (its loss becomes
NaN): it fails once, FAILED with its reason, FAIL in the study, never retried.

Real: an in-process sweep on the test run's local Ray; the worker of a running trial is found
by the pid its results carry and SIGKILLed.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from rich.console import Console

from kdtune.tracking import Tracker
from kdtune.tune.study import SweepStudy

from .harness import (
    DIVERGING_LR,
    GOOD_LR,
    kill_a_trial_worker,
    results_of,
    trial_faults_space,
)

EPOCHS = 24


def test_dead_worker_retries_from_its_checkpoint_and_nan_fails_once(
        faults_ray: None, store_template: Path, teacher_path: Path, tmp_path: Path) -> None:
    from kdtune.tune.sweep import run_sweep

    space = trial_faults_space(tmp_path, teacher_path, "trialfaults", EPOCHS)
    store = tmp_path / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    storage = store / "ray"
    console = io.StringIO()
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        try:
            outcome["value"] = run_sweep(str(space), mlflow_uri=uri, storage=str(storage),
                                         console=Console(file=console, width=200))
        except BaseException as exc:  # re-raised by the test
            outcome["error"] = exc

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    # -- SIGKILL the worker of the first trial once it has checkpointed epoch 3 ------------
    killed: dict[str, Any] | None = None
    deadline = time.monotonic() + 300
    while not killed and time.monotonic() < deadline and thread.is_alive():
        killed = kill_a_trial_worker(storage, GOOD_LR, EPOCHS)
        time.sleep(0.05)
    assert killed, f"no running trial to kill:\n{console.getvalue()}"
    thread.join(timeout=400)
    assert not thread.is_alive(), console.getvalue()
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["value"].finished, console.getvalue()
    output = console.getvalue()
    assert "Traceback" not in output, output

    tracker = Tracker(uri)
    runs = tracker.trial_runs("trialfaults").set_index("trial_id")
    assert len(runs) == 3, runs[["status"]]
    study = SweepStudy(f"sqlite:///{store / 'optuna.db'}", "trialfaults").sweep_trials()

    # the killed trial: same run, retried once, every epoch exactly once, from its checkpoint
    trial_id = killed["folder"].removeprefix("trial_")
    run = runs.loc[trial_id]
    assert run["status"] == "FINISHED"
    assert run["tags.kdtune.retries"] == "1"
    steps = [m.step for m in tracker.client.get_metric_history(run["run_id"], "val_accuracy")]
    assert steps == list(range(1, EPOCHS + 1))
    assert run["metrics.val_accuracy"] > 0.5 and run["metrics.flops"] > 0  # its final metrics
    rows = results_of(storage)[killed["folder"]]
    epochs = [r["epoch"] for r in rows if "epoch" in r]
    assert len({r["pid"] for r in rows}) == 2, "the trial did not run in a new worker"
    restarted_at = next(r["epoch"] for r in rows if r["pid"] != killed["pid"])
    assert restarted_at > 1, "the trial started again from epoch 1, not from its checkpoint"
    assert epochs == sorted(epochs) and epochs[-1] == EPOCHS
    assert study[trial_id].state == TrialState.COMPLETE

    # the diverging trial: failed by itself, once, with its reason; FAIL in the study
    failed = runs[runs["params.lr"] == json.dumps(DIVERGING_LR)]
    assert len(failed) == 1
    bad = failed.iloc[0]
    assert bad["status"] == "FAILED"
    assert "nan" in bad["tags.kdtune.error"] or "inf" in bad["tags.kdtune.error"]
    assert "\n" not in bad["tags.kdtune.error"]
    assert "FloatingPointError" in bad["tags.kdtune.traceback"]
    assert "tags.kdtune.retries" not in failed.columns or \
        failed["tags.kdtune.retries"].isna().all()
    bad_rows = results_of(storage)[f"trial_{failed.index[0]}"]
    assert len({r["pid"] for r in bad_rows}) == 1, "a failure of the trial itself was retried"
    assert study[failed.index[0]].state == TrialState.FAIL
    # the third trial ran undisturbed
    assert (runs["status"] == "FINISHED").sum() == 2
