"""The driver's Ray session: starting or joining Ray, Ctrl-C while it runs trials, where Ray
Tune's log records go, whether the cluster can hold a trial, and the one builder of the Ray
Tune experiments (Tuners) that search, resume, extend and finalize run.

Every experiment kdtune runs has the same shape: trials named by their trial id, one
checkpoint kept per trial, MLflow and terminal callbacks plus the two result files kdtune
keeps (``result.json``, ``progress.csv``). Ray is imported when a function needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

import kdtune
from kdtune.errors import Interrupted, KdtuneError
from kdtune.tune.stores import split_location
from kdtune.tune.trainable import CHECKPOINT_FILE

if TYPE_CHECKING:
    from kdtune.tracking import Tracker
    from kdtune.tune.space import SearchSpace
    from kdtune.tune.study import SweepStudy
    from kdtune.tune.trainable import SweepContext, TrialSettings


# -- starting Ray -----------------------------------------------------------------------------
def start_ray(address: str | None, console: Console) -> None:
    """:func:`init_ray`, with torch and kdtune's trainer imported in a thread meanwhile: seconds
    of CPU spent while ``ray.init`` waits for Ray's processes (the sweep modules leave them
    out of their own imports for that; the test suite checks it)."""
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        importing = pool.map(importlib.import_module, ("kdtune.teacher", "kdtune.trainer"))
        init_ray(address, console)
        list(importing)


def init_ray(address: str | None, console: Console) -> None:
    """Join the cluster at ``address``, or start a local Ray (unless one is running here)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # small experiment state: save often
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # kdtune keeps one checkpoint per trial, which forces a (tiny) snapshot each epoch: wanted.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's default loggers add TensorBoard files written on every result (~8 ms each, while
    # the trial waits); kdtune names the two it keeps (result.json, progress.csv) itself.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a trial's traceback goes to its log and MLflow, not the terminal; Ctrl-C is kdtune's
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # a trial that fails by itself reports its failure, not the objective
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False,
                              "logging_level": "WARNING"}
    if address:
        kwargs["runtime_env"] = {"py_modules": [str(Path(kdtune.__file__).parent)]}
        console.print(f"joining the Ray cluster at {address}")
        ray.init(address=address, **kwargs)
    else:
        # "local": never join a cluster that `ray start` left on this machine (ray.init()
        # with no address would, via /tmp/ray/ray_current_cluster or RAY_ADDRESS)
        console.print("starting a local Ray")
        for handler in logging.getLogger("ray").handlers:  # where Ray's records are printed
            handler.addFilter(_hide_token_auth_notice)
        ray.init(address="local", **kwargs)


def _hide_token_auth_notice(record: logging.LogRecord) -> bool:
    """Ray 2.60 warns on every local start that token authentication is on, its default:
    nothing for a kdtune user to act on. Its other messages (auth off, missing token) pass."""
    return "Token authentication is enabled" not in record.getMessage()


def check_resources(space: SearchSpace, console: Console) -> None:
    """A one-line error when no node of a fixed-size cluster can ever hold one trial (Ray would
    wait for ever); on an autoscaling cluster a warning: the trials wait for a bigger node.

    A trial runs on one node, so one node must have its CPUs and GPUs. A cluster autoscales
    when ``KDTUNE_AUTOSCALING`` is 1, or when Ray's cluster launcher left its bootstrap file
    (``~/ray_bootstrap_config.yaml``) on this machine."""
    import ray

    cpus, gpus = space.resources.cpus, space.resources.gpus
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    top_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    top_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    msg = (f"resources: a trial asks for {cpus:g} CPU(s) and {gpus:g} GPU(s) on one node, but "
           f"no node of the Ray cluster has them ({len(nodes)} node(s), the largest "
           f"{top_cpu:g} CPU(s) and {top_gpu:g} GPU(s))")
    if _autoscaling():
        console.print(f"warning: {msg}; the cluster autoscales, so the trials wait for a node "
                      "that has them")
        return
    raise KdtuneError(f"{msg}; lower resources.cpus / resources.gpus, or join a cluster that "
                      "has such a node (KDTUNE_AUTOSCALING=1 if it autoscales)")


def _autoscaling() -> bool:
    flag = os.environ.get("KDTUNE_AUTOSCALING", "").strip().lower()
    if flag:
        return flag in ("1", "true", "yes")
    return Path("~/ray_bootstrap_config.yaml").expanduser().exists()


