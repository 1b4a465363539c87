"""The Ray Tune trainable: one trial = the shared trainer on one config, reported per epoch.

Everything a trial needs beyond its parameters (fixed settings, the data tensors, the teacher
with its cached outputs) arrives once through the object store as a :class:`SweepContext`,
so no trial trains a teacher, reads a driver path or downloads data. With several training
seeds the runs advance epoch by epoch together and the trial reports their mean.

Two kinds of failure end a trial. A failure of the trial itself -- its loss becomes NaN or
infinite, its config is invalid, the trainer raises -- would happen again on every retry: the
trainable ends such a trial itself, reporting the reason (:data:`FAILURE_KEY`) and the
traceback (:data:`TRACEBACK_KEY`, also written to the worker's log) instead of raising, so
Ray's ``FailureConfig`` never retries it. Only what the trainable does not catch reaches Ray:
the worker process or its node dying, which Ray retries from the trial's last checkpoint.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdtune.config import TrainConfig
from kdtune.tune.latency_board import SharedLatency
from kdtune.tune.overlay import trial_train_config
from kdtune.vocabulary import SPREAD_METRICS

if TYPE_CHECKING:  # torch: imported by a trial when it starts, by the driver beside Ray's start
    from kdtune.data import DataSplits
    from kdtune.teacher import Teacher
    from kdtune.trainer import TrainingRun

CHECKPOINT_FILE = "seed-{seed}.pt"
#: Result keys a trial reports: the epoch reached and the epochs it was going to train.
EPOCH_KEY = "epoch"
PLANNED_KEY = "epochs_planned"
#: Seconds this trial's process has spent in the trainer (building the runs, the epochs with
#: their validation, the final metrics): reported to Ray, not logged to MLflow. Everything
#: else a trial's wall time holds (checkpoints, reports, waiting for the driver) is the sweep's.
TRAINER_KEY = "trainer_s"
#: Result keys of a trial that failed by itself: the reason (one line) and the traceback.
FAILURE_KEY = "kdtune_failure"
TRACEBACK_KEY = "kdtune_traceback"
#: Result key of the first report after a trial continued from a checkpoint: the metrics of
#: every epoch the checkpoint holds, so that the driver's record has no gap whatever it had
#: written before the trial (or the driver) stopped.
HISTORY_KEY = "epoch_history"


@dataclass(frozen=True)
class TrialSettings:
    """How a trial's parameters become full configs (small: kept in Ray's experiment state)."""

    fixed: Mapping[str, Any]
    seeds: tuple[int, ...]
    teacher_path: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)  # device/threads per resources

    def config(self, params: Mapping[str, Any], seed: int) -> TrainConfig:
        """The trial's full config for one seed (``teacher`` names the driver's checkpoint)."""
        return trial_train_config(self.fixed, params, seed=seed, where="trial",
                                  **self.overrides, teacher=self.teacher_path)


@dataclass
class SweepContext:
    """What every trial of a sweep shares (shipped once through Ray's object store)."""

    settings: TrialSettings
    data: DataSplits
    teacher: Teacher | None
    #: On resume: trials the study had told (finished, pruned or failed) before the driver
    #: died, though Ray's last snapshot still had them running. They must not train again.
    ended: frozenset[str] = frozenset()
    #: The sweep's :mod:`latency board <kdtune.tune.latency_board>`, an actor handle (None: each
    #: worker times students itself).
    latency_board: Any = None


def mean_metrics(per_seed: list[Mapping[str, float]]) -> dict[str, float]:
    """Mean over seeds of every numeric metric present in all of them."""
    keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]
    return {k: statistics.fmean(float(m[k]) for m in per_seed) for k in keys}


def final_metrics(per_seed: list[Mapping[str, float]]) -> dict[str, float]:
    """The mean over seeds, plus the sample standard deviations of
    :data:`~kdtune.vocabulary.SPREAD_METRICS` when there are several seeds."""
    metrics = mean_metrics(per_seed)
    for sd in SPREAD_METRICS if len(per_seed) > 1 else ():
        name = sd.removesuffix("_sd")
        if all(name in m for m in per_seed):
            metrics[sd] = statistics.stdev(float(m[name]) for m in per_seed)
    return metrics


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def run_trial(params: dict[str, Any], context: SweepContext) -> None:
    """Function trainable of a search trial: the trial's parameters, trained with every seed
    of the sweep (reporting their mean), never reading the test set. A failure of the trial
    itself ends it with a failure report (module docstring)."""
    _train(lambda: [context.settings.config(params, s) for s in context.settings.seeds],
           context, test=False)


