"""kdtune's MLflow callback writes on a writer thread: the order and the guarantees Ray relies on.

A trial waits for the driver after every epoch, so the callback queues its MLflow writes and
returns. What must still hold: the epoch of a checkpoint is in MLflow before Ray registers
that checkpoint (``on_checkpoint``), a trial's run is closed when ``on_trial_complete``
returns, and a write that fails is not lost silently. The store is a real SQLite MLflow store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kdtune.tracking import Tracker
from kdtune.tune.callbacks import MlflowTrials
from kdtune.tune.trainable import TrialSettings

from .conftest import new_store, sqlite_uri
from .test_resume import FakeTrial, epoch_result

SETTINGS = TrialSettings(fixed={"dataset": "digits", "model": "mlp", "epochs": 4}, seeds=(0,))
CONFIG = {"method": "none", "hidden": [8], "lr": 0.1}


class SlowTracker(Tracker):
    """A real tracker whose epoch writes take a while (an MLflow server far away)."""

    delay_s = 0.5

    def log_epochs(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.delay_s)
        super().log_epochs(*args, **kwargs)


def steps(tracker: Tracker, sweep: str, trial_id: str) -> list[int]:
    runs = tracker.trial_runs(sweep)
    if runs.empty:
        return []
    run_id = runs.set_index("trial_id").loc[trial_id, "run_id"]
    return [m.step for m in tracker.client.get_metric_history(run_id, "val_accuracy")]


def test_epoch_is_in_mlflow_before_its_checkpoint_counts(tmp_path: Path,
                                                         mlflow_template: Path) -> None:
    tracker = SlowTracker(sqlite_uri(new_store(tmp_path / "store", mlflow_template)))
    parent = tracker.start_sweep("s", params={"objective.metrics": "val_accuracy"})
    callback = MlflowTrials(tracker, parent, "s", SETTINGS)
    trial = FakeTrial("t1", CONFIG)
    callback.on_trial_start(0, [], trial)
    trial.last_result = epoch_result(1)
    callback.on_trial_result(0, [], trial, trial.last_result)
    assert 1 not in steps(tracker, "s", "t1")  # queued: Ray went on without waiting
    callback.on_checkpoint(0, [], trial, checkpoint=None)
    assert steps(tracker, "s", "t1") == [1]  # written before Ray registers the checkpoint

    for epoch in (2, 3):
        trial.last_result = epoch_result(epoch)
        callback.on_trial_result(0, [], trial, trial.last_result)
    callback.on_trial_complete(0, [], trial)  # returns once the run is closed
    runs = tracker.trial_runs("s").set_index("trial_id")
    assert runs.loc["t1", "status"] == "KILLED"  # stopped at epoch 3 of 4
    assert steps(tracker, "s", "t1") == [1, 2, 3]
    callback.on_experiment_end([])


def test_a_failed_write_is_raised_by_the_next_callback(tmp_path: Path,
                                                       mlflow_template: Path) -> None:
    tracker = Tracker(sqlite_uri(new_store(tmp_path / "store", mlflow_template)))
    parent = tracker.start_sweep("s", params={"objective.metrics": "val_accuracy"})
    callback = MlflowTrials(tracker, "no-such-parent-run", "s", SETTINGS)
    trial = FakeTrial("t1", CONFIG)
    callback.on_trial_start(0, [], trial)  # queued; creating the run fails on the writer
    with pytest.raises(Exception, match="no-such-parent-run"):
        callback.flush()

    callback = MlflowTrials(tracker, "no-such-parent-run", "s", SETTINGS)
    callback.on_trial_start(0, [], trial)
    callback.on_checkpoint(0, [], trial, checkpoint=None)  # Ray would only log an error here
    with pytest.raises(Exception, match="no-such-parent-run"):
        callback.on_trial_result(0, [], trial, epoch_result(1))  # so the next call raises it
    assert tracker.trial_runs("s").empty
    tracker.end_sweep(parent, "FINISHED")