# -- Ctrl-C and Ray's log records -------------------------------------------------------------
class Interrupts:
    """Ctrl-C while a command runs a sweep. Once, while trials run: Ray Tune stops the sweep
    gracefully (its stop signal, SIGUSR1): trials end, each keeping its last epoch's
    checkpoint, and Ray saves its experiment state, so ``kdtune resume`` continues it. Once,
    at any other moment: the command stops there (``KeyboardInterrupt``). Twice: the process
    ends at once. Either way one line says how to go on (:attr:`hint`)."""

    def __init__(self, hint: str = "nothing was registered; run `kdtune search` again") -> None:
        self.hint = hint
        self.count = 0
        self.in_fit = False
        self.previous: Any = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.handler)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self.previous is not None and not self.count:
            signal.signal(signal.SIGINT, self.previous)
        # after a Ctrl-C the handler stays: the next one ends the process at once, even in
        # the clean-up on the way out
        if kind is KeyboardInterrupt:  # a plain Ctrl-C (not one that already says what next)
            raise Interrupted(f"interrupted: {self.hint}") from None

    @contextlib.contextmanager
    def fitting(self) -> Iterator[None]:
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False

    def handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1 and self.in_fit:
            print("kdtune: stopping: the trials end and keep their last epoch's checkpoint "
                  "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # Ray Tune's graceful stop
            return
        if self.count == 1:
            raise KeyboardInterrupt
        if self.hint:  # the command has not said how to go on yet (else: end silently)
            os.write(2, f"kdtune: stopped at once (second Ctrl-C); {self.hint}\n".encode())
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # end by the signal itself: no clean-up
        os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def ray_tune_logs(path: Path) -> Iterator[None]:
    """For as long as the context lasts, Ray Tune's and Ray Train's log records go to the file
    ``path`` (local folders) and not to the terminal: kdtune prints what a user needs, a
    trial's traceback is in its MLflow run."""
    handler: logging.Handler | None = None
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.train")] if handler else []
    terminal = [h for h in logging.getLogger("ray").handlers if h is not handler]
    for logger in loggers:
        logger.addHandler(handler)
    for h in terminal:
        h.addFilter(_not_tune)
    try:
        yield
    finally:
        for h in terminal:
            h.removeFilter(_not_tune)
        for logger in loggers:
            logger.removeHandler(handler)
        if handler is not None:
            handler.close()


def _not_tune(record: logging.LogRecord) -> bool:
    return not record.name.startswith(("ray.tune", "ray.train"))


# -- Ray Tune experiments ---------------------------------------------------------------------
def trial_dirname(trial: Any) -> str:
    """A trial's folder in its Ray experiment: named by its trial id alone."""
    return trial_dirname_of(trial.trial_id)


def trial_dirname_of(trial_id: str) -> str:
    return f"trial_{trial_id}"


def trainable(function: Any, space: SearchSpace, context: SweepContext) -> Any:
    """Ray's trainable of ``function`` (a kdtune trial function), given the sweep's shared
    ``context`` through the object store and the resources ``space`` asks per trial."""
    from ray import tune

    resources = {"cpu": space.resources.cpus, "gpu": space.resources.gpus}
    return tune.with_resources(tune.with_parameters(function, context=context), resources)


def new_tuner(function_trainable: Any, where: Path | str, *, tracker: Tracker, parent: str,
              sweep: str, settings: TrialSettings, shown: tuple[str, str],
              study: SweepStudy | None = None, max_failures: int, num_samples: int = 1,
              search_alg: Any = None, scheduler: Any = None,
              param_space: dict[str, Any] | None = None,
              max_concurrent: int | None = None) -> Any:
    """A new Ray Tune experiment at ``where`` (a folder or URI): ``num_samples`` trials asked
    from ``search_alg``, or the trials of ``param_space``. Each trial is an MLflow child run
    of ``parent`` (sweep ``sweep``, configs from ``settings``, labels from ``study``); the
    terminal shows the metric and mode ``shown``. A dead worker or node is retried from the
    trial's last checkpoint up to ``max_failures`` times (a trial that fails by itself ends
    without raising, so it is never retried)."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from kdtune.tune.callbacks import MlflowTrials, Progress, TrialLabels

    storage_path, name = split_location(where)
    return tune.Tuner(
        function_trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler,
                                    num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=0,
            callbacks=[MlflowTrials(tracker, parent, sweep, settings, study),
                       Progress(shown[0], shown[1], TrialLabels(sweep, study)),
                       JsonLoggerCallback(), CSVLoggerCallback()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=max_failures)))


def can_restore(where: Path | str) -> bool:
    """Whether a Ray Tune experiment at ``where`` can be restored."""
    from ray import tune

    return bool(tune.Tuner.can_restore(str(where)))


def restored_tuner(function_trainable: Any, where: Path | str) -> Any:
    """The Ray Tune experiment at ``where`` restored: its unfinished trials continue, its
    errored ones stay as they ended."""
    from ray import tune

    return tune.Tuner.restore(str(where), trainable=function_trainable,
                              resume_unfinished=True, resume_errored=False,
                              restart_errored=False)


def log_student(tracker: Tracker, run_id: str, checkpoint: Any) -> None:
    """The student of a trial's last checkpoint (its first seed) as ``student.pt`` (weights
    and config) on MLflow run ``run_id``."""
    import torch

    from kdtune.report import STUDENT_FILE, save_student

    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as out:
        seeds = sorted(Path(folder).glob(CHECKPOINT_FILE.format(seed="*")))
        state = torch.load(seeds[0], map_location="cpu", weights_only=True)
        save_student(Path(out) / STUDENT_FILE, state["config"], state["model"])
        tracker.log_artifact(run_id, Path(out) / STUDENT_FILE)
