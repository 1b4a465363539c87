"""A trial's worker process dies: the trial continues from its last checkpoint, in the same
MLflow run, with no epoch missing or logged twice. A trial fails by itself (its loss becomes
NaN): it fails once, FAILED with its reason, FAIL in the study, never retried.

Real: an in-process sweep on the test run's local Ray; the worker of a running trial is found
by the pid its results carry and SIGKILLed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from rich.console import Console

from kdtune.tracking import Tracker
from kdtune.tune.study import SweepStudy

from .harness import write_space

EPOCHS = 24
GOOD_LR, DIVERGING_LR = 0.05, 1000.0


def results_of(storage: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial folder's results as Ray's JSON logger wrote them, in order."""
    out = {}
    for path in storage.glob("*/trial_*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line being written
                break
        out[path.parent.name] = rows
    return out


def is_ray_worker(pid: int) -> bool:
    try:
        return b"ray::" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_dead_worker_retries_from_its_checkpoint_and_nan_fails_once(
        faults_ray: None, store_template: Path, teacher_path: Path, tmp_path: Path) -> None:
    from kdtune.tune.sweep import run_sweep

    space = write_space(
        tmp_path, teacher_path, name="trialfaults",
        fixed={"dataset": "digits", "model": "mlp", "epochs": EPOCHS, "batch_size": 16,
               "method": "none", "hidden": [16], "seeds": [0]},
        parameters={"lr": {"type": "categorical", "choices": [GOOD_LR, 0.08, DIVERGING_LR]}},
        search={"num_samples": 3, "max_concurrent": 2, "sampler": "grid", "seed": 0},
        resources={"cpus": 1, "gpus": 0, "max_retries": 2})
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
    killed: dict[str, Any] = {}
    deadline = time.monotonic() + 300
    while not killed and time.monotonic() < deadline and thread.is_alive():
        for folder, rows in results_of(storage).items():
            if rows and rows[-1]["config"]["lr"] == GOOD_LR and 3 <= rows[-1]["epoch"] < EPOCHS:
                pid = int(rows[-1]["pid"])
                assert is_ray_worker(pid), pid
                os.kill(pid, signal.SIGKILL)
                killed = {"folder": folder, "pid": pid, "epoch": rows[-1]["epoch"]}
                break
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