def run_final(config: dict[str, Any], context: SweepContext) -> None:
    """Function trainable of a finalist run (``kdtune finalize``): one configuration
    (``config["job"]["params"]``) with one fresh seed (``["seed"]``), trained to the end and
    read on the test set once."""
    job = config["job"]
    _train(lambda: [context.settings.config(job["params"], int(job["seed"]))], context,
           test=True)


def _train(configs: Callable[[], list[TrainConfig]], context: SweepContext, *,
           test: bool) -> None:
    """Train one run per config epoch by epoch (reporting their mean), report each epoch with
    a checkpoint, end with the final metrics; continue from Ray's checkpoint when the trial is
    restored. ``configs`` builds the configs (a bad one fails the trial like a trainer error)."""
    from ray import tune

    from kdtune.metrics import cpu_latency
    from kdtune.trainer import TrainingRun

    board = None if context.latency_board is None else SharedLatency(context.latency_board)
    latency = board or cpu_latency

    def waited_s() -> float:  # waiting for the latency board: the sweep's time
        return board.waited_s if board else 0.0

    start = time.perf_counter()
    try:
        runs = [TrainingRun(c, teacher=context.teacher, data=context.data) for c in configs()]
    except Exception as exc:  # an invalid config, a trainer error: the same on every retry
        _fail(exc)
        return
    in_trainer = time.perf_counter() - start
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            for run in runs:
                run.load_checkpoint(Path(folder) / CHECKPOINT_FILE.format(seed=run.config.seed))
    replay = _history(runs) if checkpoint is not None else None
    planned = runs[0].config.epochs
    start, waited = time.perf_counter(), waited_s()

    def final() -> dict[str, float]:
        return final_metrics([r.final_metrics(latency=latency, test=test) for r in runs])

    try:
        # what the student costs, before epoch 1: early stopping weighs it at every rung
        where = {"node_id": node_id(), **mean_metrics([r.cost_metrics(latency=latency)
                                                       for r in runs])}
        if runs[0].epoch >= planned:  # restored after its last epoch: report the end again
            ended = final()
    except Exception as exc:
        _fail(exc)
        return
    in_trainer += time.perf_counter() - start - (waited_s() - waited)
    if runs[0].epoch >= planned:
        _report(runs, {**ended, **where}, planned, replay)
        return
    if checkpoint is not None and runs[0].history and \
            tune.get_context().get_trial_id() in context.ended:
        # stopped by the scheduler just before the driver died: report that epoch again, end
        _report(runs, {**mean_metrics([r.history[-1] for r in runs]), **where}, planned,
                replay)
        return
    while runs[0].epoch < planned:
        start, waited = time.perf_counter(), waited_s()
        try:
            metrics = mean_metrics([run.train_epoch() for run in runs])
            metrics["train_time_s"] = metrics["elapsed_s"]  # also for trials stopped early
            if runs[0].epoch == planned:
                metrics.update(final())
        except Exception as exc:  # the loss became NaN or infinite, the trainer raised
            _fail(exc)
            return
        in_trainer += time.perf_counter() - start - (waited_s() - waited)  # board: the sweep's
        _report(runs, {**where, **metrics, TRAINER_KEY: in_trainer}, planned, replay)
        replay = None


def _history(runs: list[TrainingRun]) -> list[dict[str, float]]:
    """The mean over seeds of each epoch's metrics, as the trial reported them."""
    return [mean_metrics([run.history[i] for run in runs]) for i in range(len(runs[0].history))]


def failure_reason(exc: BaseException) -> str:
    """One line: kdtune's own messages as they are, anything else with its type."""
    from kdtune.errors import KdtuneError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, KdtuneError | FloatingPointError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fail(exc: BaseException) -> None:
    """End the trial as failed by itself: the traceback to the worker's log and the report."""
    from ray import tune

    trace = "".join(traceback.format_exception(exc))
    print(f"kdtune trial failed: {failure_reason(exc)}\n{trace}", file=sys.stderr, flush=True)
    tune.report({FAILURE_KEY: failure_reason(exc), TRACEBACK_KEY: trace})


def _report(runs: list[TrainingRun], metrics: dict[str, Any], planned: int,
            replay: list[dict[str, float]] | None = None) -> None:
    from ray import tune

    metrics[EPOCH_KEY] = runs[0].epoch
    metrics[PLANNED_KEY] = planned
    if replay:
        metrics[HISTORY_KEY] = replay
    with tempfile.TemporaryDirectory(prefix="kdtune-ckpt-") as folder:
        for run in runs:
            run.save_checkpoint(Path(folder) / CHECKPOINT_FILE.format(seed=run.config.seed))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
